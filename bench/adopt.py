#!/usr/bin/env python3
"""Issue 14's measurement: `python bench/adopt.py [--quick | --count N]`, results in bench/out/adopt.md.

N legacy records of about 20 KB (10,000; --quick 1,000), each a different JPEG (the same noise pixels
with a numbered comment, as bench/derivatives.py makes them), are written the way the Flask service
wrote them (pymongo's GridFS.put, then insert_one into `images`) into a fresh database on FerretDB.
Then, in the same run:

1. `manage.py adopt_legacy --json` adopts them in place: records/s over its whole run (start-up
   included) and the command's peak RSS.
2. The same N images are re-uploaded through `POST /upload` to `manage.py serve` (2 workers, 4
   clients) on another fresh database: uploads/s and the workers' peak RSS.

Target (issue 14): adoption at least 5x the re-upload rate. It installs bench/requirements.txt as
bench/run.py does; FerretDB comes from scripts/install-ferretdb. Everything listens on 127.0.0.1.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORKERS, CLIENTS = 2, 4


def write_legacy(db, images: list[bytes]) -> None:
    """The Flask service's writer, one upload at a time."""
    import gridfs

    fs = gridfs.GridFS(db)
    for n, data in enumerate(images):
        file_id = fs.put(data, filename=f"photo{n}.jpg")
        db.images.insert_one(
            {"image_id": str(file_id), "model_id": f"model{n % 500}", "filename": f"photo{n}.jpg"}
        )


def adopt(env: dict) -> dict:
    from bench.derivatives import PeakRss

    started = time.monotonic()
    argv = [sys.executable, "manage.py", "adopt_legacy", "--json"]
    run = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRss(run.pid) as peak:
        out, err = run.communicate()
    seconds = time.monotonic() - started
    if run.returncode != 0:
        sys.exit(f"adopt_legacy failed ({run.returncode}): {err[-2000:]}")
    summary = json.loads(out)
    return {
        "seconds": seconds,
        "records": summary["adopted"],
        "peak_rss_mb": peak.tree_mb,
        "summary": summary,
    }


def upload(env: dict, images: list[bytes]) -> dict:
    from bench.derivatives import PeakRss, free_port, load, wait_http

    port = free_port()
    argv = [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)]
    service = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")

        def send(session, i: int):
            files = {"file": (f"photo{i}.jpg", images[i], "image/jpeg")}
            form = {"model_id": f"model{i % 500}"}
            return session.post(f"{base}/upload", files=files, data=form, timeout=120)

        with PeakRss(service.pid) as peak:
            result = load(images, CLIENTS, send=send)
        result["peak_worker_mb"] = peak.worker_mb
        return result
    finally:
        service.terminate()
        service.wait(20)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import bootstrap, install_ferretdb

    bootstrap(tools=())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 records instead of 10,000")
    parser.add_argument("--count", type=int, help="this many records")
    args = parser.parse_args()
    count = args.count or (1_000 if args.quick else 10_000)

    import pymongo

    from bench.derivatives import copies
    from bench.samples import sample
    from tests.servers import ferretdb

    images = copies(sample("hot", OUT / "samples"), count)
    binary = Path(install_ferretdb())
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MONGO_")}
    base_env |= {"THROTTLE_UPLOAD": "", "LOG_LEVEL": "WARNING"}
    OUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-adopt-") as work,
        ferretdb(binary, Path(work) / "ferretdb") as uri,
    ):
        client = pymongo.MongoClient(uri)
        env = base_env | {"MONGO_URI": uri, "DATA_DIR": str(Path(work) / "data")}
        started = time.monotonic()
        write_legacy(client["flask"], images)
        written = time.monotonic() - started
        print(f"wrote {count} legacy records in {written:.1f} s", flush=True)
        # FerretDB reads a batch's chunks by scanning all of fs.chunks: 12 s at 10,000 records.
        adopted = adopt(env | {"MONGO_DB": "flask", "MONGO_TIMEOUT_MS": "60000"})
        print(f"adopted: {adopted['records'] / adopted['seconds']:.1f} records/s", flush=True)
        uploaded = upload(env | {"MONGO_DB": "uploads"}, images)
        print(f"uploaded: {uploaded['rps']:.1f} uploads/s, errors {uploaded['errors']}", flush=True)
        client.close()

    rate = adopted["records"] / adopted["seconds"]
    lines = [
        f"# adopt_legacy against POST /upload: {count:,} legacy records of about 20 KB, FerretDB",
        "",
        "| | records/s | seconds | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| adopt_legacy, in place | {rate:.1f} | {adopted['seconds']:.1f} | "
        f"{adopted['peak_rss_mb']:.0f} (the command) |",
        f"| POST /upload, {WORKERS} workers, {CLIENTS} clients | {uploaded['rps']:.1f} | "
        f"{uploaded['ok'] / uploaded['rps']:.1f} | {uploaded['peak_worker_mb']:.0f} (a worker) |",
        "",
        f"Ratio: {rate / uploaded['rps']:.2f}x (target 5x). Upload errors: {uploaded['errors']}. "
        f"Writing the legacy data took {written:.1f} s.",
        "",
        "adopt_legacy's summary: "
        + json.dumps({k: v for k, v in adopted["summary"].items() if k != "source"}),
    ]
    (OUT / "adopt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
