"""The parts of the OpenAPI 3 description (drf-spectacular, served at /api/schema/ and shown at
/api/docs/) that the operations share: security schemes, parameters, headers, error answers, links.

Each operation is declared beside its action in images/views.py with `@extend_schema`, from these
parts; the upload form is images/serializers.py's `UploadSerializer`, the one that parses it.
tests/test_openapi.py fuzzes the running service against the schema, so a declaration that drifts
from the code fails there. This module imports nothing from views.py.
"""

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from PIL import Image
from rest_framework import serializers

from . import derivatives, signing
from .pagination import COUNT_HEADER, DEFAULT_LIMIT, MAX_LIMIT
from .serializers import ImageSerializer, ModelsSerializer
from .validation import LABEL_PATTERN, LABEL_RULE, MAX_MODELS, MODEL_ID_PATTERN, MODEL_ID_RULE

IMAGE_ID_PATTERN = "^[0-9a-fA-F]{24}$"
# Originals in their allowed types, derivatives in any output format.
IMAGE_TYPES = tuple(
    dict.fromkeys(
        [Image.MIME[f] for f in settings.ALLOWED_IMAGE_FORMATS if f in Image.MIME]
        + [Image.MIME[f] for f in derivatives.FORMATS.values()]
    )
)


class ErrorSerializer(serializers.Serializer):
    """The body of every error."""  # images/errors.py builds it

    error = serializers.CharField(help_text="A stable code for programs, e.g. `invalid_model_id`.")
    detail = serializers.CharField(help_text="What went wrong and what to do, for people.")


# --- Security ------------------------------------------------------------------------------------


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "images.auth.ApiKeyAuthentication"
    name = "Api-Key"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "The header's value is `Api-Key <key>`: type both words in Swagger UI. Keys "
            "come from `manage.py create_api_key` and carry a scope: `read`, `write` (includes read) "
            "or `admin` (includes write).",
        }


class BearerScheme(OpenApiAuthenticationExtension):
    target_class = "images.auth.JWTAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "`Authorization: Bearer <JWT>`, verified with JWT_HS256_SECRET or "
            "JWT_PUBLIC_KEY. `exp` and `sub` are required; the `scope` claim lists the scopes.",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "images.auth.SessionAuthentication"
    name = "cookieAuth"

    def get_security_definition(self, auto_schema) -> dict:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "A Django user signed in at /accounts/login/ (the gallery page's session). "
            "Superusers and staff get `admin`, other active users `write`. POST and DELETE also need "
            "the CSRF token in `X-CSRFToken`.",
        }


class ImageServiceSchema(AutoSchema):
    """States each operation's scope, taken from the view where the rule lives, and lets public
    reads go without a credential. (With no credential configured, the service runs open.)"""

    def get_auth(self) -> list[dict]:
        # Public reads state no security at all: an optional one (`{}`) still shows a lock in Swagger UI.
        if self._scope() == "read" and settings.PUBLIC_READ:
            return []
        return super().get_auth()

    def get_operation(self, *args, **kwargs) -> dict | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None and (scope := self._scope()):
            public = " unless PUBLIC_READ is off" if scope == "read" else ""
            needs = f"Needs the `{scope}` scope{public}."
            operation["description"] = f"{operation.get('description', '')}\n\n{needs}".strip()
        return operation

    def _scope(self) -> str | None:
        return getattr(self.view, "required_scope", None)


API_VIEWSET = "images.views.ImageViewSet"  # by name: views.py imports this module


def api_endpoints(endpoints: list, **kwargs) -> list:
    """A preprocessing hook: documents the image API (not /metrics, in Prometheus' own format), at
    its URLs without the trailing slash that the routes tolerate."""
    return [
        (path.rstrip("/"), regex, method, view)
        for path, regex, method, view in endpoints
        if (cls := getattr(view, "cls", None)) and f"{cls.__module__}.{cls.__qualname__}" == API_VIEWSET
    ]


def _follow(operation_id: str, **parameters: str) -> dict:
    return {"operationId": operation_id, "parameters": parameters}


