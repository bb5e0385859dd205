from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from images import gallery, health
from images.negotiation import SchemaNegotiation
from images.observability import MetricsView

# YAML by default, as drf-spectacular serves it; `?format=json` gives `application/json` (listed
# before the `vnd.oai.openapi+json` one), which browsers show and every client parses.
schema_view = SpectacularAPIView.as_view(
    content_negotiation_class=SchemaNegotiation,
    renderer_classes=[OpenApiYamlRenderer, OpenApiJsonRenderer2, OpenApiJsonRenderer, OpenApiYamlRenderer2],
)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("images.urls")),
    path("", gallery.page, name="gallery"),
    path("accounts/login/", gallery.login, name="login"),
    path("accounts/logout/", gallery.logout, name="logout"),
    re_path(r"^api/whoami/?$", gallery.WhoAmI.as_view(), name="whoami"),
    # Browsers ask every page's site for it; the gallery's icon, so nobody's console shows a 404.
    path("favicon.ico", RedirectView.as_view(url=static("images/favicon.svg"), permanent=True)),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    re_path(r"^api/schema/?$", schema_view, name="api-schema"),
    re_path(r"^api/docs/?$", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

handler400 = "images.errors.handler400"
handler404 = "images.errors.handler404"
handler500 = "images.errors.handler500"
