"""The request parsers: DRF's, except that an upload that fails partway leaves no spool file."""

from typing import IO

from rest_framework import parsers


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser, but an upload that fails partway (a full disk, a client too slow, a
    broken or cut-off body) deletes its spool file in `DATA_DIR/tmp/` at once.

    Django closes the files that it finished receiving, but leaves the one that it was writing to
    the garbage collector, since the exception's traceback keeps it alive: that can take minutes,
    and on a full disk the half-written file keeps the space taken.
    """

    def parse(
        self, stream: IO[bytes], media_type: str | None = None, parser_context: dict | None = None
    ) -> parsers.DataAndFiles:
        try:
            return super().parse(stream, media_type, parser_context)
        except BaseException:
            for handler in (parser_context or {})["request"].upload_handlers:
                handler.upload_interrupted()  # Django's temporary-file handler deletes its file
            raise
