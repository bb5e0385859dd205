"""The ceiling for a Django app: one view returning `FileResponse(open(path))`, nothing else.

Settings, URLs and the WSGI application in one module (`DJANGO_SETTINGS_MODULE` points back here): no
middleware, no apps, no database. Files are served from BENCH_FILES_DIR.
"""

import os
from pathlib import Path

from django.http import FileResponse, HttpRequest
from django.urls import path

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
USE_TZ = True

FILES_DIR = Path(os.environ.get("BENCH_FILES_DIR", "."))


def file_view(request: HttpRequest, name: str) -> FileResponse:
    return FileResponse(open(FILES_DIR / name, "rb"), content_type="image/jpeg")


urlpatterns = [path("files/<str:name>", file_view)]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
from django.core.wsgi import get_wsgi_application  # noqa: E402  (settings above must exist first)

application = get_wsgi_application()
