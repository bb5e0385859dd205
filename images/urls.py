"""The API's URLs. The first three are the old service's and stay as they are; a trailing slash is
tolerated everywhere, since clients in the wild add one.
"""

from django.urls import re_path

from . import views

ID = r"(?P<image_id>[^/]+)"
MODEL = r"(?P<model_id>[^/]+)"


def images(actions: dict[str, str]):
    """The viewset's actions at one URL, named after its main one: the browsable API's page title
    and breadcrumb."""
    main = next(iter(actions.values()))
    return views.ImageViewSet.as_view(actions, name=views.SUMMARIES[actions.get("get", main)])


urlpatterns = [
    re_path(r"^upload/?$", images({"post": "upload"}), name="upload"),
    re_path(r"^images/?$", images({"get": "list"}), name="image-list"),
    re_path(rf"^image/{MODEL}/?$", images({"get": "model_image"}), name="model-image"),
    re_path(
        rf"^images/{ID}/?$",
        images({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="image-detail",
    ),
    re_path(rf"^images/{ID}/content/?$", images({"get": "content"}), name="image-content"),
    re_path(rf"^images/{ID}/signed-url/?$", images({"get": "signed_url"}), name="image-signed-url"),
    re_path(r"^signature-check/?$", views.signature_check, name="signature-check"),  # for nginx
    re_path(rf"^models/{MODEL}/images/?$", images({"get": "model_images"}), name="model-images"),
    re_path(r"^models/?$", images({"get": "models"}), name="models"),
    re_path(r"^models/lookup/?$", images({"post": "lookup"}), name="models-lookup"),
    re_path(
        rf"^models/{MODEL}/cover/?$",
        images({"put": "set_cover", "delete": "clear_cover"}),
        name="model-cover",
    ),
]
