from django.urls import include, path

urlpatterns = [path("", include("images.urls"))]

handler400 = "images.errors.handler400"
handler404 = "images.errors.handler404"
handler500 = "images.errors.handler500"
