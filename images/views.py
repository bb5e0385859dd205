"""HTTP endpoints: parse, call, respond. One DRF viewset serves them all, so authentication,
scopes and throttles apply the same way to JSON and to bytes.

DRF would answer 406 before the view runs when a browser's `Accept: image/webp,...` meets a JSON
renderer; `LenientNegotiation` falls back to JSON instead, and the bytes actions only render errors.
"""

from datetime import UTC, datetime
from urllib.parse import unquote

from django.conf import settings
from django.http import HttpRequest, HttpResponse, QueryDict
from django.utils.http import urlencode
from django.views.decorators.http import require_safe
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from . import derivatives, services, signing
from .auth import HasScope, allowed, caller_name
from .documents import ImageRecord
from .errors import InvalidRequest, error_body
from .negotiation import LenientNegotiation
from .pagination import COUNT_HEADER, next_link, parse_count, parse_cursor, parse_limit
from .schema import (
    BAD_DERIVATIVE,
    BAD_MODELS,
    BAD_PAGE,
    BAD_SIGNED,
    BYTES_HEADERS,
    ERROR_HEADERS,
    IMAGE_ID_PARAM,
    LABEL_FILTER,
    LABEL_PICK,
    LISTED,
    MODEL_ID_FILTER,
    MODEL_ID_PARAM,
    MODEL_IDS_BODY,
    MODEL_IDS_PARAM,
    MODELS_FOUND,
    NO_IMAGE,
    NO_MODEL,
    PAGE,
    SIGNED,
    SIGNED_PRESET_PARAM,
    TTL_PARAM,
    errors,
    image_bytes,
    response_header,
)
from .serializers import (
    CoverSerializer,
    ImageSerializer,
    LabelSerializer,
    ModelImageSerializer,
    SignedUrlSerializer,
    UploadSerializer,
)
from .serving import image_response
from .throttling import ReadRateThrottle, UploadRateThrottle, answering
from .validation import MAX_MODELS, validate_label, validate_model_id, validate_model_ids

# Every other action reads.
ACTION_SCOPES = {
    "upload": "write",
    "partial_update": "write",
    "set_cover": "write",
    "clear_cover": "write",
    "destroy": "admin",
}
BYTES_ACTIONS = {"content", "model_image"}
# The actions whose body is JSON; the upload's is multipart.
JSON_ACTIONS = {"partial_update", "set_cover", "lookup"}
# Each action's name, in the schema and as the browsable API's page title (images/urls.py).
SUMMARIES = {
    "upload": "Upload an image",
    "list": "List images",
    "model_images": "List a model's images",
    "retrieve": "An image's metadata",
    "destroy": "Delete an image",
    "partial_update": "Set or clear an image's label",
    "set_cover": "Set a model's cover",
    "models": "Look up several models' images",
    "lookup": "Look up a long list of models' images",
    "signed_url": "A signed URL of an image's bytes",
    "clear_cover": "Clear a model's cover",
    "content": "An image's bytes",
    "model_image": "A model's newest image's bytes",
}


@require_safe
def signature_check(request: HttpRequest) -> HttpResponse:
    """nginx's auth_request for signed URLs (deploy/nginx.conf), which it may answer from its cache:
    204 when the signature of the URL in `X-Original-URI` is valid, else the 403."""
    path, _, query = request.headers.get("X-Original-URI", "").partition("?")
    signing.verify(unquote(path), QueryDict(query))
    return HttpResponse(status=204)


def serializer_context(request: Request, covers: set[str]) -> dict:
    """What ImageSerializer needs: the request, the covers among the records, and, with
    `?signed=true`, how long their signed URLs last."""
    context = {"request": request, "covers": covers}
    signed = request.query_params.get("signed", "false")
    if signed not in ("true", "false"):
        raise InvalidRequest("signed must be true or false.", code="invalid_signed")
    if signed == "true":
        context["signed_ttl"] = signing.parse_ttl(request.query_params)
    return context


def label_filter(request: Request) -> str | None:
    """The `?label=` a read narrows to, checked; None when there is none."""
    label = request.query_params.get("label")
    return None if label is None else validate_label(label)


def note_image(request: Request, image_id: str) -> None:
    """Lets the request log name the image this request was about."""
    request._request.image_id = image_id


