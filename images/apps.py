"""The images app's start-up: the data directory and the secret key, made when the service (or a
command, or a test run) starts rather than when the settings are imported."""

import os
import secrets
from pathlib import Path

from django.apps import AppConfig
from django.conf import settings
from django.contrib.admin import apps as admin_apps
from django.core.exceptions import ImproperlyConfigured


class ImagesConfig(AppConfig):
    name = "images"
    verbose_name = "Images"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(exist_ok=True)
        try:
            settings.SECRET_KEY  # noqa: B018 - Django refuses to read an empty one
        except ImproperlyConfigured:
            settings.SECRET_KEY = persistent_secret_key(settings.DATA_DIR / "secret_key")


def persistent_secret_key(path: Path) -> str:
    """A random key kept in `path` (mode 600), so that a quick start needs no configuration. Made
    with O_EXCL: of workers starting at once, one writes it and the others read that one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


class ImageServiceAdminConfig(admin_apps.AdminConfig):
    """Django's admin, with the images section of images.admin as its site."""

    default = False  # named explicitly in INSTALLED_APPS; ImagesConfig is this module's default
    default_site = "images.admin.ImageServiceAdminSite"
