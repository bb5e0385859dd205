"""`manage.py serve`, with granian where serve would exec gunicorn: the bench's `--servers granian`.

Issue 17 asks whether a faster WSGI server would serve the bytes path faster. So that only the server
differs, this runs serve itself (migrations, the store's preparation, the access check, the metrics
directory, the environment it leaves for the workers) and replaces only its last step, the exec of
gunicorn, by granian serving the same WSGI application (`imageservice.wsgi`, hot-answer layer
included), on serve's address, with serve's worker and thread counts. Not for production: granian
lacks most of imageservice/workers.py's slow-client defences (docs/performance.md, "Other WSGI servers").

    python -m bench.serve_granian --bind 127.0.0.1:8001 --workers 2
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER_TIMEOUT_MS = (1, 60_000)  # what granian accepts for --http1-header-read-timeout


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def granian_argv(gunicorn_argv: list[str]) -> list[str]:
    """granian's command line for what serve asked gunicorn to do.

    Its one slow-client defence, a deadline for a request's head, gets serve's CLIENT_TIMEOUT.
    """
    from django.conf import settings

    host, _, port = option(gunicorn_argv, "--bind").rpartition(":")
    low, high = HEADER_TIMEOUT_MS
    header_timeout = min(max(round(settings.CLIENT_TIMEOUT * 1000), low), high)
    return [
        sys.executable, "-m", "granian", "imageservice.wsgi:application",
        "--interface", "wsgi",
        "--host", host,
        "--port", port,
        "--workers", option(gunicorn_argv, "--workers"),
        "--blocking-threads", option(gunicorn_argv, "--threads"),  # Python threads per worker
        "--http", "1",
        "--no-ws",
        "--http1-header-read-timeout", str(header_timeout),
        "--working-dir", str(ROOT),
        "--log-level", "warning",
    ]  # fmt: skip


def main() -> None:
    from django.core.management import execute_from_command_line

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imageservice.settings")
    execv = os.execv

    def exec_granian(path: str, argv: list[str]) -> None:
        execv(sys.executable, granian_argv(argv))

    os.execv = exec_granian  # serve's last step; this process then becomes granian
    execute_from_command_line(["manage.py", "serve", *sys.argv[1:]])


if __name__ == "__main__":
    main()
