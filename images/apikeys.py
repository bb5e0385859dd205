"""API keys: random secrets shown once, of which only a sha256 is stored.

A key has 256 random bits, so a plain sha256 is as good as a slow password hash here and costs
nothing per request. Keys live beside the records (the backend's key store, images/keystore.py), so
every instance of the service sees the same keys.

A key's last use is recorded to within a minute (LAST_USED_SECONDS): each worker writes it at most
once a minute per key, and only when the stored time is older than that, so a busy key costs one
small write a minute, not one per request.
"""

import hashlib
import logging
import secrets
import time
from datetime import UTC, datetime

from . import hotcache
from .backend import STORE_ERRORS, get_backend
from .keystore import LAST_USED_SECONDS, ApiKey, KeyInfo

PREFIX = "isk_"
SCOPES = ("read", "write", "admin")  # each includes the ones before it
# A revoked key keeps working in other workers for at most this long (the verification cache).
CACHE_SECONDS = 10
log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not scopes or not set(scopes) <= set(SCOPES):
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}")
    return scopes


def create_key(name: str, scopes: tuple[str, ...]) -> str:
    """Stores a new key and returns it: the only time it is ever seen."""
    key = PREFIX + secrets.token_urlsafe(32)
    get_backend().keys.add(name, hash_key(key), scopes)
    forget_cached()
    return key


def revoke_key(name: str) -> bool:
    """Whether an active key of that name was revoked. Other workers notice within CACHE_SECONDS."""
    revoked = get_backend().keys.revoke(name)
    forget_cached()
    return revoked


_cache = hotcache.TTLCache(lambda: CACHE_SECONDS)


def verify(key: str) -> ApiKey | None:
    """The active key matching `key`, or None."""
    if not key.startswith(PREFIX):
        return None
    key_hash = hash_key(key)
    # Unknown keys are remembered too, so a flood of bad keys costs no queries.
    found = _cache.get(
        hotcache.key("key", key_hash), lambda: get_backend().keys.find(key_hash), hotcache.always
    )
    if found is not None:
        _note_use(key_hash)
    return found


_marked: dict[str, float] = {}  # key hash: when this process last recorded its use (monotonic)


def _note_use(key_hash: str) -> None:
    """Records the key's use, at most once a minute per key and process; never fails the request."""
    now = time.monotonic()
    if now - _marked.get(key_hash, -LAST_USED_SECONDS) < LAST_USED_SECONDS:
        return
    _marked[key_hash] = now
    try:
        get_backend().keys.mark_used(key_hash, datetime.now(UTC))
    except STORE_ERRORS as exc:
        log.warning("could not record an API key's use: %s", exc)


def all_keys() -> list[KeyInfo]:
    """Every key, revoked ones too, newest first (the admin's list); never a hash."""
    return get_backend().keys.all()


def any_active() -> bool:
    return _cache.get(hotcache.key("any"), lambda: get_backend().keys.any_active(), hotcache.always)


def forget_cached() -> None:
    """After this process creates or revokes a key, its own answers are fresh at once."""
    _cache.clear()
    _marked.clear()
