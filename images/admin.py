"""The Django admin, with an "Images" section that works the same in both modes.

Images are not ORM models in Mongo mode, so their pages go through the document manager and the
services (never the ORM): browse newest first with previews, filter by model or label, search by
filename or sha256, see who uploaded what and which image is its model's cover, list the covers, and
delete (which frees the bytes once nothing else uses them).

API keys live in the same store as the images, so their pages go through the key store: superusers
list them (scopes, created, last used), create one (shown once) and revoke one.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from . import apikeys, services
from .errors import InvalidRequest
from .keystore import KeyExists
from .pagination import encode_cursor, parse_cursor
from .validation import validate_label, validate_model_id

PAGE_SIZE = 50


class NewKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Who or what uses the key; recorded as uploaded_by.")
    scope = forms.ChoiceField(
        choices=[
            ("read", "read"),
            ("write", "write: upload (and read)"),
            ("admin", "admin: delete (and write and read)"),
        ],
        initial="write",
        widget=forms.RadioSelect,
    )

    def scopes(self) -> tuple[str, ...]:
        """The chosen scope and the ones it includes, as `create_api_key --scopes` stores them."""
        return apikeys.SCOPES[: apikeys.SCOPES.index(self.cleaned_data["scope"]) + 1]


class ImageServiceAdminSite(admin.AdminSite):
    site_header = "image-service"
    site_title = "image-service admin"

    def get_urls(self):
        return [
            path("images/", self.admin_view(self.browse), name="images_browse"),
            path("images/<str:image_id>/delete/", self.admin_view(self.delete), name="images_delete"),
            path("covers/", self.admin_view(self.covers), name="images_covers"),
            path("api-keys/", self.admin_view(self.keys), name="api_keys"),
            path("api-keys/add/", self.admin_view(self.add_key), name="api_keys_add"),
            path("api-keys/<str:name>/revoke/", self.admin_view(self.revoke_key), name="api_keys_revoke"),
            *super().get_urls(),
        ]

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = super().get_app_list(request, app_label)
        if app_label in (None, "images"):
            url = reverse("admin:images_browse", current_app=self.name)
            entry = {"name": "Images", "object_name": "Image", "admin_url": url, "view_only": True}
            covers = reverse("admin:images_covers", current_app=self.name)
            models = [
                {**entry, "perms": {"view": True}},
                {"name": "Covers", "object_name": "Cover", "admin_url": covers, "perms": {"view": True}},
            ]
            if request.user.is_superuser:
                keys = reverse("admin:api_keys", current_app=self.name)
                add = reverse("admin:api_keys_add", current_app=self.name)
                perms = {"view": True, "add": True, "change": True}
                entry = {"name": "API keys", "object_name": "ApiKey", "admin_url": keys, "add_url": add}
                models.append({**entry, "perms": perms})
            apps.append(
                {
                    "name": "Images",
                    "app_label": "images",
                    "app_url": url,
                    "has_module_perms": True,
                    "models": models,
                }
            )
        return apps

    def browse(self, request: HttpRequest) -> HttpResponse:
        model_id = request.GET.get("model_id", "").strip() or None
        matching = request.GET.get("q", "").strip() or None
        label = request.GET.get("label", "").strip() or None
        try:
            if model_id:
                validate_model_id(model_id)
            if label:
                validate_label(label)
            after = parse_cursor(request)
        except InvalidRequest as exc:
            messages.error(request, str(exc.detail))
            model_id, label, after = None, None, None
        records = services.page(model_id, after, PAGE_SIZE + 1, matching=matching, label=label)
        next_url = None
        if len(records) > PAGE_SIZE:
            query = {k: v for k, v in (("model_id", model_id), ("q", matching), ("label", label)) if v}
            next_url = "?" + urlencode({**query, "cursor": encode_cursor(records[PAGE_SIZE - 1])})
        context = {
            **self.each_context(request),
            "title": "Images",
            "records": records[:PAGE_SIZE],
            "covers": services.covers_among(records[:PAGE_SIZE]),
            "model_id": model_id or "",
            "label": label or "",
            "q": matching or "",
            "next_url": next_url,
        }
        return TemplateResponse(request, "admin/images/browse.html", context)

    def covers(self, request: HttpRequest) -> HttpResponse:
        """The models' covers, the latest set first (set and cleared through the API or the gallery)."""
        context = {**self.each_context(request), "title": "Covers", "covers": services.list_covers(PAGE_SIZE)}
        return TemplateResponse(request, "admin/images/covers.html", context)

    def delete(self, request: HttpRequest, image_id: str) -> HttpResponse:
        record = services.find_record(image_id)
        if record is None:
            raise Http404("No such image.")
        if request.method == "POST":
            services.delete_image(image_id)
            messages.success(request, f"Deleted {record.filename} ({record.model_id}).")
            return HttpResponseRedirect(reverse("admin:images_browse", current_app=self.name))
        context = {**self.each_context(request), "title": "Delete image?", "record": record}
        return TemplateResponse(request, "admin/images/delete.html", context)

    @staticmethod
    def _superuser_only(request: HttpRequest) -> None:
        """A key outlives the account of whoever made it, so only superusers manage keys."""
        if not request.user.is_superuser:
            raise PermissionDenied

    def keys(self, request: HttpRequest) -> HttpResponse:
        self._superuser_only(request)
        context = {**self.each_context(request), "title": "API keys", "keys": apikeys.all_keys()}
        return TemplateResponse(request, "admin/images/api_keys.html", context)

    def add_key(self, request: HttpRequest) -> HttpResponse:
        self._superuser_only(request)
        form = NewKeyForm(request.POST if request.method == "POST" else None)
        key = None  # shown once, on this answer only (which admin_view keeps out of caches)
        if form.is_valid():
            try:
                key = apikeys.create_key(form.cleaned_data["name"], form.scopes())
            except KeyExists:
                form.add_error("name", "A key of that name exists already (revoked keys keep their names).")
        context = {**self.each_context(request), "title": "Add API key", "form": form, "key": key}
        if key:
            name = form.cleaned_data["name"]
            context |= {"title": "API key created", "name": name, "scopes": form.scopes()}
        return TemplateResponse(request, "admin/images/api_key_add.html", context)

    def revoke_key(self, request: HttpRequest, name: str) -> HttpResponse:
        self._superuser_only(request)
        if request.method == "POST":
            if apikeys.revoke_key(name):
                messages.success(request, f"Revoked the API key {name!r}.")
            else:
                messages.error(request, f"There is no active API key named {name!r}.")
            return HttpResponseRedirect(reverse("admin:api_keys", current_app=self.name))
        context = {**self.each_context(request), "title": "Revoke API key?", "name": name}
        return TemplateResponse(request, "admin/images/api_key_revoke.html", context)
