"""`manage.py serve`: migrate, then run the production WSGI server (gunicorn) in place of this process.

Bytes are served through WSGI, not ASGI: Django's ASGI handler buffers a whole FileResponse in
memory, while gunicorn streams it (with sendfile where the blob is a real file).
"""

import hashlib
import ipaddress
import logging
import os
import shutil
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from images import apikeys
from images.auth import jwt_configured
from images.backend import STORE_ERRORS, get_backend
from imageservice.gunicorn_conf import METRICS_DIR_PREFIX

log = logging.getLogger(__name__)
SHARED_MEMORY = Path("/dev/shm")


def is_loopback(bind: str) -> bool:
    host = bind.rpartition(":")[0].strip("[]") if ":" in bind else bind
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or unix socket: treat as exposed


class Command(BaseCommand):
    help = "Apply migrations, then serve the API with gunicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
        parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow running without any credential configured on a non-loopback address",
        )

    def handle(self, *args, bind: str, workers: int, threads: int, insecure: bool, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        backend = get_backend()
        try:
            backend.prepare()
            self._check_access(bind, insecure)
        finally:
            backend.disconnect()
        self._prepare_metrics(bind)
        self.stdout.write(
            f"image-service: {backend.name} ({backend.where}) mode, listening on http://{bind}/"
        )
        self.stdout.flush()
        argv = [
            sys.executable, "-m", "gunicorn", "imageservice.wsgi:application",
            "--bind", bind,
            "--workers", str(workers),
            # gthread, reading request heads without a thread and bodies at a minimum pace, so slow
            # clients hold no thread for long (imageservice/workers.py); timeouts cut dead ones off.
            "--worker-class", "imageservice.workers.ThreadWorker",
            "--threads", str(threads),
            "--timeout", "60",
            "--graceful-timeout", "30",
            "--keep-alive", "5",
            "--limit-request-line", "8190",  # gunicorn's most; longer lists of model_ids: POST /models/lookup
            # X-Forwarded-Proto (https URLs) only from a proxy: none trusted at NUM_PROXIES=0, as in Django.
            "--forwarded-allow-ips", "*" if settings.NUM_PROXIES else "",
            "--config", "python:imageservice.gunicorn_conf",
            "--no-control-socket",  # several instances may run on one host
        ]  # fmt: skip
        os.execv(sys.executable, argv)

    def _prepare_metrics(self, bind: str) -> None:
        """Workers write their metrics to memory-mapped files in a fresh directory, summed by /metrics.

        Not under DATA_DIR unless there is no shared memory (/dev/shm): a worker that writes a new
        series into a memory-mapped file on a full disk dies of SIGBUS, and the data disk is the one
        that fills. The directory is this instance's own (its DATA_DIR and address), reset at start
        and removed at a clean exit (gunicorn_conf.on_exit).
        """
        if explicit := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            directory = Path(explicit)
        elif SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK):
            instance = hashlib.sha256(f"{settings.DATA_DIR}|{bind}".encode()).hexdigest()[:16]
            directory = SHARED_MEMORY / f"{METRICS_DIR_PREFIX}{instance}"
        else:
            directory = settings.DATA_DIR / "metrics"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)

    def _check_access(self, bind: str, insecure: bool) -> None:
        """Running open (no key, no JWT key) is for development on loopback only."""
        loopback = is_loopback(bind)
        os.environ["IMAGESERVICE_OPEN_MODE_ALLOWED"] = "1" if loopback or insecure else "0"
        try:
            if jwt_configured() or apikeys.any_active():
                return
        except STORE_ERRORS:
            # Cannot tell yet. Start anyway: off loopback, open mode stays disallowed (above).
            return
        if not loopback and not insecure:
            raise CommandError(
                f"Refusing to serve on {bind} with no authentication configured: anyone could upload "
                "and delete. Create a key (manage.py create_api_key NAME --scopes read,write,admin), "
                "set JWT_HS256_SECRET or JWT_PUBLIC_KEY, or pass --insecure to run open anyway."
            )
        self.stderr.write(
            "WARNING: no API key and no JWT key are configured, so anyone who can reach "
            f"{bind} may upload and delete (development mode)."
        )
