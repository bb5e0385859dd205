"""`manage.py serve`: migrate, then run the production WSGI server (gunicorn) in place of this process.

Bytes are served through WSGI, not ASGI: Django's ASGI handler buffers a whole FileResponse in
memory, while gunicorn streams it (with sendfile where the blob is a real file).
"""

import logging
import os
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from pymongo.errors import PyMongoError

from images.documents import MongoDocuments
from images.mongo import get_client

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Apply migrations, then serve the API with gunicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
        parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")

    def handle(self, *args, bind: str, workers: int, threads: int, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        if settings.MONGO:
            self._prepare_mongo()
        mode = "mongo" if settings.MONGO else f"embedded ({settings.DATA_DIR})"
        self.stdout.write(f"image-service: {mode} mode, listening on http://{bind}/")
        self.stdout.flush()
        argv = [
            sys.executable, "-m", "gunicorn", "imageservice.wsgi:application",
            "--bind", bind,
            "--workers", str(workers),
            # Threads keep one slow client from holding a whole worker; timeouts cut dead ones off.
            "--worker-class", "gthread",
            "--threads", str(threads),
            "--timeout", "60",
            "--graceful-timeout", "30",
            "--keep-alive", "5",
            "--access-logfile", "-",
            "--no-control-socket",  # several instances may run on one host
        ]  # fmt: skip
        os.execv(sys.executable, argv)

    def _prepare_mongo(self) -> None:
        """Creates the indexes up front; an unreachable server is reported, not fatal (503s follow)."""
        try:
            MongoDocuments().ensure_indexes()
        except PyMongoError as exc:
            log.warning("MongoDB is not reachable yet (%s); requests will get 503 until it is", exc)
        finally:
            get_client().close()  # MongoClient is not fork-safe: the workers make their own
