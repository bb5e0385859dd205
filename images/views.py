"""HTTP endpoints: parse, call, respond.

The JSON API is a DRF viewset. The two endpoints that return bytes are plain Django views, so that
DRF's content negotiation never answers 406 to a browser's `Accept: image/webp,...`.
"""

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.http import require_safe
from rest_framework import status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from . import services
from .documents import ImageRecord, get_documents
from .errors import InvalidRequest, PayloadTooLarge
from .pagination import next_link, parse_cursor, parse_limit
from .serializers import ImageSerializer
from .serving import blob_response
from .validation import validate_model_id

# Room for the multipart envelope and the model_id field around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """The API answers JSON whatever the client's Accept says, rather than 406."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def get_record(image_id: str) -> ImageRecord:
    record = get_documents().get(image_id)
    if record is None:
        raise NotFound(f"No image has image_id {image_id!r}.")
    return record


def newest_record(model_id: str) -> ImageRecord:
    records = get_documents().page(validate_model_id(model_id), None, 1)
    if not records:
        raise NotFound(f"Model {model_id!r} has no images.")
    return records[0]


class ImageViewSet(viewsets.ViewSet):
    content_negotiation_class = JSONOnlyNegotiation

    def list(self, request: Request, model_id: str | None = None) -> Response:
        in_path = model_id is not None
        if not in_path:
            model_id = request.query_params.get("model_id")
        if model_id is not None:
            validate_model_id(model_id)
        limit, after = parse_limit(request), parse_cursor(request)
        records = get_documents().page(model_id, after, limit + 1)
        if in_path and not records and after is None:
            raise NotFound(f"Model {model_id!r} has no images.")
        headers = {"Link": next_link(request, records[limit - 1])} if len(records) > limit else {}
        data = ImageSerializer(records[:limit], many=True, context={"request": request}).data
        return Response(data, headers=headers)

    def retrieve(self, request: Request, image_id: str) -> Response:
        return Response(ImageSerializer(get_record(image_id), context={"request": request}).data)

    def destroy(self, request: Request, image_id: str) -> Response:
        if services.delete_image(image_id) is None:
            raise NotFound(f"No image has image_id {image_id!r}.")
        return Response(status=status.HTTP_204_NO_CONTENT)

    def upload(self, request: Request) -> Response:
        # Refuse an oversized body from its header, before reading (and spooling) any of it.
        if int(request.META.get("CONTENT_LENGTH") or 0) > (services.max_upload_bytes() + MULTIPART_OVERHEAD):
            raise PayloadTooLarge(f"The upload is larger than {settings.MAX_UPLOAD_MB} MB.")
        files = request.FILES.getlist("file") or request.FILES.getlist("image")
        if len(files) != 1:
            raise InvalidRequest(
                "Send exactly one image, as the multipart/form-data field 'file'.",
                code="missing_file" if not files else "too_many_files",
            )
        model_id = validate_model_id(request.data.get("model_id"))
        record, created = services.add_image(files[0], model_id)
        data = ImageSerializer(record, context={"request": request}).data
        return Response(
            data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
            headers={"Location": request.build_absolute_uri(f"/images/{record.image_id}")},
        )


@require_safe
def image_content(request: HttpRequest, image_id: str) -> HttpResponseBase:
    return blob_response(request, get_record(image_id))


@require_safe
def model_image(request: HttpRequest, model_id: str) -> HttpResponseBase:
    """The model's newest image: it changes when a newer one arrives, so caches revalidate soon."""
    cache_control = f"public, max-age={settings.MODEL_IMAGE_MAX_AGE}"
    return blob_response(request, newest_record(model_id), cache_control)
