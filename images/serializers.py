from rest_framework import serializers


class ImageSerializer(serializers.Serializer):
    """An image's metadata, as every endpoint returns it."""

    image_id = serializers.CharField()
    model_id = serializers.CharField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    uploaded_at = serializers.DateTimeField()
    uploaded_by = serializers.CharField(allow_null=True)
    url = serializers.SerializerMethodField()

    def get_url(self, record) -> str:
        return self.context["request"].build_absolute_uri(f"/images/{record.image_id}/content")
