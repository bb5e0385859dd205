"""Rate limits per caller (the credential's name, or the client address), kept in Django's cache:
local memory by default, Redis (CACHE_URL) to share them across instances.
"""

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class CallerRateThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        # DRF binds THROTTLE_RATES at import; reading it per request lets settings change live.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view) -> str:
        ident = f"key:{request.user.name}" if request.user else f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class UploadRateThrottle(CallerRateThrottle):
    """Uploads and deletes: THROTTLE_UPLOAD."""

    scope = "upload"


class ReadRateThrottle(CallerRateThrottle):
    """Everything else: THROTTLE_READ."""

    scope = "read"