class ImageViewSet(viewsets.ViewSet):
    content_negotiation_class = LenientNegotiation
    permission_classes = [HasScope]

    @property
    def serializer_class(self) -> type[UploadSerializer] | None:
        """The browsable API's form for POST /upload; the other POST (a lookup) takes raw JSON."""
        return UploadSerializer if self.action_map.get("post") == "upload" else None

    @property
    def required_scope(self) -> str:
        return ACTION_SCOPES.get(self.action, "read")

    def get_throttles(self):
        return [UploadRateThrottle() if self.action in ACTION_SCOPES else ReadRateThrottle()]

    def get_parsers(self):
        if getattr(self, "action", None) in JSON_ACTIONS:
            return [JSONParser()]
        return super().get_parsers()

    def initialize_request(self, request, *args, **kwargs) -> Request:
        # DRF picks the parsers before the viewset knows its action; pick them again now that it does.
        request = super().initialize_request(request, *args, **kwargs)
        request.parsers = self.get_parsers()
        return request

    def get_renderers(self):
        if getattr(self, "action", None) in BYTES_ACTIONS:
            return [JSONRenderer()]  # only errors are rendered there
        return super().get_renderers()

    @property
    def default_response_headers(self) -> dict:
        headers = super().default_response_headers
        if getattr(self, "action", None) in BYTES_ACTIONS:
            # Image bytes do not depend on Accept (unless format=auto says so itself); a stray
            # `Vary: Accept` would split every cache in front by the browser's Accept header.
            headers.pop("Vary", None)
        return headers

    def http_method_not_allowed(self, request: Request, *args, **kwargs) -> Response:
        """The 405 that API clients get; a browser that opens /upload also gets, on the same 405, the
        browsable API's upload form when it may upload, or else what it needs to."""
        if not (
            self.action_map.get("post") == "upload"
            and isinstance(request.accepted_renderer, BrowsableAPIRenderer)
        ):
            return super().http_method_not_allowed(request, *args, **kwargs)
        if allowed(request, "write"):
            detail = "POST the form below to upload an image."
        else:
            detail = "Uploading needs the 'write' scope: sign in, or send an API key that has it."
        body = error_body("method_not_allowed", f'Method "{request.method}" not allowed. {detail}')
        return Response(body, status=status.HTTP_405_METHOD_NOT_ALLOWED)

    def _json(self, request: Request, record: ImageRecord, new: bool = False, **kwargs) -> Response:
        # A plain dict: data that names its serializer makes the browsable API build the next
        # upload form from ImageSerializer instead of UploadSerializer. A new image is no cover yet.
        covers = set() if new else services.covers_among([record])
        data = ImageSerializer(record, context=serializer_context(request, covers)).data
        return Response(dict(data), **kwargs)

    @extend_schema(
        operation_id="list_images",
        summary=SUMMARIES["list"],
        description="Every image, or one model's, newest first, a page at a time.",
        tags=["images"],
        parameters=[MODEL_ID_FILTER, LABEL_FILTER, *PAGE, *SIGNED, *ERROR_HEADERS],
        responses={200: LISTED, **errors(BAD_PAGE)},
    )
    def list(self, request: Request, model_id: str | None = None) -> Response:
        in_path = model_id is not None
        if not in_path:
            model_id = request.query_params.get("model_id")
        if model_id is not None:
            validate_model_id(model_id)
        label = label_filter(request)
        limit, after, count = parse_limit(request), parse_cursor(request), parse_count(request)
        records = services.page(model_id, after, limit + 1, label=label)
        if in_path and not records and after is None:
            raise NotFound(f"Model {model_id!r} has no images.")
        headers = {"Link": next_link(request, records[limit - 1])} if len(records) > limit else {}
        if count:
            headers[COUNT_HEADER] = str(services.count(model_id))
        context = serializer_context(request, services.covers_among(records[:limit]))
        data = ImageSerializer(records[:limit], many=True, context=context).data
        return Response(data, headers=headers)

    @extend_schema(
        operation_id="list_model_images",
        summary=SUMMARIES["model_images"],
        description="As `GET /images?model_id=`, except that a model without images is a 404.",
        tags=["images"],
        parameters=[MODEL_ID_PARAM, LABEL_FILTER, *PAGE, *SIGNED, *ERROR_HEADERS],
        responses={200: LISTED, **errors(BAD_PAGE, NO_MODEL)},
    )
    def model_images(self, request: Request, model_id: str) -> Response:
        """`list` for one model (its own action, so that the schema can tell the two routes apart)."""
        return self.list(request, model_id)

    @extend_schema(
        operation_id="get_image",
        summary=SUMMARIES["retrieve"],
        tags=["images"],
        parameters=[IMAGE_ID_PARAM, *SIGNED, *ERROR_HEADERS],
        responses={
            200: OpenApiResponse(ImageSerializer, "The image's metadata."),
            **errors(NO_IMAGE, BAD_SIGNED),
        },
    )
    def retrieve(self, request: Request, image_id: str) -> Response:
        note_image(request, image_id)
        return self._json(request, services.get_record(image_id))

    @extend_schema(
        operation_id="set_image_label",
        summary=SUMMARIES["partial_update"],
        description="The label says which view of the model the image is (`front`, `side`, ...); "
        "several images of a model may share one. `null` clears it.",
        tags=["images"],
        request=LabelSerializer,
        parameters=[IMAGE_ID_PARAM, *ERROR_HEADERS],
        responses={
            200: OpenApiResponse(ImageSerializer, "The image's metadata, with its new label."),
            **errors(NO_IMAGE, {400: 'The body is not `{"label": <label or null>}`.'}),
        },
    )
    def partial_update(self, request: Request, image_id: str) -> Response:
        note_image(request, image_id)
        form = LabelSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        return self._json(request, services.set_label(image_id, form.validated_data["label"]))

    @extend_schema(
        operation_id="set_model_cover",
        summary=SUMMARIES["set_cover"],
        description="The cover is the image that `GET /image/<model_id>` and the batch lookups give for "
        "the model, instead of its newest. Deleting the image clears it.",
        tags=["models"],
        request=CoverSerializer,
        parameters=[MODEL_ID_PARAM, *ERROR_HEADERS],
        responses={
            200: OpenApiResponse(ImageSerializer, "The cover's metadata."),
            **errors(
                {404: "There is no such image."},
                {400: "model_id or the body is not valid, or the image is another model's."},
            ),
        },
    )
    def set_cover(self, request: Request, model_id: str) -> Response:
        form = CoverSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        record = services.set_cover(validate_model_id(model_id), form.validated_data["image_id"])
        note_image(request, record.image_id)
        return self._json(request, record)

    @extend_schema(
        operation_id="clear_model_cover",
        summary=SUMMARIES["clear_cover"],
        description="The model's newest image shows again. Clearing a model without a cover does nothing.",
        tags=["models"],
        parameters=[MODEL_ID_PARAM, *ERROR_HEADERS],
        responses={204: OpenApiResponse(description="Cleared."), **errors({400: "model_id is not valid."})},
    )
    def clear_cover(self, request: Request, model_id: str) -> Response:
        services.clear_cover(validate_model_id(model_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _models(self, request: Request, model_ids: object) -> Response:
        records, covers = services.model_records(validate_model_ids(model_ids))
        context = serializer_context(request, covers)
        found = {m: r and ModelImageSerializer(r, context=context).data for m, r in records.items()}
        return Response({"models": found})

    @extend_schema(
        operation_id="lookup_models",
        summary=SUMMARIES["models"],
        description=f"Each model's cover, else its newest image, with a `thumb` URL, in one round of "
        f"queries: up to {MAX_MODELS} models. A model without images maps to `null`.",
        tags=["models"],
        parameters=[MODEL_IDS_PARAM, *SIGNED, *ERROR_HEADERS],
        responses={
            200: MODELS_FOUND,
            **errors(BAD_MODELS, {414: "The URL is longer than 8190 bytes: use `POST /models/lookup`."}),
        },
    )
    def models(self, request: Request) -> Response:
        return self._models(request, request.query_params.getlist("model_id"))

    @extend_schema(
        operation_id="lookup_models_post",
        summary=SUMMARIES["lookup"],
        description=f"As `GET /models`, for lists too long for a URL: the body is a JSON list of up to "
        f"{MAX_MODELS} model_ids. It only reads.",
        tags=["models"],
        request=MODEL_IDS_BODY,
        parameters=[*SIGNED, *ERROR_HEADERS],
        responses={200: MODELS_FOUND, **errors(BAD_MODELS)},
    )
    def lookup(self, request: Request) -> Response:
        return self._models(request, request.data)

    @extend_schema(
        operation_id="get_signed_url",
        summary=SUMMARIES["signed_url"],
        description="For an `<img src>` while reads are private: the URL works without credentials "
        "until it expires, for the original or a preset, and answers 403 once expired or changed.",
        tags=["content"],
        parameters=[IMAGE_ID_PARAM, TTL_PARAM, SIGNED_PRESET_PARAM, *ERROR_HEADERS],
        responses={
            200: OpenApiResponse(SignedUrlSerializer, "The signed URL."),
            **errors(NO_IMAGE, {400: "ttl or preset is not valid."}),
        },
    )
    def signed_url(self, request: Request, image_id: str) -> Response:
        note_image(request, image_id)
        ttl = signing.parse_ttl(request.query_params)
        params = {}
        if (preset := request.query_params.get("preset")) is not None:
            derivatives.parse_spec(QueryDict(urlencode({"preset": preset})), "", "png")  # checks the name
            params["preset"] = preset
        record = services.get_record(image_id)
        url, expires = signing.sign(f"/images/{record.image_id}/content", params, ttl)
        body = {"url": request.build_absolute_uri(url), "expires_at": datetime.fromtimestamp(expires, UTC)}
        return Response(SignedUrlSerializer(body).data, headers={"Cache-Control": "no-store"})

    @extend_schema(
        operation_id="delete_image",
        summary=SUMMARIES["destroy"],
        description="Deletes the image's record, and its bytes unless another model's image shares them.",
        tags=["images"],
        parameters=[IMAGE_ID_PARAM, *ERROR_HEADERS],
        responses={204: OpenApiResponse(description="Deleted."), **errors(NO_IMAGE)},
    )
    def destroy(self, request: Request, image_id: str) -> Response:
        note_image(request, image_id)
        if services.delete_image(image_id) is None:
            raise NotFound(f"No image has image_id {image_id!r}.")
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="upload_image",
        summary=SUMMARIES["upload"],
        description="Stores an image for a model and answers its metadata. The type is sniffed from "
        "the bytes, which must decode as a whole image. A model stores the same bytes once: sending "
        "them again answers 200 with the image already stored.",
        tags=["images"],
        request={"multipart/form-data": UploadSerializer},
        parameters=[response_header("Location", "The image's metadata URL.", [200, 201]), *ERROR_HEADERS],
        responses={
            201: OpenApiResponse(ImageSerializer, "Stored."),
            200: OpenApiResponse(ImageSerializer, "The model has these bytes already: that image."),
            **errors(
                {
                    400: "The form is not valid: no file, several files, an empty file, a bad model_id "
                    "or a malformed body.",
                    411: "The body is chunked: send Content-Length.",
                    413: "The file is over MAX_UPLOAD_MB, or the body over MAX_REQUEST_MB.",
                    415: "The file is not an allowed image type, or the body is not multipart/form-data.",
                    422: "The image is truncated or corrupt, or has too many pixels.",
                    507: "The image store is full: nothing was stored.",
                }
            ),
        },
    )
    def upload(self, request: Request) -> Response:
        # The body's size was judged from its headers already (images/bodylimits.py).
        form = UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        file, model_id = form.validated_data["file"], form.validated_data["model_id"]
        label = form.validated_data.get("label")
        record, created = services.add_image(file, model_id, uploaded_by=caller_name(request), label=label)
        note_image(request, record.image_id)
        return self._json(
            request,
            record,
            new=created,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
            headers={"Location": request.build_absolute_uri(f"/images/{record.image_id}")},
        )

    @extend_schema(
        operation_id="get_image_content",
        summary=SUMMARIES["content"],
        description="An image_id's bytes never change, so caches may keep them for a year.",
        tags=["content"],
        parameters=[IMAGE_ID_PARAM, *BYTES_HEADERS],
        responses=image_bytes("The image, or the derivative asked for.", NO_IMAGE, BAD_DERIVATIVE),
    )
    def content(self, request: Request, image_id: str):
        note_image(request, image_id)
        with answering(request):  # a derivative made for it counts against THROTTLE_DERIVE
            return signing.limit_caching(request, image_response(request, services.get_record(image_id)))

    @extend_schema(
        operation_id="get_model_image",
        summary=SUMMARIES["model_image"],
        description="They change when a newer image arrives: caches keep them for MODEL_IMAGE_MAX_AGE "
        "seconds, then revalidate.",
        tags=["content"],
        parameters=[MODEL_ID_PARAM, LABEL_PICK, *BYTES_HEADERS],
        responses=image_bytes(
            "The model's cover, else its newest image (with label, its newest with that label), or "
            "the derivative asked for.",
            BAD_DERIVATIVE,
            {400: "model_id, or a derivative parameter, is not valid."},
            NO_MODEL,
        ),
    )
    def model_image(self, request: Request, model_id: str):
        """The model's cover or newest image: it changes when a newer one arrives or the cover is set, so
        caches revalidate soon."""
        record = services.model_record(validate_model_id(model_id), label_filter(request))
        note_image(request, record.image_id)
        with answering(request):
            return image_response(request, record, f"public, max-age={settings.MODEL_IMAGE_MAX_AGE}")
