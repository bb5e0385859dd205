"""The systems under test: each starts on a fresh store, takes the sample images, and names its URLs.

Every Python system runs on gunicorn with the settings `manage.py serve` uses, and the same worker count
(the service also on granian, with `bench/run.py --servers`); nginx serves the same files from disk. A
system answers only the endpoints it has (`endpoints`); the matrix skips the rest. To measure a new
endpoint (derivatives, say), add it to `ServiceRun.PATHS`.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import psutil
import pymongo
import requests

from imageservice.gunicorn_conf import METRICS_DIR_PREFIX
from tests import servers

ROOT = servers.ROOT
THREADS = 4  # `manage.py serve`'s default --threads
SHARED_MEMORY = Path("/dev/shm")


def gunicorn_argv(app: str, port: int, workers: int) -> list[str]:
    """The gunicorn command line `manage.py serve` execs (images/management/commands/serve.py).

    The peers run on exactly this, so only the application differs between Python systems (serve
    also loads its own gunicorn hooks, which only clean up after dead workers).
    """
    return [
        sys.executable, "-m", "gunicorn", app,
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--worker-class", "gthread",
        "--threads", str(THREADS),
        "--timeout", "60",
        "--graceful-timeout", "30",
        "--keep-alive", "5",
        "--no-control-socket",
    ]  # fmt: skip


def server_root(port: int) -> psutil.Process:
    """The top process of the tree listening on `port` (gunicorn's or nginx's master).

    The system-wide table names one holder per socket (often a worker), so climb to the highest
    ancestor that still holds the listening socket.
    """

    def listens(proc: psutil.Process) -> bool:
        try:
            return any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in proc.net_connections(kind="tcp")
            )
        except psutil.Error:
            return False

    holder = next(
        (
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
        ),
        None,
    )
    if holder is None:
        raise RuntimeError(f"nothing listens on port {port}")
    proc = psutil.Process(holder)
    while (parent := proc.parent()) is not None and listens(parent):
        proc = parent
    return proc


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited; see {log}")
        return bool(requests.get(url, timeout=5).status_code)

    servers.wait_until(up, 60, what)


def sample_model(key: str) -> str:
    return f"bench-{key}"


@dataclass
class Run:
    """A started system: its URL, the id each stored sample image got, and headers uploads need."""

    url: str
    log: Path
    ids: dict[str, str] = field(default_factory=dict)
    upload_headers: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def root(self) -> psutil.Process:
        return server_root(self.port)

    def path(self, endpoint: str, image: str) -> str | None:
        """The request path for `endpoint` on sample `image`, or None if this system lacks it."""
        raise NotImplementedError

    def store(self, key: str, file: Path) -> None:
        raise NotImplementedError

    def seed(self, total: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot seed records")


class UploadRun(Run):
    """Systems that take images through POST /upload (multipart `file` + `model_id`)."""

    PATHS: dict[str, str] = {
        "upload": "/upload",
        "by_id": "/images/{id}/content",
        "by_model": "/image/{model}",
    }

    def upload(self, key: str, file: Path, timeout: float = 120) -> requests.Response:
        with open(file, "rb") as f:
            return requests.post(
                f"{self.url}/upload",
                data={"model_id": sample_model(key)},
                files={"file": (file.name, f, "image/jpeg")},
                headers=self.upload_headers,
                timeout=timeout,
            )

    def store(self, key: str, file: Path) -> None:
        response = self.upload(key, file)
        response.raise_for_status()
        self.ids[key] = response.json()["image_id"]

    def path(self, endpoint: str, image: str) -> str | None:
        template = self.PATHS.get(endpoint)
        if template is None or ("{id}" in template and image not in self.ids):
            return None
        return template.format(id=self.ids.get(image), model=sample_model(image))


class ServiceRun(UploadRun):
    PATHS = {**UploadRun.PATHS, "list": "/images?limit=100"}

    def __init__(self, url: str, log: Path, env: dict[str, str]):
        super().__init__(url, log)
        self.env = env
        # Uploads carry an API key with the write scope, as in production (reads are public).
        key = self.manage("create_api_key", "bench", "--scopes", "write").strip().splitlines()[-1]
        self.upload_headers = {"Authorization": f"Api-Key {key}"}

    def manage(self, *args: str) -> str:
        """Runs a command where the service runs: same environment, so the same store."""
        argv = [sys.executable, *args] if args[0] == "-m" else [sys.executable, "manage.py", *args]
        return subprocess.run(argv, cwd=ROOT, env=self.env, check=True, capture_output=True, text=True).stdout

    def seed(self, total: int) -> None:
        self.manage("-m", "bench.seed", str(total))


class FilesRun(Run):
    """Systems that serve files from a directory: the sample images are copied there."""

    def __init__(self, url: str, log: Path, files: Path, prefix: str = "/files/"):
        super().__init__(url, log)
        self.files = files
        self.prefix = prefix

    def store(self, key: str, file: Path) -> None:
        shutil.copyfile(file, self.files / f"{key}.jpg")
        self.ids[key] = f"{key}.jpg"

    def path(self, endpoint: str, image: str) -> str | None:
        if endpoint != "by_id" or image not in self.ids:
            return None
        return self.prefix + self.ids[image]


@dataclass(frozen=True)
class System:
    name: str
    backend: str  # "embedded", "disk", or the MongoDB-compatible server's name ("ferretdb", "mongodb")
    workers: int
    mongo_uri: str | None = None

    kind: ClassVar[str]  # what the targets call it: "service", "nginx", "bare-django", "naive"
    endpoints: ClassVar[frozenset[str]]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    @property
    def mode(self) -> str:
        return "embedded" if self.mongo_uri is None else "mongo"

    @contextmanager
    def start(self, workdir: Path, env: dict[str, str], logs: Path) -> Iterator[Run]:
        raise NotImplementedError
        yield

    @contextmanager
    def mongo_database(self) -> Iterator[str]:
        """A fresh database on this system's MongoDB, dropped afterwards."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            yield name
        finally:
            with pymongo.MongoClient(self.mongo_uri) as client:
                client.drop_database(name)


