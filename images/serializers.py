from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .validation import MODEL_ID_PATTERN, MODEL_ID_RULE


class ImageSerializer(serializers.Serializer):
    """An image's metadata, as every endpoint returns it."""

    image_id = serializers.CharField(help_text="24 hexadecimal characters.")
    model_id = serializers.CharField()
    filename = serializers.CharField(help_text="The uploaded file's name, sanitized.")
    content_type = serializers.CharField(help_text="Sniffed from the bytes, whatever the client said.")
    size = serializers.IntegerField(help_text="In bytes.")
    sha256 = serializers.CharField(help_text="Hex digest of the bytes; also the content's ETag.")
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    uploaded_at = serializers.DateTimeField()
    uploaded_by = serializers.CharField(
        allow_null=True, help_text="The API key's name or the token's `sub`; null in open mode."
    )
    url = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, record) -> str:
        return self.context["request"].build_absolute_uri(f"/images/{record.image_id}/content")


# The upload form, for the browsable API and the schema. `ImageViewSet.upload` parses the request
# itself, so that its errors keep their codes (missing_file, invalid_model_id, ...).
class UploadSerializer(serializers.Serializer):
    """An image to store for a model, as multipart/form-data."""

    file = serializers.FileField(
        help_text=f"The image ({', '.join(settings.ALLOWED_IMAGE_FORMATS)}). The field may also be "
        "called `image`, as some older clients send it."
    )
    model_id = serializers.RegexField(MODEL_ID_PATTERN, max_length=128, help_text=MODEL_ID_RULE + ".")
