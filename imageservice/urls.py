from django.urls import include, path

from images import health
from images.observability import MetricsView

urlpatterns = [
    path("", include("images.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
]

handler400 = "images.errors.handler400"
handler404 = "images.errors.handler404"
handler500 = "images.errors.handler500"
