from rest_framework.exceptions import NotAcceptable, NotFound
from rest_framework.negotiation import DefaultContentNegotiation


class LenientNegotiation(DefaultContentNegotiation):
    """HTML for a browser that asks for it (the browsable API), JSON for everyone else: never 406."""

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


class SchemaNegotiation(DefaultContentNegotiation):
    """`?format=json` or `?format=yaml` on /api/schema/, where browsers and code generators put it,
    wins over Accept (a browser's address bar sends `text/html`). URL_FORMAT_OVERRIDE stays off for
    the API, where `?format=` is a derivative's image format. Without it, Accept decides."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if wanted := request.query_params.get("format"):
            for renderer in renderers:  # the first of that format: the view lists its preferred first
                if renderer.format == wanted:
                    return renderer, renderer.media_type
            formats = " or ".join(dict.fromkeys(renderer.format for renderer in renderers))
            raise NotFound(f"The schema's format is {formats}.")
        return super().select_renderer(request, renderers, format_suffix)
