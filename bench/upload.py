#!/usr/bin/env python3
"""Where an 18 KB upload's time goes: `python bench/upload.py [--mode embedded|mongo] [--seed N]
[--uri URI]`, results in bench/out/upload-<mode>.md.

The service runs in this process (Django's test client, no HTTP, so no server or client CPU) on a
fresh store: `--seed` uploads of different 18 KB JPEGs first (600 by default; FerretDB's scans grow
with them), then 200 more, timed, and 200 posts that the form refuses (a bad model_id: the framework,
the multipart parser and the error answer alone). Each step of an upload is timed, CPU and wall
clock, by wrapping the function that does it.

In Mongo mode, pymongo's CommandListener also times each command of the timed uploads, by name and
collection; then the naive peer's writer (pymongo's `GridFS.put`, as bench/peers/naive_flask.py
stores an upload) puts the same images into another database of the same server, timed the same way.
Without `--uri` it starts FerretDB (SQLite handler) from scripts/install-ferretdb, as bench/run.py
does; `--uri` measures another server. Everything listens on 127.0.0.1.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TIMED = 200


class Commands:
    """A CommandListener's record of each command's duration, by (command, collection), while on."""

    def __init__(self) -> None:
        self.durations: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        self.pending: dict[int, tuple[str, str]] = {}
        self.on = False

    def started(self, event) -> None:
        target = event.command.get(event.command_name)
        self.pending[event.request_id] = (event.command_name, target if isinstance(target, str) else "")

    def succeeded(self, event) -> None:
        key = self.pending.pop(event.request_id, None)
        if key is not None and self.on:
            self.durations[key].append(event.duration_micros / 1000)

    def failed(self, event) -> None:
        self.pending.pop(event.request_id, None)


class Steps:
    """CPU and wall time spent in chosen functions, by label: each is wrapped in place."""

    def __init__(self) -> None:
        self.spent: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[label][0] += time.process_time() - cpu
                self.spent[label][1] += time.perf_counter() - wall

        setattr(owner, name, timed)


def measure(run, count: int, steps: Steps, commands: Commands | None) -> dict:
    """Runs `run(n)` for n in range(count): CPU and wall ms per call, and the steps and commands."""
    steps.spent.clear()
    if commands is not None:
        commands.durations.clear()
        commands.on = True
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(count):
        run(n)
    result = {
        "cpu": (time.process_time() - cpu) * 1000 / count,
        "wall": (time.perf_counter() - wall) * 1000 / count,
        "steps": {label: (c * 1000 / count, w * 1000 / count) for label, (c, w) in steps.spent.items()},
        "commands": dict(commands.durations) if commands is not None else {},
    }
    if commands is not None:
        commands.on = False
    return result


def steps_table(title: str, result: dict) -> list[str]:
    lines = [f"### {title}: {result['cpu']:.2f} ms CPU, {result['wall']:.2f} ms wall per request", ""]
    if result["steps"]:
        lines += ["| step | CPU ms | wall ms |", "|---|---|---|"]
    for label, (cpu, wall) in result["steps"].items():
        lines.append(f"| {label} | {cpu:.2f} | {wall:.2f} |")
    return [*lines, ""]


def commands_table(title: str, result: dict) -> list[str]:
    spent = sum(sum(times) for times in result["commands"].values()) / TIMED
    lines = [
        f"### {title}: {spent:.1f} ms in commands, of {result['wall']:.1f} ms per upload",
        "",
        "| command | collection | per upload | median ms | ms per upload |",
        "|---|---|---|---|---|",
    ]
    for (name, collection), times in sorted(result["commands"].items(), key=lambda kv: -sum(kv[1])):
        lines.append(
            f"| {name} | {collection} | {len(times) / TIMED:g} | {statistics.median(times):.2f} | "
            f"{sum(times) / TIMED:.2f} |"
        )
    return [*lines, ""]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import bootstrap, install_ferretdb

    bootstrap(tools=())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["embedded", "mongo"], default="mongo")
    parser.add_argument("--seed", type=int, default=600, help="uploads before the timed ones (default 600)")
    parser.add_argument("--uri", help="Mongo mode: a running server's URI (default: start FerretDB)")
    args = parser.parse_args()

    from pymongo import MongoClient, monitoring

    from bench.derivatives import copies
    from bench.samples import sample
    from tests.servers import ferretdb

    commands = None
    if args.mode == "mongo":

        class Listener(Commands, monitoring.CommandListener):
            """pymongo takes only its own listeners' subclasses (and is imported after bootstrap)."""

        commands = Listener()
        monitoring.register(commands)  # before any client exists, so that every client reports to it
    images = copies(sample("hot", OUT / "samples"), args.seed + TIMED)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-upload-")))
        for key in [k for k in os.environ if k.startswith("MONGO_")]:
            del os.environ[key]
        uri = args.uri
        if args.mode == "mongo" and uri is None:
            uri = stack.enter_context(ferretdb(Path(install_ferretdb()), work / "ferretdb"))
        if args.mode == "mongo":
            os.environ |= {"MONGO_URI": uri, "MONGO_DB": f"bench_upload_{os.getpid()}"}
        os.environ |= {
            "DATA_DIR": str(work / "data"),
            "DJANGO_SETTINGS_MODULE": "imageservice.settings",
            "ALLOWED_HOSTS": "*",
            "THROTTLE_UPLOAD": "",
            "LOG_LEVEL": "WARNING",
        }
        import django

        django.setup()
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django.core.management import call_command
        from django.test import Client

        from images import documents, services, storage, views

        call_command("migrate", verbosity=0)
        client = Client()

        def post(n: int, model_id: str, expected: int) -> None:
            file = SimpleUploadedFile(f"{n}.jpg", images[n], "image/jpeg")
            response = client.post("/upload", {"model_id": model_id, "file": file})
            assert response.status_code == expected, response.content

        for n in range(args.seed):
            post(n, "bench-upload", 201)
        steps = Steps()  # wrapped after the seeding, which they would only slow down
        steps.wrap(services, "add_image", "add_image, all of it")
        steps.wrap(services, "check_image", "the check: sha256, type, decode")
        for cls in (documents.SQLDocuments, documents.MongoDocuments):
            steps.wrap(cls, "find", "the model's record of these bytes?")
            steps.wrap(cls, "insert", "the record's insert")
        for cls in (storage.BlobFileSystemStorage, storage.GridFSStorage):
            steps.wrap(cls, "pin", "the pin (and whether the blob exists)")
            steps.wrap(cls, "save_new", "the blob's write")
        steps.wrap(views.ImageViewSet, "_json", "the answer's metadata")
        uploads = measure(lambda n: post(args.seed + n, "bench-upload", 201), TIMED, steps, commands)
        refused = measure(lambda n: post(n, "not a model id", 400), TIMED, steps, None)

        naive = None
        if args.mode == "mongo":
            import gridfs

            database = MongoClient(uri)[f"bench_upload_naive_{os.getpid()}"]
            fs = gridfs.GridFS(database)
            for n in range(args.seed):
                fs.put(images[n], filename=f"{n}.jpg", model_id="bench-upload")
            naive = measure(
                lambda n: fs.put(images[args.seed + n], filename=f"{n}.jpg", model_id="bench-upload"),
                TIMED,
                Steps(),
                commands,
            )
            database.client.drop_database(database.name)
            database.client.drop_database(os.environ["MONGO_DB"])

    server = {
        "embedded": "embedded mode (SQLite and files)",
        "mongo": "Mongo mode, " + ("the server at --uri" if args.uri else "FerretDB (SQLite handler)"),
    }[args.mode]
    lines = [
        f"# An 18 KB upload, step by step: {server}",
        "",
        f"{args.seed:,} uploads first, then {TIMED} timed, of different 18 KB JPEGs, in-process.",
        "",
        *steps_table("POST /upload, stored (201)", uploads),
        *steps_table("POST /upload, refused by the form (400)", refused),
    ]
    if naive is not None:
        lines += [
            *commands_table("service: the commands of those uploads", uploads),
            *commands_table("naive peer: GridFS.put of the same images", naive),
        ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"upload-{args.mode}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
