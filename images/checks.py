"""Start-up checks of the configuration, so a bad value fails at `serve`, not at the first upload."""

from django.conf import settings
from django.core.checks import Error, register
from PIL import Image

from . import mongo


@register()
def image_formats(app_configs, **kwargs) -> list[Error]:
    Image.init()
    return [
        Error(
            f"ALLOWED_IMAGE_FORMATS names {fmt!r}, which Pillow cannot open or has no MIME type for.",
            hint="Use formats such as JPEG, PNG, WEBP, GIF.",
            id="images.E001",
        )
        for fmt in settings.ALLOWED_IMAGE_FORMATS
        if fmt not in Image.OPEN or fmt not in Image.MIME
    ]


@register()
def mongo_blob_read_preference(app_configs, **kwargs) -> list[Error]:
    try:
        mongo.read_preference(settings.MONGO_BLOB_READ_PREFERENCE)
    except ValueError as exc:
        return [Error(f"MONGO_BLOB_READ_PREFERENCE: {exc}", id="images.E002")]
    return []