class Service(System):
    """image-service itself, through `manage.py serve` (tests/servers.py's runner)."""

    kind = "service"
    endpoints = frozenset(ServiceRun.PATHS)

    # Upload throttling (60/min by default) would measure the throttle, not the service.
    ENV: ClassVar[dict[str, str]] = {"THROTTLE_UPLOAD": ""}

    @contextmanager
    def start(self, workdir: Path, env: dict[str, str], logs: Path) -> Iterator[Run]:
        env = {**self.ENV, **env, "DATA_DIR": str(workdir / "data")}
        log = logs / f"{self.slug}.log"
        if self.mongo_uri is None:
            with self.serve(env, log) as run:
                yield run
            return
        with self.mongo_database() as db:
            env.update(MONGO_URI=self.mongo_uri, MONGO_DB=db)
            with self.serve(env, log) as run:
                yield run

    @contextmanager
    def serve(self, env: dict[str, str], log: Path) -> Iterator[ServiceRun]:
        """The service on `env`'s store, on a free port: production's way (gunicorn)."""
        with servers.service(env, log, workers=self.workers) as url:
            yield ServiceRun(url, log, self._full_env(env))

    @staticmethod
    def _full_env(env: dict[str, str]) -> dict[str, str]:
        """What servers.service gives the service, for helpers that must see the same store."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("MONGO_")}, **env}


class GranianRun(ServiceRun):
    """The service on granian, whose workers each listen on a socket of their own (SO_REUSEPORT) while
    its main process listens on none: the tree to watch is the main process's, not a listener's."""

    def __init__(self, url: str, log: Path, env: dict[str, str], main: int):
        super().__init__(url, log, env)
        self.main = main

    def root(self) -> psutil.Process:
        return psutil.Process(self.main)


class GranianService(Service):
    """The service on granian's WSGI server instead of gunicorn (issue 17): bench/serve_granian.py
    runs `manage.py serve` up to its exec of gunicorn, then granian with serve's address and counts."""

    @contextmanager
    def serve(self, env: dict[str, str], log: Path) -> Iterator[ServiceRun]:
        port = servers.free_port()
        argv = [sys.executable, "-m", "bench.serve_granian", "--bind", f"127.0.0.1:{port}"]
        argv += ["--workers", str(self.workers)]
        # The workers' metrics go to shared memory, as serve puts them for gunicorn, but in a directory
        # named here: gunicorn's on_exit hook removes serve's own (imageservice/gunicorn_conf.py), and
        # granian runs no such hook.
        metrics = tempfile.mkdtemp(
            prefix=METRICS_DIR_PREFIX, dir=SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
        )
        full_env = self._full_env(env)
        url = f"http://127.0.0.1:{port}"
        try:
            with servers.running(
                argv, log, cwd=ROOT, env={**full_env, "PROMETHEUS_MULTIPROC_DIR": metrics}
            ) as proc:
                wait_for_http(url + "/images?limit=1", proc, log, self.name)
                yield GranianRun(url, log, full_env, proc.pid)
        finally:
            shutil.rmtree(metrics, ignore_errors=True)


# The servers the service can be measured on (`bench/run.py --servers`); gunicorn is production's.
SERVICE_SERVERS: dict[str, type[Service]] = {"gunicorn": Service, "granian": GranianService}


