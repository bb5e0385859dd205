#!/usr/bin/env python3
"""Issue 7's benchmark: `python bench/run.py [--quick]` measures the whole matrix and writes bench/out/.

It installs what it needs first (bench/requirements.txt into .venv, Debian's nginx and wrk, FerretDB
through scripts/install-ferretdb), so it runs on a fresh machine. Everything listens on 127.0.0.1 and
every load is bounded in time. It is no part of the test suite.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
REQUIREMENTS = ROOT / "bench" / "requirements.txt"
STAMP = ROOT / ".venv" / ".installed-bench-requirements.txt"


def bootstrap(tools: tuple[str, ...] = ("nginx", "wrk")) -> None:
    """Puts the bench's dependencies in place (its pip requirements and the Debian `tools`), then
    re-runs this script in .venv if it isn't there."""
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ROOT / ".venv")], check=True)
    wanted = (ROOT / "requirements.txt").read_text() + REQUIREMENTS.read_text()
    if not STAMP.exists() or STAMP.read_text() != wanted:
        pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        STAMP.write_text(wanted)
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"bench: needs {' '.join(missing)}: apt-get install -y {' '.join(missing)}")
        quiet = {"stdout": subprocess.DEVNULL, "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
        subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, **quiet)
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: the whole matrix in under 5 min")
    parser.add_argument("--profile", action="store_true", help="also sample the service with py-spy")
    parser.add_argument("--workers", type=int, default=2, help="workers for every server (default 2)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words: run only the groups and/or systems whose names contain one",
    )
    parser.add_argument(
        "--servers",
        default="gunicorn",
        help="comma-separated WSGI servers to run the service on (default gunicorn, production's);\n"
        "granian adds rows such as 'service embedded on granian' (bench/serve_granian.py)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="(default bench/out)")
    return parser.parse_args()


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" plus uncommitted changes to tracked files" if dirty else "")


def versions(ferretdb: str | None, servers: list[str]) -> str:
    from importlib.metadata import version

    import django
    import gunicorn

    def first_line(*argv: str) -> str:
        out = subprocess.run(argv, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0]

    parts = [
        f"Python {platform.python_version()}",
        f"Django {django.__version__}",
        f"gunicorn {gunicorn.__version__}",
        *(f"{name} {version(name)}" for name in servers if name != "gunicorn"),
        first_line("nginx", "-v"),
        first_line("wrk", "-v").split(" Copyright")[0],
    ]
    if ferretdb:
        parts.append(f"FerretDB {first_line(ferretdb, '--version').removeprefix('version: ')}")
    return ", ".join(parts)


def install_ferretdb() -> str:
    """The path of the FerretDB binary that scripts/install-ferretdb builds once and caches."""
    built = subprocess.run(["scripts/install-ferretdb"], cwd=ROOT, capture_output=True, text=True, check=True)
    return built.stdout.strip()


def main() -> None:
    bootstrap()
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    import psutil

    from bench import matrix, report, runner, systems

    servers = [name for name in args.servers.split(",") if name]
    if not servers or any(name not in systems.SERVICE_SERVERS for name in servers):
        sys.exit(f"bench: --servers takes a comma-separated list of {', '.join(systems.SERVICE_SERVERS)}")
    on = [(systems.SERVICE_SERVERS[name], "" if name == "gunicorn" else f" on {name}") for name in servers]

    started = time.monotonic()
    say = lambda message: print(message, flush=True)  # noqa: E731
    settings = (
        runner.Settings(seconds=2, warmup=1, repeats=1, probes=1, profile=args.profile)
        if args.quick
        else runner.Settings(seconds=10, warmup=2, repeats=3, probes=2, profile=args.profile)
    )
    ferretdb = None
    try:
        ferretdb = install_ferretdb()
    except (OSError, subprocess.CalledProcessError) as exc:
        say(f"bench: FerretDB is not available ({exc}); mongo mode runs only with MONGO_TEST_URI")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workers = args.workers
    with mongo_servers(ferretdb, out) as mongos:
        chosen = [
            *(service(f"service embedded{suffix}", "embedded", workers) for service, suffix in on),
            *(
                service(f"service mongo/{name}{suffix}", name, workers, uri)
                for name, uri in mongos
                for service, suffix in on
            ),
            systems.Nginx("nginx", "disk", workers),
            *(systems.NginxCache(f"nginx cache/{name}", name, workers, uri) for name, uri in mongos[:1]),
            systems.BareDjango("bare django", "disk", workers),
            *(systems.NaiveFlask(f"naive flask/{name}", name, workers, uri) for name, uri in mongos),
        ]
        groups = matrix.GROUPS
        if words := [word for word in args.only.split(",") if word]:
            groups = tuple(g for g in groups if any(word in g.name for word in words)) or groups
            chosen = [s for s in chosen if any(word in s.name for word in words)] or chosen
        # FerretDB runs on this machine for the benchmark: its CPU is ours, not other processes'.
        helpers = (systems.server_root(int(mongos[0][1].rstrip("/").rsplit(":", 1)[1])),) if ferretdb else ()
        results = runner.Matrix(chosen, settings, out, say, helpers).run(groups)

    header = {
        "commit": git_commit(),
        "cores": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "run": (
            f"{'--quick' if args.quick else 'full'}: {workers} workers per server, wrk {settings.seconds:g}s "
            f"after a {settings.warmup:g}s warm-up, median of {settings.repeats}; probes "
            f"{settings.probes} request(s)"
        ),
        "software": versions(ferretdb, servers),
        "others' CPU": others_cpu(results),
        "took": f"{time.monotonic() - started:.0f}s",
    }
    printed, path = report.write(results, header, out, out / "profiles" if args.profile else None)
    say("\n" + printed)
    say(f"\nReport: {path}; charts in {out / 'charts'}")


def others_cpu(results: list) -> str:
    """How busy other processes kept the machine while the rows were measured."""
    shares = sorted(r.others_cpu for r in results if r.load)
    if not shares:
        return "n/a"
    verdict = "quiet" if shares[-1] < 0.1 else "BUSY: compare rows with care"
    return (
        f"median {100 * shares[len(shares) // 2]:.0f}%, max {100 * shares[-1]:.0f}% of all cores "
        f"used by processes outside the benchmark ({verdict})"
    )


@contextmanager
def mongo_servers(ferretdb: str | None, out: Path) -> Iterator[list[tuple[str, str]]]:
    """The MongoDB-compatible servers mongo mode runs on: FerretDB, and MONGO_TEST_URI's if set.

    FerretDB's data goes when the run ends; its log stays in bench/out/logs.
    """
    from tests import servers

    with ExitStack() as stack:
        mongos = []
        if ferretdb:
            data = out / "ferretdb"
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            stack.callback(shutil.rmtree, data, ignore_errors=True)
            stack.callback(keep_log, data / "ferretdb.log", out / "logs" / "ferretdb.log")
            mongos.append(("ferretdb", stack.enter_context(servers.ferretdb(Path(ferretdb), data))))
        if uri := os.environ.get("MONGO_TEST_URI"):
            mongos.append(("mongodb", uri))
        yield mongos


def keep_log(log: Path, to: Path) -> None:
    if log.exists():
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, to)


if __name__ == "__main__":
    main()
