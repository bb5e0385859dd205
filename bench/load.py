"""Driving load and watching memory: wrk runs, one-request-at-a-time probes, RSS sampling, py-spy.

Every load is bounded in time: wrk by its duration (and a per-request timeout), probes by a request
timeout.
"""

import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

LUA = Path(__file__).resolve().parent / "wrk" / "bench.lua"
REQUEST_TIMEOUT_S = 60


@dataclass
class LoadResult:
    requests: int
    seconds: float
    response_bytes: int
    p50_ms: float
    p99_ms: float
    errors: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(
    url: str,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    upload: Path | None = None,
) -> LoadResult:
    """One wrk run; `upload` makes every request a multipart POST of that JPEG (see wrk/bench.lua)."""
    argv = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_S}s",
        "-s",
        str(LUA),
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    env = dict(os.environ)
    if upload is not None:
        env.update(BENCH_UPLOAD_FILE=str(upload), BENCH_NONCE=uuid.uuid4().hex[:8])
    out = subprocess.run(
        [*argv, url], env=env, capture_output=True, text=True, check=True, timeout=seconds + 90
    ).stdout
    line = next((x for x in out.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    errors = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return LoadResult(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        response_bytes=r["bytes"],
        p50_ms=r["p50_ms"],
        p99_ms=r["p99_ms"],
        errors=errors,
    )


def probe(send: Callable[[], int], count: int) -> LoadResult:
    """`count` requests one after another (for requests too long for wrk's fixed duration).

    `send` makes one request and returns the bytes it moved, or -1 if it failed.
    """
    latencies, received, errors = [], 0, 0
    start = time.monotonic()
    for _ in range(count):
        t0 = time.monotonic()
        size = send()
        latencies.append((time.monotonic() - t0) * 1000)
        if size < 0:
            errors += 1
        else:
            received += size
    seconds = time.monotonic() - start
    latencies.sort()
    return LoadResult(
        requests=count,
        seconds=seconds,
        response_bytes=received,
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[-1],
        errors=errors,
        note=f"{count} sequential request(s)",
    )


def stream_get(url: str) -> int:
    """Downloads `url` without keeping it; returns the bytes received (-1 on a bad status or a broken
    response)."""
    try:
        with requests.get(url, stream=True, timeout=REQUEST_TIMEOUT_S) as response:
            if response.status_code != 200:
                return -1
            return sum(len(chunk) for chunk in response.iter_content(1 << 20))
    except requests.RequestException:
        return -1


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def busy_seconds() -> float:
    """CPU time the whole machine spent in processes so far (interrupts are left out: loopback traffic's
    softirq time belongs to no process, and would otherwise count as someone else's)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system


def own_seconds() -> float:
    """CPU time of this process and its finished children (wrk, helpers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class Watcher:
    """Watches a server while load runs: the peak resident memory of its whole process tree (master and
    workers), and the share of the machine's CPU that processes outside the benchmark took meanwhile,
    since other work on the same two cores skews every figure.
    """

    INTERVAL_S = 0.02

    def __init__(self, root: psutil.Process, helpers: tuple[psutil.Process, ...] = ()):
        self.root = root
        self.helpers = list(helpers)  # other processes of ours whose CPU is not "others'" (FerretDB)
        self.peak = 0
        self.others_cpu = 0.0  # fraction of all cores
        self._stop = threading.Event()
        self._procs: list[psutil.Process] = []
        self._listed_at = 0.0

    def tree(self) -> list[psutil.Process]:
        if time.monotonic() - self._listed_at > 0.5:
            self._procs = [self.root, *self.root.children(recursive=True)]
            self._listed_at = time.monotonic()
        return self._procs

    def rss(self) -> int:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                self._listed_at = 0.0
        return total

    def settle(self, timeout: float = 10.0) -> None:
        """Waits (bounded) until the server and its helpers are idle: requests a load left queued
        must not run into the next measurement, nor raise its memory baseline."""
        deadline = time.monotonic() + timeout
        procs = [*self.tree(), *self.helpers]
        before = cpu_seconds(procs)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            after = cpu_seconds(procs)
            if after - before < 0.01:  # under 5% of one core
                return
            before = after

    @contextmanager
    def watching(self) -> Iterator["Watcher"]:
        """Tracks the peak RSS and others' CPU while the block runs."""
        self.peak = self.rss()
        ours = [*self.tree(), *self.helpers]
        started, busy, mine = time.monotonic(), busy_seconds(), cpu_seconds(ours) + own_seconds()
        self._stop.clear()
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            elapsed = (time.monotonic() - started) * (psutil.cpu_count() or 1)
            others = (busy_seconds() - busy) - (cpu_seconds(ours) + own_seconds() - mine)
            self.others_cpu = max(0.0, others / elapsed) if elapsed else 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, self.rss())


@contextmanager
def profiled(root: psutil.Process, seconds: float, output: Path) -> Iterator[None]:
    """py-spy samples the server's workers while the block runs; collapsed stacks go to `output`.

    Only samples holding the GIL count: with gthread's threads, the rest is mostly waiting for it.
    """
    argv = [
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(root.pid),
        "--subprocesses", "--nonblocking", "--gil", "--rate", "250",
        "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let py-spy attach before the load starts
    try:
        yield
    finally:
        proc.wait(timeout=seconds + 60)


def summarize_profile(collapsed: Path, top: int = 12) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) for the heaviest frames of a py-spy raw (collapsed) profile."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return []
    return [(frame, 100 * n / total, 100 * inclusive[frame] / total) for frame, n in own.most_common(top)]
