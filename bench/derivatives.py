#!/usr/bin/env python3
"""Issue 4's measurements: `python bench/derivatives.py [--quick]`, results in bench/out/derivatives.md.

1. The engine: Pillow (our images.derivatives.render, with JPEG DCT scaling) against pyvips
   (libvips from the pyvips-binary wheel), on the same 12 MP and 48 MP JPEGs, each made into a
   256 px WebP, one at a time in a fresh process: p50/p99 latency and the process's peak RSS. And
   Pillow from the base that an upload stores (what the service really does).
2. The server: the service (embedded mode, `manage.py serve`, 2 workers) against thumbor (from
   PyPI, `--processes 2`), making 256 px WebPs from 12 MP and from 48 MP JPEGs. Every request is for
   a different original (same pixels, different bytes), so neither can answer from any cache, nor
   share a decode between requests. The service's uploads are measured too, since they make the
   base. Then one URL again and again: the cached derivative, and its bytes uploaded as an original
   (a cached derivative should be served as fast as an original).

It installs bench/requirements.txt into .venv first, as bench/run.py does. thumbor and pyvips live
in virtualenvs of their own under bench/out/ (thumbor pins an older Pillow).
Everything listens on 127.0.0.1; every load is bounded by count and time.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
VENVS = {
    "thumbor": ["thumbor==7.8.0"],
    "vips": ["pyvips-binary==8.18.7", "pyvips==3.2.0"],
}
WORKERS = 2


def venv_python(name: str) -> Path:
    """A virtualenv of its own for a peer, made once."""
    path = OUT / f"venv-{name}"
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VENVS[name]], check=True)
    return python


def photo(megapixels: int, path: Path) -> Path:
    """A JPEG with photo-like detail (a fractal plus noise), made once."""
    if path.exists():
        return path
    from PIL import Image, ImageFilter

    width = int((megapixels * 1_000_000 * 4 / 3) ** 0.5)
    height = megapixels * 1_000_000 // width
    fractal = Image.effect_mandelbrot((width // 4, height // 4), (-2.2, -1.2, 0.8, 1.2), 64).convert("RGB")
    im = fractal.resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    im = Image.blend(im, noise, 0.25).filter(ImageFilter.DETAIL)
    im.save(path, "JPEG", quality=90)
    return path


# --- 1. engines, in fresh processes -------------------------------------------------------------

ENGINE_RUN = r"""
import io, json, os, sys, time
path, runs, engine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(path, "rb").read()
if engine.startswith("pillow"):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imageservice.settings")
    import django; django.setup()
    from images.derivatives import BASE_SIDE, Spec, base_bytes, render
    from images.validation import inspect_image
    spec = Spec(256, 256, "contain", "webp", 80)
    if engine == "pillow-base":  # what the upload stored beside the original
        data = base_bytes(inspect_image(io.BytesIO(data), keep_side=BASE_SIDE).preview)
    make = lambda: render(io.BytesIO(data), spec, ["JPEG"])
else:
    import pyvips
    make = lambda: pyvips.Image.thumbnail_buffer(data, 256, height=256).write_to_buffer(".webp[Q=80]")
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on: making derivatives only
times = []
for _ in range(runs):
    t = time.perf_counter(); out = make(); times.append(time.perf_counter() - t)
