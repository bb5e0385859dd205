"""Real servers for the tests: FerretDB (or the MongoDB at MONGO_TEST_URI) and the service itself.

Everything listens on 127.0.0.1, on a free port, with its data in a temporary directory.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    with ferretdb_process(binary, data_dir, port) as (uri, _):
        yield uri


@contextmanager
def ferretdb_process(
    binary: Path, data_dir: Path, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`ferretdb`, yielding its process too, for tests that stop it (SIGSTOP) at a chosen moment."""
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
    with running(argv, data_dir / "ferretdb.log") as proc:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
        wait_until(lambda: client.admin.command("ping"), 30, "FerretDB")
        client.close()
        yield uri, proc


@contextmanager
def relay(port: int, watch: Callable[[bytes], None]) -> Iterator[int]:
    """A TCP relay on a free loopback port to `port`, which calls `watch` with what each client
    sends before it passes it on: a test can stop the server at the moment a given command leaves
    (pymongo writes each message whole). Yields the relay's port."""
    listener = socket.create_server(("127.0.0.1", 0))
    opened = [listener]

    def pump(source: socket.socket, target: socket.socket, watch: Callable[[bytes], None] | None) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if watch is not None:
                    watch(data)
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener was shut down
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", port))
                opened.extend((client, upstream))
                threading.Thread(target=pump, args=(client, upstream, watch), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def service_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of the service and its commands: ours, with `env` added and no MONGO_* from
    outside."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MONGO_")}
    full_env.update(env)
    return full_env


@dataclass
class Served:
    """A running service: its URL, and its gunicorn master (`manage.py serve` becomes gunicorn)."""

    url: str
    master: subprocess.Popen

    def pids(self) -> list[int]:
        return process_tree(self.master.pid)

    def workers(self) -> list[int]:
        return self.pids()[1:]


@contextmanager
def served(
    env: dict[str, str], log_path: Path, workers: int = 2, port: int | None = None
) -> Iterator[Served]:
    """Runs `manage.py serve` (gunicorn) with `env`; `port` lets a restarted service keep its URL."""
    port = port or free_port()
    argv = [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    with running(argv, log_path, cwd=ROOT, env=service_env(env)) as proc:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited; see {log_path}")
            return bool(requests.get(f"{url}/images?limit=1", timeout=10).status_code)

        wait_until(up, 60, "service")
        yield Served(url, proc)


@contextmanager
def service(env: dict[str, str], log_path: Path, workers: int = 2) -> Iterator[str]:
    """Runs `manage.py serve` (gunicorn) with `env` added (and no MONGO_* from outside); yields its URL."""
    with served(env, log_path, workers) as running_service:
        yield running_service.url


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs a `manage.py` command against the store a service with `env` uses."""
    argv = [sys.executable, "manage.py", *args]
    return subprocess.run(
        argv, cwd=ROOT, env=service_env(env), capture_output=True, text=True, timeout=timeout, check=False
    )


# What an unfinished write or delete leaves, and fsck --repair reclaims (images/management/commands/fsck.py).
RECLAIMABLE = {
    "dangling_cover",
    "orphan_blob",
    "orphan_derivative",
    "stale_pin",
    "temp_file",
    "orphan_chunks",
    "upload_temp_file",
}


def fsck(env: dict[str, str], *args: str) -> dict:
    """`manage.py fsck --json` on the store of a service with `env`; orphans of any age count."""
    run = manage(env, "fsck", "--json", "--grace", "0", *args)
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: damage found
    return json.loads(run.stdout)


# --- Processes, seen through /proc (Linux) -----------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, parents first."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        pids.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # exited meanwhile
                todo += [int(child) for child in children.read_text().split()]
    return pids


def rss_bytes(pids: list[int]) -> int:
    """Resident memory, summed over `pids` (shared pages count once per process, as `ps` shows)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        rss_kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        total += int(rss_kb) * 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time used so far, summed over `pids`."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")
