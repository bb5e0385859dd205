"""The Django admin, with an "Images" section that works the same in both modes.

Images are not ORM models in Mongo mode, so their pages go through the document manager and the
services (never the ORM): browse newest first with previews, filter by model, search by filename or
sha256, see who uploaded what, and delete (which frees the bytes once nothing else uses them).
"""

from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from . import services
from .documents import get_documents
from .errors import InvalidRequest
from .pagination import encode_cursor, parse_cursor
from .validation import validate_model_id

PAGE_SIZE = 50


class ImageServiceAdminSite(admin.AdminSite):
    site_header = "image-service"
    site_title = "image-service admin"

    def get_urls(self):
        return [
            path("images/", self.admin_view(self.browse), name="images_browse"),
            path("images/<str:image_id>/delete/", self.admin_view(self.delete), name="images_delete"),
            *super().get_urls(),
        ]

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = super().get_app_list(request, app_label)
        if app_label in (None, "images"):
            url = reverse("admin:images_browse", current_app=self.name)
            entry = {"name": "Images", "object_name": "Image", "admin_url": url, "view_only": True}
            apps.append(
                {
                    "name": "Images",
                    "app_label": "images",
                    "app_url": url,
                    "has_module_perms": True,
                    "models": [{**entry, "perms": {"view": True}}],
                }
            )
        return apps

    def browse(self, request: HttpRequest) -> HttpResponse:
        model_id = request.GET.get("model_id", "").strip() or None
        matching = request.GET.get("q", "").strip() or None
        try:
            if model_id:
                validate_model_id(model_id)
            after = parse_cursor(request)
        except InvalidRequest as exc:
            messages.error(request, str(exc.detail))
            model_id, after = None, None
        records = get_documents().page(model_id, after, PAGE_SIZE + 1, matching=matching)
        next_url = None
        if len(records) > PAGE_SIZE:
            query = {k: v for k, v in (("model_id", model_id), ("q", matching)) if v}
            next_url = "?" + urlencode({**query, "cursor": encode_cursor(records[PAGE_SIZE - 1])})
        context = {
            **self.each_context(request),
            "title": "Images",
            "records": records[:PAGE_SIZE],
            "model_id": model_id or "",
            "q": matching or "",
            "next_url": next_url,
        }
        return TemplateResponse(request, "admin/images/browse.html", context)

    def delete(self, request: HttpRequest, image_id: str) -> HttpResponse:
        record = get_documents().get(image_id)
        if record is None:
            raise Http404("No such image.")
        if request.method == "POST":
            services.delete_image(image_id)
            messages.success(request, f"Deleted {record.filename} ({record.model_id}).")
            return HttpResponseRedirect(reverse("admin:images_browse", current_app=self.name))
        context = {**self.each_context(request), "title": "Delete image?", "record": record}
        return TemplateResponse(request, "admin/images/delete.html", context)
