"""Unit tests of images/services.py's checks that need no store: the upload size limit from both
sides, the sha256 of a file read in chunks, and the clock's precision."""

import hashlib

import pytest
from django.core.files.base import ContentFile

from images import services
from images.errors import InvalidRequest, PayloadTooLarge, UnsupportedImageType
from tests.samples import image_bytes


def test_a_file_of_exactly_the_upload_limit_passes_the_size_check(settings):
    settings.MAX_UPLOAD_MB = 1
    with pytest.raises(UnsupportedImageType):  # past the size check: refused as what it is
        services.check_image(ContentFile(b"x" * (1024 * 1024)))
    with pytest.raises(PayloadTooLarge) as caught:
        services.check_image(ContentFile(b"x" * (1024 * 1024 + 1)))
    assert str(caught.value.detail) == "The file is larger than 1 MB."


def test_an_empty_file_is_refused_first():
    with pytest.raises(InvalidRequest) as caught:
        services.check_image(ContentFile(b""))
    assert caught.value.get_codes() == "empty_file"
    assert str(caught.value.detail) == "The file is empty."


def test_check_image_gives_the_sha256_and_what_the_image_is():
    data = image_bytes("PNG", (30, 20))
    sha256, info = services.check_image(ContentFile(data))
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert (info.format, info.width, info.height) == ("PNG", 30, 20)


def test_the_sha256_covers_every_chunk():
    data = bytes(range(256)) * 1000  # several of File's 64 KB chunks
    assert services.sha256_of(ContentFile(data)) == hashlib.sha256(data).hexdigest()


def test_now_has_millisecond_precision_in_utc():
    at = services.now()
    assert at.microsecond % 1000 == 0
    assert at.utcoffset().total_seconds() == 0