IMAGE_ID_LINK = "$response.body#/image_id"
MODEL_ID_LINK = "$response.body#/model_id"
# What a client does next with an image it was answered (OpenAPI links): stateful clients and
# fuzzers follow these from an upload to reading, listing and deleting what it stored.
LINKS = {
    "upload_image": {
        "GetImage": _follow("get_image", image_id=IMAGE_ID_LINK),
        "GetImageContent": _follow("get_image_content", image_id=IMAGE_ID_LINK),
        "GetModelImage": _follow("get_model_image", model_id=MODEL_ID_LINK),
        "ListModelImages": _follow("list_model_images", model_id=MODEL_ID_LINK),
        "ListImagesOfModel": _follow("list_images", model_id=MODEL_ID_LINK),
        "DeleteImage": _follow("delete_image", image_id=IMAGE_ID_LINK),
    },
    "get_image": {
        "GetImageContent": _follow("get_image_content", image_id=IMAGE_ID_LINK),
        "DeleteImage": _follow("delete_image", image_id=IMAGE_ID_LINK),
    },
}
FIRST_LISTED = {
    "GetImage": _follow("get_image", image_id="$response.body#/0/image_id"),
    "GetImageContent": _follow("get_image_content", image_id="$response.body#/0/image_id"),
    "GetModelImage": _follow("get_model_image", model_id="$response.body#/0/model_id"),
    "DeleteImage": _follow("delete_image", image_id="$response.body#/0/image_id"),
}
LINKS |= {"list_images": FIRST_LISTED, "list_model_images": FIRST_LISTED}


def add_links(result: dict, **kwargs) -> dict:
    """A postprocessing hook: adds LINKS to the successful answers of their operations."""
    for operations in result["paths"].values():
        for operation in operations.values():
            links = LINKS.get(operation.get("operationId"), {}) if isinstance(operation, dict) else {}
            for status in ("200", "201"):
                if links and status in operation["responses"]:
                    operation["responses"][status]["links"] = links
    return result


# --- Parameters and headers ----------------------------------------------------------------------


def request_header(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, str, OpenApiParameter.HEADER, description=description)


def response_header(name: str, description: str, codes: list[int], required: bool = True) -> OpenApiParameter:
    return OpenApiParameter(
        name, str, OpenApiParameter.HEADER, response=codes, required=required, description=description
    )


IMAGE_ID_PARAM = OpenApiParameter(
    "image_id", str, OpenApiParameter.PATH, pattern=IMAGE_ID_PATTERN, description="24 hex characters."
)
MODEL_ID_PARAM = OpenApiParameter(
    "model_id", str, OpenApiParameter.PATH, pattern=MODEL_ID_PATTERN, description=MODEL_ID_RULE + "."
)
MODEL_ID_FILTER = OpenApiParameter(
    "model_id", str, pattern=MODEL_ID_PATTERN, description="Only this model's images."
)
MODEL_ID_LIST = {"type": "string", "pattern": MODEL_ID_PATTERN}
MODEL_IDS_PARAM = OpenApiParameter(
    "model_id",
    {"type": "array", "items": MODEL_ID_LIST, "minItems": 1, "maxItems": MAX_MODELS},
    required=True,
    explode=True,
    description=f"The models, repeated: `?model_id=a&model_id=b` (up to {MAX_MODELS}).",
)
MODEL_IDS_BODY = {
    "application/json": {"type": "array", "items": MODEL_ID_LIST, "minItems": 1, "maxItems": MAX_MODELS}
}
TTL_PARAM = OpenApiParameter(
    "ttl",
    {"type": "integer", "minimum": 1, "maximum": signing.MAX_TTL, "default": signing.DEFAULT_TTL},
    description="How long the signed URL works, in seconds.",
)
SIGNED_PRESET_PARAM = OpenApiParameter(
    "preset",
    {"type": "string", "enum": list(settings.DERIVATIVE_PRESETS)},
    description="Sign the URL of this derivative preset instead of the original's.",
)
SIGNED = [
    OpenApiParameter(
        "signed",
        {"type": "boolean", "default": False},
        description="`true` adds `signed_urls` to each image: its original's and its presets' URLs, "
        "which work without credentials for `ttl` seconds.",
    ),
    TTL_PARAM,
]
LABEL_FILTER = OpenApiParameter(
    "label", str, pattern=LABEL_PATTERN, description=f"Only images with this label ({LABEL_RULE})."
)
LABEL_PICK = OpenApiParameter(
    "label", str, pattern=LABEL_PATTERN, description="The newest image with this label instead."
)
PAGE = [
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        description=f"Images per page, 1 to {MAX_LIMIT}.",
    ),
    OpenApiParameter(
        "cursor", str, description="Opaque: follow the `Link` header to the next page, never build it."
    ),
    response_header(
        "Link", '`<URL>; rel="next"` (RFC 8288), unless this is the last page.', [200], required=False
    ),
    OpenApiParameter(
        "count",
        {"type": "boolean", "default": False},
        description=f"`true` adds `{COUNT_HEADER}`. It counts every matching image on each request: "
        "cheap for one model (an index range), a scan of all records without one.",
    ),
    response_header(
        COUNT_HEADER, "How many images match, on every page, when `count=true`.", [200], required=False
    ),
]
ERROR_HEADERS = [
    response_header("WWW-Authenticate", "The schemes to authenticate with.", [401]),
    response_header("Retry-After", "Seconds to wait before retrying.", [429, 503], required=False),
]
SERVED = [200, 206]
SIZES = {"type": "integer", "enum": settings.DERIVATIVE_SIZES}
DERIVATIVE = [
    OpenApiParameter("w", SIZES, description="A derivative's largest width (an allowed size)."),
    OpenApiParameter("h", SIZES, description="A derivative's largest height (an allowed size)."),
    OpenApiParameter(
        "fit",
        {"type": "string", "enum": ["contain", "cover"], "default": "contain"},
        description="`contain` fits the box and never upscales; `cover` fills w x h exactly, cropping "
        "(it needs both w and h, or a preset).",
    ),
    OpenApiParameter(
        "format",
        {"type": "string", "enum": [*derivatives.FORMATS, "auto"]},
        description="`auto` picks AVIF or WebP from Accept, else the original's format (GIF gives PNG).",
    ),
    OpenApiParameter("q", {"type": "integer", "minimum": 1, "maximum": 100}, description="Quality."),
    OpenApiParameter(
        "preset",
        {"type": "string", "enum": list(settings.DERIVATIVE_PRESETS)},
        description="A named box ("
        + ", ".join(f"{k}: {v}" for k, v in settings.DERIVATIVE_PRESETS.items())
        + " px) in format auto; not together with w or h.",
    ),
]
BAD_DERIVATIVE = {
    400: "A derivative parameter is not valid: w and h must be allowed sizes, not beside a preset; "
    "fit=cover needs both.",
    422: "No derivative can be made from this original: over the pixel or time limits, or corrupt.",
}
VALIDATED = [*SERVED, 304, 412]
BYTES_HEADERS = [
    request_header(
        "Range",
        "One range: `bytes=first-last`, `bytes=first-` or `bytes=-suffix` answers 206. Several ranges, "
        "or one that ends before it starts, get the whole image.",
    ),
    request_header("If-Range", "An ETag or HTTP date: the Range applies only while it matches."),
    request_header("If-None-Match", "ETags the client holds: a match answers 304."),
    request_header("If-Modified-Since", "An HTTP date: if the image is no newer, 304."),
    request_header("If-Match", "ETags: if none matches, 412."),
    request_header("If-Unmodified-Since", "An HTTP date: if the image is newer, 412."),
    response_header(
        "ETag", "The SHA-256 of the image's bytes, quoted (a derivative's: with its parameters).", VALIDATED
    ),
    response_header("Last-Modified", "When the image was uploaded.", [*SERVED, 304]),
    response_header("Cache-Control", "How long caches may keep the answer.", VALIDATED),
    response_header("Content-Disposition", "`inline`, with the image's filename (RFC 6266).", SERVED),
    response_header("Accept-Ranges", "`bytes`.", SERVED),
    response_header("Content-Range", "`bytes first-last/size`; on a 416, `bytes */size`.", [206, 416]),
    response_header("Vary", "`Accept`, when format=auto chose the format.", VALIDATED, required=False),
    *ERROR_HEADERS,
    *DERIVATIVE,
]