class NaiveFlask(System):
    """bench/peers/naive_flask.py on gunicorn, against a fresh database on the same MongoDB."""

    kind = "naive"
    endpoints = frozenset(UploadRun.PATHS)

    @contextmanager
    def start(self, workdir: Path, env: dict[str, str], logs: Path) -> Iterator[Run]:
        port = servers.free_port()
        log = logs / f"{self.slug}.log"
        with self.mongo_database() as db:
            full_env = {**os.environ, **env, "BENCH_MONGO_URI": self.mongo_uri, "BENCH_MONGO_DB": db}
            argv = gunicorn_argv("bench.peers.naive_flask:app", port, self.workers)
            with servers.running(argv, log, cwd=ROOT, env=full_env) as proc:
                url = f"http://127.0.0.1:{port}"
                wait_for_http(url + "/", proc, log, self.name)
                yield UploadRun(url, log)


class BareDjango(System):
    """bench/peers/bare_django.py on gunicorn: `FileResponse(open(path))` and nothing else."""

    kind = "bare-django"
    endpoints = frozenset({"by_id"})

    @contextmanager
    def start(self, workdir: Path, env: dict[str, str], logs: Path) -> Iterator[Run]:
        port = servers.free_port()
        files = workdir / "files"
        files.mkdir(parents=True, exist_ok=True)
        log = logs / f"{self.slug}.log"
        full_env = {
            **os.environ,
            **env,
            "BENCH_FILES_DIR": str(files),
            "DJANGO_SETTINGS_MODULE": "bench.peers.bare_django",
        }
        argv = gunicorn_argv("bench.peers.bare_django:application", port, self.workers)
        with servers.running(argv, log, cwd=ROOT, env=full_env) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(url + "/", proc, log, self.name)
            yield FilesRun(url, log, files)


NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    types {{ image/jpeg jpg; }}
    default_type application/octet-stream;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{ alias {files}/; }}
    }}
}}
"""


class Nginx(System):
    """Debian's nginx serving the same files from disk with sendfile: the ceiling for bytes."""

    kind = "nginx"
    endpoints = frozenset({"by_id"})

    @contextmanager
    def start(self, workdir: Path, env: dict[str, str], logs: Path) -> Iterator[Run]:
        port = servers.free_port()
        files = workdir / "files"
        files.mkdir(parents=True, exist_ok=True)
        for path in (workdir, files):
            path.chmod(0o755)  # nginx's workers run as an unprivileged user when started as root
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=self.workers, dir=workdir, port=port, files=files))
        log = logs / f"{self.slug}.log"
        with servers.running(["nginx", "-c", str(conf), "-p", str(workdir)], log) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(url + "/", proc, log, self.name)
            yield FilesRun(url, log, files)


class CachedServiceRun(ServiceRun):
    """The service behind nginx: each stored image is then asked for until nginx's cache has it."""

    def store(self, key: str, file: Path) -> None:
        super().store(key, file)
        url = self.url + self.PATHS["by_id"].format(id=self.ids[key])
        for _ in range(3):
            if requests.get(url, timeout=30).headers.get("X-Cache-Status") == "HIT":
                return
        raise RuntimeError(f"nginx's cache never answered {url}")


class NginxCache(Service):
    """The scale-out topology (docker-compose.yml) without containers: two instances on one MongoDB,
    behind nginx running deploy/nginx.conf (tests/topology.py), measured with nginx's cache warm."""

    kind = "nginx-cache"
    endpoints = frozenset({"by_id"})
    mode = "scaleout"  # its own targets (matrix.TARGETS), not the service's

    @contextmanager
    def start(self, workdir: Path, env: dict[str, str], logs: Path) -> Iterator[Run]:
        from tests import topology

        nginx = topology.ensure_programs("nginx")["nginx"]
        env = {**self.ENV, **env, "NUM_PROXIES": "1", "MONGO_URI": str(self.mongo_uri)}
        with self.mongo_database() as db:
            env["MONGO_DB"] = db
            instances = [{**env, "DATA_DIR": str(workdir / f"data-{n}")} for n in (1, 2)]
            with (
                servers.service(instances[0], logs / f"{self.slug}-1.log", workers=self.workers) as one,
                servers.service(instances[1], logs / f"{self.slug}-2.log", workers=self.workers) as two,
                topology.nginx(
                    nginx,
                    (topology.upstream_address(one), topology.upstream_address(two)),
                    int(env.get("MAX_REQUEST_MB") or int(env.get("MAX_UPLOAD_MB", "25")) + 1),
                    logs / self.slug,
                ) as proxy,
            ):
                yield CachedServiceRun(proxy.url, proxy.error_log, self._full_env(instances[0]))
