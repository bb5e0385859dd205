"""Template filters that write figures as the rest of the service does (the gallery, fsck, stats)."""

from django import template

from images.bulk import human_bytes

register = template.Library()


@register.filter
def size(value: int) -> str:
    """Bytes as `153 B` or `1.4 MB`, never Django's `153 bytes`."""
    return human_bytes(value)
