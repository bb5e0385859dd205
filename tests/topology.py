"""The scale-out topology's other servers, on loopback: Redis, and nginx running deploy/nginx.conf.

docker-compose.yml runs them in containers; Docker cannot run here, so tests/test_scaleout.py and
bench/scaleout.py run the same programs from Debian's packages (scripts/install-system-deps installs
them when missing), each on a free 127.0.0.1 port with its files in a temporary directory.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests import servers

NGINX_TEMPLATE = servers.ROOT / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{(NGINX_[A-Z0-9_]+)\}")
INSTALLER = servers.ROOT / "scripts" / "install-system-deps"


class MissingPrograms(RuntimeError):
    """nginx or redis-server is not installed, and could not be installed."""


def find_program(name: str) -> Path | None:
    """`name` on PATH, or in the sbin directories a non-root PATH leaves out (Debian's nginx)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    return Path(found) if found else None


def ensure_programs(*names: str) -> dict[str, Path]:
    """The programs' paths; when one is missing, scripts/install-system-deps runs first (as root)."""
    found = {name: find_program(name) for name in names}
    if None in found.values():
        subprocess.run([str(INSTALLER)], check=False, timeout=900)
        found = {name: find_program(name) for name in names}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        raise MissingPrograms(
            f"{', '.join(missing)} not installed: run scripts/install-system-deps as root "
            f"(apt-get install -y {' '.join(missing)})"
        )
    return {name: path for name, path in found.items() if path is not None}


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def nginx_conf(values: dict[str, str]) -> str:
    """deploy/nginx.conf with each ${NGINX_...} filled in, as the nginx image's envsubst step does."""
    text = NGINX_TEMPLATE.read_text()
    unfilled = sorted(set(PLACEHOLDER.findall(text)) - values.keys())
    if unfilled:
        raise KeyError(f"deploy/nginx.conf needs {', '.join(unfilled)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


@contextmanager
def redis_server(binary: Path, data_dir: Path) -> Iterator[str]:
    """Redis with no persistence; yields its redis:// URL (database 0)."""
    port = servers.free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
    ]  # fmt: skip
    with servers.running(argv, data_dir / "redis.log"):
        servers.wait_until(lambda: listening(port), 30, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"


@dataclass(frozen=True)
class Proxy:
    """A running nginx: its URL, and its logs (access.log, JSON lines; nginx.log, its errors)."""

    url: str
    logs: Path

    @property
    def access_log(self) -> Path:
        return self.logs / "access.log"

    @property
    def error_log(self) -> Path:
        return self.logs / "nginx.log"


@contextmanager
def nginx(
    binary: Path, upstreams: tuple[str, str], max_body_mb: int, logs: Path, cache_size: str = "1g"
) -> Iterator[Proxy]:
    """nginx with deploy/nginx.conf in front of two instances (`host:port` each); yields it."""
    # Its cache and temporary files are not under pytest's 0700 tmp_path: started as root, nginx's
    # workers run as `nobody`. Its logs may be: the master opens them before it drops privileges.
    state = Path(tempfile.mkdtemp(prefix="imageservice-nginx-"))
    state.chmod(0o755)
    logs.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    conf = state / "nginx.conf"
    conf.write_text(
        nginx_conf(
            {
                "NGINX_LISTEN": f"127.0.0.1:{port}",
                "NGINX_UPSTREAM_1": upstreams[0],
                "NGINX_UPSTREAM_2": upstreams[1],
                "NGINX_STATE_DIR": str(state),
                "NGINX_LOG_DIR": str(logs),
                "NGINX_MAX_BODY_MB": str(max_body_mb),
                "NGINX_CACHE_MAX_SIZE": cache_size,
            }
        )
    )
    proxy = Proxy(f"http://127.0.0.1:{port}", logs)
    argv = [str(binary), "-p", str(state), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    try:
        with servers.running(argv, proxy.error_log) as proc:

            def up() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {proxy.error_log.read_text()}")
                return listening(port)

            servers.wait_until(up, 30, "nginx")
            yield proxy
    finally:
        shutil.rmtree(state, ignore_errors=True)


def listeners(port: int) -> list[int]:
    """The processes holding the socket that listens on 127.0.0.1:`port` (gunicorn: master and
    workers), found through /proc (Linux)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 127.0.0.1, LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return pids


def upstream_address(url: str) -> str:
    """`http://127.0.0.1:8000` -> `127.0.0.1:8000`."""
    return url.split("://", 1)[1].rstrip("/")
