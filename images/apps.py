from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ImagesConfig(AppConfig):
    name = "images"
    verbose_name = "Images"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks


class ImageServiceAdminConfig(admin_apps.AdminConfig):
    """Django's admin, with the images section of images.admin as its site."""

    default = False  # named explicitly in INSTALLED_APPS; ImagesConfig is this module's default
    default_site = "images.admin.ImageServiceAdminSite"
