"""The browsable API: DRF's HTML pages for people who open the API in a browser, in the service's
own frame (images/api.html): the page's title, who is signed in, and links to sign in or out."""

from rest_framework.renderers import BrowsableAPIRenderer

from .auth import SessionAuthentication


class BrowsableAPI(BrowsableAPIRenderer):
    template = "images/api.html"

    def get_context(self, data, accepted_media_type: str, renderer_context: dict) -> dict:
        context = super().get_context(data, accepted_media_type, renderer_context)
        authenticator = renderer_context["request"].successful_authenticator
        # Only a session can be signed out of; a key or a token goes with the next request.
        context["session"] = isinstance(authenticator, SessionAuthentication)
        return context