# --- Responses -----------------------------------------------------------------------------------

COMMON_ERRORS = {
    401: "The credential is missing (and one is needed), not valid, revoked or expired.",
    403: "The credential does not have the scope this operation needs.",
    429: "Too many requests from this caller: see Retry-After.",
    503: "The image store is unreachable: retry after Retry-After seconds.",
}
NO_IMAGE = {404: "There is no such image."}
NO_MODEL = {404: "The model has no images."}
BAD_SIGNED = {400: "signed or ttl is not valid."}
BAD_PAGE = {400: "model_id, label, limit, cursor, count, signed or ttl is not valid."}


def errors(*described: dict[int, str]) -> dict:
    """Error responses, in status order, from {status: description} dicts (later ones win)."""
    merged = {code: text for d in (COMMON_ERRORS, *described) for code, text in d.items()}
    return {
        (code, "application/json"): OpenApiResponse(ErrorSerializer, merged[code]) for code in sorted(merged)
    }


def image_bytes(description: str, *described_errors: dict[int, str]) -> dict:
    """The bytes endpoints' answers: the image in its own type, or a part of it, or an error."""
    return {
        (200, *IMAGE_TYPES): OpenApiResponse(OpenApiTypes.BINARY, description),
        (206, *IMAGE_TYPES): OpenApiResponse(OpenApiTypes.BINARY, "The requested range of the image."),
        304: OpenApiResponse(description="Not modified: the client's copy is current."),
        **errors(
            {412: "If-Match or If-Unmodified-Since did not hold."},
            {416: "The Range cannot be satisfied: Content-Range gives the size."},
            *described_errors,
        ),
    }


LISTED = OpenApiResponse(ImageSerializer(many=True), "Images, newest first.")
MODELS_FOUND = OpenApiResponse(ModelsSerializer, "The models' images.")
BAD_MODELS = {400: f"No model_id, more than {MAX_MODELS}, or one that is not valid; or signed or ttl is not."}
