from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from . import signing
from .errors import InvalidRequest
from .validation import (
    LABEL_PATTERN,
    LABEL_RULE,
    MODEL_ID_PATTERN,
    MODEL_ID_RULE,
    validate_label,
    validate_model_id,
)


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
    label = serializers.CharField(allow_null=True, help_text="Which view of the model this is; null if none.")
    cover = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    signed_urls = serializers.DictField(
        child=serializers.URLField(),
        required=False,  # a record has none: to_representation adds them when asked
        help_text="Only with `?signed=true`: URLs of the original and of each preset that work without "
        "credentials until they expire (`?ttl=` seconds, default 3600).",
    )

    def to_representation(self, record) -> dict:
        data = super().to_representation(record)
        if (ttl := self.context.get("signed_ttl")) is not None:  # opt-in: signing costs time
            data["signed_urls"] = self.signed_urls_of(record, ttl)
        return data

    def signed_urls_of(self, record, ttl: int) -> dict[str, str]:
        build = self.context["request"].build_absolute_uri
        path = f"/images/{record.image_id}/content"
        urls = {"original": build(signing.sign(path, {}, ttl)[0])}
        for preset in settings.DERIVATIVE_PRESETS:
            urls[preset] = build(signing.sign(path, {"preset": preset}, ttl)[0])
        return urls

    def get_cover(self, record) -> bool:
        """Whether the image is its model's chosen cover: the views pass the covers they looked up."""
        return record.image_id in self.context.get("covers", ())

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, record) -> str:
        return self.context["request"].build_absolute_uri(f"/images/{record.image_id}/content")


class ModelImageSerializer(ImageSerializer):
    """A model's image in a batch lookup: its metadata, with a thumbnail's URL beside the original's."""

    thumb = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.URI)
    def get_thumb(self, record) -> str:
        return f"{self.get_url(record)}?preset={thumb_preset()}"


class ModelsSerializer(serializers.Serializer):
    """A batch lookup's answer: an object, so that a client reads `models[model_id]`."""

    models = serializers.DictField(
        child=ModelImageSerializer(allow_null=True),
        help_text="Each model_id asked for, in that order: its cover (else newest) image, or null "
        "when it has no images.",
    )


def thumb_preset() -> str:
    """The derivative preset that batch lookups link as `thumb`: `thumb`, else the smallest."""
    presets = settings.DERIVATIVE_PRESETS
    return "thumb" if "thumb" in presets else min(presets, key=presets.get)


class OneFileField(serializers.FileField):
    """The uploaded image: exactly one file, sent as `file` or as `image` (an older client's name for
    it). Form fields that are not files do not count, as they never did."""

    ALIASES = ("file", "image")

    def get_value(self, dictionary) -> list[UploadedFile]:
        getlist = getattr(dictionary, "getlist", None)
        parts = [part for name in self.ALIASES for part in (getlist(name) if getlist else [])]
        return [part for part in parts if isinstance(part, UploadedFile)]

    def run_validation(self, data=empty) -> UploadedFile:
        # InvalidRequest, not a ValidationError: the answer keeps the old service's error code.
        files = [] if data is empty else data
        if len(files) != 1:
            raise InvalidRequest(
                "Send exactly one image, as the multipart/form-data field 'file' (or 'image').",
                code="missing_file" if not files else "too_many_files",
            )
        return files[0]


class ModelIdField(serializers.RegexField):
    """A model_id, checked by `validate_model_id` so that it fails with `invalid_model_id`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(MODEL_ID_PATTERN, max_length=128, help_text=MODEL_ID_RULE + ".", **kwargs)

    def run_validation(self, data=empty) -> str:
        return validate_model_id(None if data is empty else data)


class LabelField(serializers.RegexField):
    """A label, checked by `validate_label` so that it fails with `invalid_label`; null clears it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(LABEL_PATTERN, max_length=32, help_text=LABEL_RULE + ".", **kwargs)

    def run_validation(self, data=empty) -> str | None:
        if data is empty or (data is None and self.allow_null):
            return super().run_validation(data)
        return validate_label(data)


# The upload's only parser (`ImageViewSet.upload`), so the form that the schema and the browsable API
# show is the one the service checks; the file is checked first, then the model_id. (The docstring
# is the schema's description.)
class UploadSerializer(serializers.Serializer):
    """An image to store for a model, as multipart/form-data."""

    file = OneFileField(
        help_text=f"The image ({', '.join(settings.ALLOWED_IMAGE_FORMATS)}). The field may also be "
        "called `image`, as some older clients send it."
    )
    model_id = ModelIdField()
    label = LabelField(required=False)


class LabelSerializer(serializers.Serializer):
    """`PATCH /images/<image_id>`: the one field of a record that may change."""

    label = LabelField(allow_null=True)


class CoverSerializer(serializers.Serializer):
    """`PUT /models/<model_id>/cover`: which of the model's images represents it."""

    image_id = serializers.CharField(help_text="One of the model's images.")


class SignedUrlSerializer(serializers.Serializer):
    """`GET /images/<image_id>/signed-url`: a URL of the bytes that needs no credential until `expires_at`."""

    url = serializers.URLField(
        help_text="The content URL with `exp` and `sig`; any change to it makes it fail."
    )
    expires_at = serializers.DateTimeField()
