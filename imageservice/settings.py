"""Settings for image-service: the one place that reads the environment (and `.env`).

Every variable is documented in `.env.example` and docs/configuration.md.
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote_plus

import environ
from corsheaders.defaults import default_headers as cors_default_headers

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # never overrides variables already set

DEBUG = env.bool("DEBUG", default=False)
# Created, with FILE_UPLOAD_TEMP_DIR, at start-up (images/apps.py), not when this module is imported.
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "data"))).resolve()
# Unset: images/apps.py fills it at start-up from DATA_DIR/secret_key, made once with a random key.
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "images.apps.ImageServiceAdminConfig",  # django.contrib.admin, with the images section
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's assets, served by the service itself
    "axes",  # sign-in throttling (images/signin.py)
    "images",
]

MIDDLEWARE = [
    "images.observability.RequestObservationMiddleware",
    # Before every middleware that can answer (body limits, WhiteNoise), so a browser on an allowed
    # origin can read their refusals too, not only the views' (django-cors-headers asks for this).
    "corsheaders.middleware.CorsMiddleware",
    # Before anything can read a body (the CSRF check parses POSTs): images/bodylimits.py.
    "images.bodylimits.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "images.errors.JSONErrorMiddleware",
    "images.deadline.LookupDeadline",  # a hung MongoDB: a lookup's 503 within MONGO_TIMEOUT_MS + 1 s
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: turns a lockout into its 429
]

ROOT_URLCONF = "imageservice.urls"
WSGI_APPLICATION = "imageservice.wsgi.application"
APPEND_SLASH = False
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True  # serve the apps' static files as they are: no collectstatic step
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Records ---------------------------------------------------------------------------------
# Django's database holds the image records in embedded mode (and Django's own tables in both).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "imageservice.sqlite3",
        "OPTIONS": {
            # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at BEGIN, so two
            # transactions never deadlock upgrading a read lock; FULL makes a 2xx survive power loss.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 5,
        },
        # Kept open: SQLite deletes the WAL and its index (-shm) when the last connection closes, and
        # a new one must create them, which fails on a full disk, so reads would stop working too.
        "CONN_MAX_AGE": None,
        # A file, not Django's shared in-memory default: that one fails concurrent writers at once
        # ("table is locked") instead of waiting, unlike the real database.
        # One per test process, so that concurrent runs never share it.
        "TEST": {"NAME": str(DATA_DIR / f"test-imageservice-{os.getpid()}.sqlite3")},
    }
}

# --- MongoDB ---------------------------------------------------------------------------------
# Setting MONGO_URI or any MONGO_* part selects Mongo mode; with none set, the embedded default runs.
_MONGO_PARTS = ("MONGO_HOST", "MONGO_PORT", "MONGO_DB", "MONGO_USER", "MONGO_PASSWORD")
MONGO_TIMEOUT_MS = env.int("MONGO_TIMEOUT_MS", default=3000)


def _mongo_uri() -> str:
    if uri := env.str("MONGO_URI", default=""):
        return uri
    host = env.str("MONGO_HOST", default="localhost")
    port = env.int("MONGO_PORT", default=27017)
    user = env.str("MONGO_USER", default="")
    if user:
        password = env.str("MONGO_PASSWORD", default="")
        return f"mongodb://{quote_plus(user)}:{quote_plus(password)}@{host}:{port}/"
    return f"mongodb://{host}:{port}/"


if env.str("MONGO_URI", default="") or any(env.str(v, default="") for v in _MONGO_PARTS):
    # Read lazily by images.mongo, which connects only after gunicorn has forked.
    MONGO = {"URI": _mongo_uri(), "DB": env.str("MONGO_DB", default="CatalogServiceDB")}
else:
    MONGO = None
# Where opening and sizing a blob read ("secondaryPreferred", ...; empty: the URI's readPreference).
# Blobs never change, so a secondary's copy will do; one not replicated yet is read from the primary.
MONGO_BLOB_READ_PREFERENCE = env.str("MONGO_BLOB_READ_PREFERENCE", default="")

# --- Image storage ---------------------------------------------------------------------------
# Mongo mode: a deleted blob's GridFS chunks are kept this many seconds, so that downloads already
# running finish (a file on disk keeps its bytes while open; GridFS does not).
GRIDFS_PURGE_DELAY = env.float("GRIDFS_PURGE_DELAY", default=3600.0)
# Mongo mode: local copies of the blobs larger than the hot cache's per-blob maximum, once read
# whole, in DATA_DIR/blob-cache, within this many MiB (least recently used out first; 0: none).
# FerretDB decodes every chunk per query; a copy is a file. Blobs never change, so copies are right.
BLOB_CACHE_MB = env.int("BLOB_CACHE_MB", default=2048)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "images": (
        {
            "BACKEND": "images.storage.GridFSStorage",
            "OPTIONS": {
                "bucket_name": "fs",
                "purge_delay": GRIDFS_PURGE_DELAY,
                "blob_read_preference": MONGO_BLOB_READ_PREFERENCE,
                "cache_dir": str(DATA_DIR / "blob-cache"),
                "cache_mb": BLOB_CACHE_MB,
            },
        }
        if MONGO
        else {
            "BACKEND": "images.storage.BlobFileSystemStorage",
            "OPTIONS": {"location": str(DATA_DIR / "blobs")},
        }
    ),
}

# Uploads over 1 MB spool to disk next to the blobs, so memory never grows with an upload's size.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "tmp")
FILE_UPLOAD_PERMISSIONS = 0o644
# Query parameters count too: GET /models takes up to 100 model_id parameters (images/validation.py).
DATA_UPLOAD_MAX_NUMBER_FIELDS = env.int("MAX_FORM_FIELDS", default=110)
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("MAX_FORM_FILES", default=2)
# Slow clients (imageservice/workers.py): a request's head must arrive within CLIENT_TIMEOUT seconds,
# and its body, after that much grace, at MIN_UPLOAD_RATE_KB KiB/s on average, or it gets a 408.
CLIENT_TIMEOUT = env.float("CLIENT_TIMEOUT", default=10.0)
MIN_UPLOAD_RATE_KB = env.float("MIN_UPLOAD_RATE_KB", default=4.0)

# --- Image rules -----------------------------------------------------------------------------
MAX_UPLOAD_MB = env.int("MAX_UPLOAD_MB", default=25)
# The whole request body: the file plus the multipart envelope and the other fields.
MAX_REQUEST_MB = env.int("MAX_REQUEST_MB", default=MAX_UPLOAD_MB + 1)
# Every other request's body (sign-in and admin forms): small, judged before anything reads it.
MAX_FORM_KB = env.int("MAX_FORM_KB", default=64)
MAX_IMAGE_PIXELS = env.int("MAX_IMAGE_PIXELS", default=50_000_000)
MAX_IMAGE_WIDTH = env.int("MAX_IMAGE_WIDTH", default=20_000)
MAX_IMAGE_HEIGHT = env.int("MAX_IMAGE_HEIGHT", default=20_000)
ALLOWED_IMAGE_FORMATS = [
    f.upper() for f in env.list("ALLOWED_IMAGE_FORMATS", default=["JPEG", "PNG", "WEBP", "GIF"])
]
# Derivatives (?w=&h=&fit=&format=&q= or ?preset=): only these sizes, so nobody can fill the cache
# with arbitrary ones; presets are named boxes.
DERIVATIVE_SIZES = sorted(env.list("DERIVATIVE_SIZES", cast=int, default=[64, 128, 256, 512, 1024, 2048]))
DERIVATIVE_PRESETS = {
    name: int(size)
    for name, size in env.dict(
        "DERIVATIVE_PRESETS", default={"thumb": 256, "card": 640, "full": 1600}
    ).items()
}
# The derivative budget (images/derivatives.py): one make runs in a child process that is killed
# after DERIVATIVE_TIMEOUT seconds or past DERIVATIVE_MEMORY_MB; a full-size re-encode may have at
# most DERIVATIVE_MAX_PIXELS; all derivatives together keep within DERIVATIVE_CACHE_MB, the least
# recently used going first (they can always be made again).
DERIVATIVE_TIMEOUT = env.float("DERIVATIVE_TIMEOUT", default=20.0)
DERIVATIVE_MEMORY_MB = env.int("DERIVATIVE_MEMORY_MB", default=768)
DERIVATIVE_MAX_PIXELS = env.int("DERIVATIVE_MAX_PIXELS", default=16_000_000)
DERIVATIVE_CACHE_MB = env.int("DERIVATIVE_CACHE_MB", default=2048)
# Per-worker caches of the hot read path (images/hotcache.py): records for a few seconds (another
# worker may serve a deleted image that long), and the bytes of small blobs, within this many MB.
HOT_CACHE_SECONDS = env.float("HOT_CACHE_SECONDS", default=2.0)
HOT_CACHE_MB = env.int("HOT_CACHE_MB", default=64)
# /image/<model_id> changes when a newer image arrives: caches keep it briefly, then revalidate.
MODEL_IMAGE_MAX_AGE = env.int("MODEL_IMAGE_MAX_AGE", default=60)

# --- Access ----------------------------------------------------------------------------------
PUBLIC_READ = env.bool("PUBLIC_READ", default=True)
JWT_HS256_SECRET = env.str("JWT_HS256_SECRET", default="")
JWT_PUBLIC_KEY = env.str("JWT_PUBLIC_KEY", default="", multiline=True)
JWT_AUDIENCE = env.str("JWT_AUDIENCE", default="")
JWT_ISSUER = env.str("JWT_ISSUER", default="")
# Signed URLs (images/signing.py): the HMAC key (empty: SECRET_KEY, under a salt of its own), and
# keys that signed URLs still in use, still accepted after a rotation.
URL_SIGNING_KEY = env.str("URL_SIGNING_KEY", default="")
URL_SIGNING_OLD_KEYS = env.list("URL_SIGNING_OLD_KEYS", default=[])
# Password sign-in (gallery and admin), throttled by django-axes (images/signin.py): this many
# failures for one user name, or from one address, lock both out for this long.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out sign-in before checking it
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("SIGNIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("SIGNIN_LOCKOUT_MINUTES", default=15.0))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one alone locks out
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "images.signin.client_address"
AXES_LOCKOUT_CALLABLE = "images.signin.lockout_response"
AXES_VERBOSE = False  # our request log already has one line per refusal
# Set by `serve`: running open without credentials is allowed only on a loopback address.
OPEN_MODE_ALLOWED = env.bool("IMAGESERVICE_OPEN_MODE_ALLOWED", default=True)

# Throttle state lives in the cache: this process's memory, or Redis shared by every instance.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

# How many reverse proxies stand in front. 0 trusts nothing the client says (X-Forwarded-For is
# ignored for throttling); with a proxy, its X-Forwarded-For and X-Forwarded-Proto are believed.
NUM_PROXIES = env.int("NUM_PROXIES", default=0)
if NUM_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True

# --- API -------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "images.browsable.BrowsableAPI",  # DRF's, titled and with sign-in links
    ],
    "DEFAULT_PARSER_CLASSES": [
        "images.parsers.MultiPartParser",  # DRF's, leaving no spool file behind a failed upload
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "images.auth.ApiKeyAuthentication",
        "images.auth.JWTAuthentication",
        # Last: an Authorization header wins over the gallery's session cookie.
        "images.auth.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_RATES": {
        # Uploads fill storage, so they are limited by default; reads are cheap and usually cached
        # in front of the service, so they are unlimited unless THROTTLE_READ is set.
        "upload": env.str("THROTTLE_UPLOAD", default="60/min") or None,
        "read": env.str("THROTTLE_READ", default="") or None,
        # Making a derivative costs CPU and storage, unlike reading one: limited by default.
        "derive": env.str("THROTTLE_DERIVE", default="120/min") or None,
    },
    "NUM_PROXIES": NUM_PROXIES,
    "EXCEPTION_HANDLER": "images.errors.api_exception_handler",
    # `?format=` picks a derivative's image format here, never a DRF renderer.
    "URL_FORMAT_OVERRIDE": None,
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "images.schema.ImageServiceSchema",
}

# OpenAPI schema at /api/schema/ (declared in images/schema.py), Swagger UI at /api/docs/. The UI's
# assets come from drf-spectacular-sidecar through WhiteNoise: the docs load nothing from a CDN.
SPECTACULAR_SETTINGS = {
    "TITLE": "image-service",
    "DESCRIPTION": "Stores, indexes and serves images. Every error is JSON: "
    '`{"error": "<code>", "detail": "<message>"}`.',
    "VERSION": "1.0.0",
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["images.schema.api_endpoints"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "images.schema.add_links"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
# Browsers preflight these request headers: `Authorization` (keys, tokens) is among the defaults;
# viewers (WebGL textures) fetch ranges and revalidate. No CORS_ALLOW_CREDENTIALS: cookies stay
# first-party (the gallery's session), and other origins send keys or tokens.
CORS_ALLOW_HEADERS = (
    *cors_default_headers,
    "range",
    "if-none-match",
    "if-modified-since",
    "if-range",
    "x-request-id",
)
# Every response header the README or the schema tells a client to read, which a browser hides from
# scripts on other origins unless it is listed (CORS-safelisted ones, such as Cache-Control, it never
# hides). tests/test_browser_client.py compares this list with the schema's response headers.
CORS_EXPOSE_HEADERS = [
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "Content-Disposition",
    "Content-Length",
    "Link",
    "Location",
    "Retry-After",
    "Vary",
    "WWW-Authenticate",
    "X-Request-ID",
    "X-Total-Count",
]

# --- Operations ------------------------------------------------------------------------------
# /metrics answers these networks without a credential (anyone else needs the `admin` scope).
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "imageservice.jsonlog.JSONFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": env.str("LOG_FORMAT", default="json")}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Our request log replaces Django's own lines for 4xx/5xx responses.
        "django.request": {"level": "ERROR"},
    },
}
