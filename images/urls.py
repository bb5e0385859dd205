"""The API's URLs. The first three are the old service's and stay as they are; a trailing slash is
tolerated everywhere, since clients in the wild add one.
"""

from django.urls import re_path

from . import views

ID = r"(?P<image_id>[^/]+)"
MODEL = r"(?P<model_id>[^/]+)"

listing = views.ImageViewSet.as_view({"get": "list"})

urlpatterns = [
    re_path(r"^upload/?$", views.ImageViewSet.as_view({"post": "upload"}), name="upload"),
    re_path(r"^images/?$", listing, name="image-list"),
    re_path(rf"^image/{MODEL}/?$", views.model_image, name="model-image"),
    re_path(
        rf"^images/{ID}/?$",
        views.ImageViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="image-detail",
    ),
    re_path(rf"^images/{ID}/content/?$", views.image_content, name="image-content"),
    re_path(rf"^models/{MODEL}/images/?$", listing, name="model-images"),
]
