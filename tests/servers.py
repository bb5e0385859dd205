"""Real servers for the tests: FerretDB (or the MongoDB at MONGO_TEST_URI) and the service itself.

Everything listens on 127.0.0.1, on a free port, with its data in a temporary directory.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymongo
import pymongo.errors
import requests

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_VERSION = "v1.24.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferretdb_binary() -> Path | None:
    """The binary built by scripts/install-ferretdb, if it has been built."""
    if explicit := os.environ.get("FERRETDB_BIN"):
        return Path(explicit)
    cache = Path(os.environ.get("IMAGESERVICE_CACHE", Path.home() / ".cache" / "image-service"))
    binary = cache / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"
    return binary if binary.exists() else None


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, pymongo.errors.PyMongoError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout}s")
        time.sleep(0.1)


@contextmanager
def running(argv: list[str], log_path: Path, **popen) -> Iterator[subprocess.Popen]:
    """Runs a server process with its output in `log_path`; stops it (and waits) on exit."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def ferretdb(binary: Path, data_dir: Path, port: int | None = None) -> Iterator[str]:
    """Runs FerretDB with its SQLite handler; yields its mongodb:// URI."""
    port = port or free_port()
    (data_dir / "sqlite").mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--handler=sqlite",
        f"--sqlite-url=file:{data_dir / 'sqlite'}/",
        f"--listen-addr=127.0.0.1:{port}",
        f"--state-dir={data_dir}",
        "--telemetry=disable",
        "--debug-addr=-",
        "--log-level=WARN",
    ]
    uri = f"mongodb://127.0.0.1:{port}/"
    with running(argv, data_dir / "ferretdb.log"):
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
        wait_until(lambda: client.admin.command("ping"), 30, "FerretDB")
        client.close()
        yield uri


@contextmanager
def service(env: dict[str, str], log_path: Path, workers: int = 2) -> Iterator[str]:
    """Runs `manage.py serve` (gunicorn) with `env` added (and no MONGO_* from outside); yields its URL."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MONGO_")}
    full_env.update(env)
    argv = [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    with running(argv, log_path, cwd=ROOT, env=full_env) as proc:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited; see {log_path}")
            return bool(requests.get(f"{url}/images?limit=1", timeout=10).status_code)

        wait_until(up, 60, "service")
        yield url
