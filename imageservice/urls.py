from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from images import health
from images.observability import MetricsView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("images.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    re_path(r"^api/schema/?$", SpectacularAPIView.as_view(), name="api-schema"),
    re_path(r"^api/docs/?$", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

handler400 = "images.errors.handler400"
handler404 = "images.errors.handler404"
handler500 = "images.errors.handler500"