status = open("/proc/self/status").read()
rss = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"times": times, "peak_rss_mb": rss, "bytes": len(out)}))
"""


def engine(python: Path, image: Path, runs: int, name: str) -> dict:
    result = subprocess.run(
        [str(python), "-c", ENGINE_RUN, str(image), str(runs), name],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": tempfile.mkdtemp(), "LOG_LEVEL": "ERROR"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- 2. servers ----------------------------------------------------------------------------------


def load(urls: list[str], connections: int, seconds: float | None = None, send=None) -> dict:
    """Closed-loop load from `connections` clients: each URL exactly once (seconds=None: every
    answer is a first, uncached one), or the URLs round and round for `seconds`. `send(session,
    i)` replaces the GET of urls[i]."""
    import requests

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    index = iter(range(len(urls) if seconds is None else 10**9))
    deadline = time.monotonic() + (seconds or 600)

    def client() -> None:
        nonlocal errors
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                i = next(index, None)
            if i is None:
                return
            started = time.perf_counter()
            if send:
                response = send(session, i % len(urls))
            else:
                response = session.get(urls[i % len(urls)], headers={"Accept": "image/webp"}, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                if response.status_code in (200, 201) and response.content:
                    latencies.append(elapsed)
                else:
                    errors += 1

    started = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        for _ in range(connections):
            pool.submit(client)
    wall = time.monotonic() - started
    return {
        "rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
        "ok": len(latencies),
        "errors": errors,
    }


class PeakRss:
    """Samples a process tree every 50 ms: the largest RSS of any one process below the root (a
    worker) and of the whole tree."""

    def __init__(self, pid: int):
        import psutil

        self.root, self.worker_mb, self.tree_mb = psutil.Process(pid), 0.0, 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        import psutil

        while not self.done.wait(0.05):
            try:
                workers = [p.memory_info().rss / 2**20 for p in self.root.children(recursive=True)]
                tree = self.root.memory_info().rss / 2**20 + sum(workers)
            except psutil.Error:
                continue
            self.worker_mb = max(self.worker_mb, *workers, 0.0)
            self.tree_mb = max(self.tree_mb, tree)

    def __enter__(self) -> "PeakRss":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.thread.join()


def wait_http(url: str, seconds: float = 60) -> None:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError(url)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copies(image: Path, count: int) -> list[bytes]:
    """`count` different originals with the same pixels: the JPEG with a numbered comment segment
    after its SOI marker, so that every one has its own sha256 and nothing is shared between them."""
    data = image.read_bytes()
    comments = (f"bench copy {n}".encode() for n in range(count))
    return [data[:2] + b"\xff\xfe" + (len(c) + 2).to_bytes(2, "big") + c + data[2:] for c in comments]


def servers(image: Path, distinct: int, seconds: float, connections: int) -> dict:
    """Each system makes one 256 px WebP from each of `distinct` different originals: every answer is
    the first derivative of an original that nobody asked about before."""
    import requests

    results: dict = {}
    originals = copies(image, distinct)
    work = Path(tempfile.mkdtemp(prefix="bench-derivatives-"))
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(work / "data"), "THROTTLE_UPLOAD": "", "LOG_LEVEL": "WARNING",
           "MAX_IMAGE_PIXELS": "60000000", "MAX_UPLOAD_MB": "64", "DERIVATIVE_TIMEOUT": "60"}  # fmt: skip
    env.pop("MONGO_URI", None)
    service = subprocess.Popen(
        [str(ROOT / ".venv/bin/python"), "manage.py", "serve", "--bind", f"127.0.0.1:{port}",
         "--workers", str(WORKERS)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        image_ids: list[str] = [""] * distinct

        def send(session, i: int):
            files = {"file": (f"copy{i}.jpg", originals[i], "image/jpeg")}
            form = {"model_id": f"bench{i}"}
            response = session.post(f"{base}/upload", files=files, data=form, timeout=120)
            image_ids[i] = response.json().get("image_id", "")
            return response

        with PeakRss(service.pid) as peak:
            results["service upload (stores the base)"] = load(originals, connections, send=send)
        results["service upload (stores the base)"]["peak_worker_mb"] = peak.worker_mb
        uncached = [f"{base}/images/{image_id}/content?w=256&format=webp" for image_id in image_ids]
        with PeakRss(service.pid) as peak:
            results["service uncached"] = load(uncached, connections)
        results["service uncached"]["peak_worker_mb"] = peak.worker_mb
        results["service cached"] = load(uncached[:1], connections, seconds)
        # The same bytes uploaded as an original: a cached derivative should be served as fast.
        thumb = requests.get(uncached[0], headers={"Accept": "image/webp"}, timeout=60).content
        files = {"file": ("thumb.webp", thumb, "image/webp")}
        stored = requests.post(f"{base}/upload", files=files, data={"model_id": "bench-thumb"}, timeout=60)
        original = f"{base}/images/{stored.json()['image_id']}/content"
        results["service original, the same bytes"] = load([original], connections, seconds)
    finally:
        service.terminate()
        service.wait(20)

    thumbor_port = free_port()
    (work / "files").mkdir()
    for i, data in enumerate(originals):
        (work / "files" / f"copy{i}.jpg").write_bytes(data)
    conf = work / "thumbor.conf"
    conf.write_text(
        f"LOADER = 'thumbor.loaders.file_loader'\nFILE_LOADER_ROOT_PATH = '{work / 'files'}'\n"
        "RESULT_STORAGE = 'thumbor.result_storages.no_storage'\nSTORAGE = 'thumbor.storages.no_storage'\n"
        "MAX_WIDTH = 0\nMAX_HEIGHT = 0\nALLOW_UNSAFE_URL = True\n"
    )
    thumbor = subprocess.Popen(
        [str(venv_python("thumbor").parent / "thumbor"), "-p", str(thumbor_port), "-i", "127.0.0.1",
         "-c", str(conf), "--processes", str(WORKERS), "-l", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{thumbor_port}"
        wait_http(f"{base}/healthcheck")
        urls = [f"{base}/unsafe/fit-in/256x256/filters:format(webp)/copy{i}.jpg" for i in range(distinct)]
        with PeakRss(thumbor.pid) as peak:
            results["thumbor uncached"] = load(urls, connections)
        results["thumbor uncached"]["peak_worker_mb"] = peak.worker_mb
    finally:
        thumbor.terminate()
        thumbor.wait(20)
    shutil.rmtree(work)
    return results


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import bootstrap

    bootstrap(tools=())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and shorter loads")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs, distinct, seconds = (5, {12: 40, 48: 12}, 10) if args.quick else (20, {12: 100, 48: 30}, 30)
    images = {mp: photo(mp, OUT / f"photo-{mp}mp.jpg") for mp in (12, 48)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        "# Derivatives: engines and servers",
        "",
        f"`python bench/derivatives.py{' --quick' if args.quick else ''}`, {os.cpu_count()} cores, "
        f"commit {commit.stdout.strip()}.",
        "",
        "## Engines: a JPEG to a 256 px WebP, one at a time, in a fresh process",
        "",
        "`pillow-base` starts from the base that the upload stored beside the original (see",
        "images/derivatives.py), the others from the original. Peak RSS: while making derivatives.",
        "",
        "| source | engine | p50 ms | p99 ms | peak RSS MB | output bytes |",
        "|---|---|---|---|---|---|",
    ]
    engines = [("pillow", ROOT / ".venv/bin/python"), ("pillow-base", ROOT / ".venv/bin/python")]
    for mp, image in images.items():
        for name, python in [*engines, ("pyvips", venv_python("vips"))]:
            r = engine(python, image, runs, name)
            lines.append(
                f"| {mp} MP ({image.stat().st_size // 1024} KiB) | {name} | "
                f"{percentile(r['times'], 50) * 1000:.0f} | {percentile(r['times'], 99) * 1000:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {r['bytes']} |"
            )
    connections = 4
    all_results = {}
    for mp, image in images.items():
        lines += [
            "",
            f"## Servers: {mp} MP JPEGs to 256 px WebP, {WORKERS} workers each, {connections} connections",
            "",
            f"{distinct[mp]} different originals (the same pixels, each with its own bytes), each asked",
            "for once: every answer is the first derivative of an original nobody asked about before.",
            f"The service's uploads come first (they store the base). Cached: one, for {seconds}s; then",
            "the same bytes uploaded as an original, for as long.",
            "",
            "| system | req/s | p50 ms | p99 ms | errors | peak RSS of a worker MB |",
            "|---|---|---|---|---|---|",
        ]
        results = all_results[f"{mp} MP"] = servers(image, distinct[mp], seconds, connections)
        for name, r in results.items():
            rss = f"{r['peak_worker_mb']:.0f}" if "peak_worker_mb" in r else "-"
            lines.append(
                f"| {name} | {r['rps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {rss} |"
            )
        ratio = results["service uncached"]["rps"] / results["thumbor uncached"]["rps"]
        verdict = "met" if ratio >= 2 else "NOT met"
        lines += ["", f"Uncached throughput, service / thumbor: **{ratio:.2f}x** (target 2x: {verdict})."]
    (OUT / "derivatives.json").write_text(json.dumps(all_results, indent=2))
    report = "\n".join(lines) + "\n"
    (OUT / "derivatives.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
