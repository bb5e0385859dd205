"""Runs the matrix: every group on every system that can answer it, each on a fresh store."""

import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from . import load as driver
from .matrix import Group, Scenario
from .samples import sample
from .systems import Run, System

MB = 1024 * 1024
# Service scenarios that --profile samples with py-spy (in an extra, unrecorded run).
PROFILED = ("GET 18 KB by id", "GET 10 MB", "POST 18 KB", "list 100 of 100,000")


@dataclass(frozen=True)
class Settings:
    seconds: float  # each measured wrk run
    warmup: float  # a wrk run before it, not recorded (memory peaks still count)
    repeats: int  # measured runs; the median by requests/s is reported
    probes: int  # requests per probe scenario (at most the scenario's own count)
    profile: bool


@dataclass
class Result:
    system: System
    scenario: Scenario
    load: driver.LoadResult | None = None
    moved_bytes: int = 0  # bytes of image sent or received during the reported run
    baseline: int = 0  # RSS of the server tree before the scenario
    peak: int = 0  # highest RSS sampled during it
    others_cpu: float = 0.0  # share of all cores that processes outside the benchmark used meanwhile
    cpu_ms: float = 0.0  # CPU time of the server's process tree per request, over the measured runs
    skipped: str = ""

    @property
    def throughput(self) -> float:
        """MB/s of image bytes (responses for downloads, request bodies for uploads)."""
        return self.moved_bytes / MB / self.load.seconds if self.load and self.load.seconds else 0.0

    @property
    def growth_per_connection(self) -> float:
        return (self.peak - self.baseline) / MB / self.scenario.connections


class Matrix:
    def __init__(
        self,
        systems: list[System],
        settings: Settings,
        out: Path,
        say: Callable[[str], None],
        helpers: tuple[psutil.Process, ...] = (),
    ):
        self.systems = systems
        self.helpers = helpers  # processes the systems rely on (FerretDB): their CPU is not others'.
        self.settings = settings
        self.out = out
        self.say = say
        self.images = out / "images"
        self.logs = out / "logs"
        self.profiles = out / "profiles"
        self.work = out / "work"

    def run(self, groups: tuple[Group, ...]) -> list[Result]:
        shutil.rmtree(self.logs, ignore_errors=True)
        if self.settings.profile:
            shutil.rmtree(self.profiles, ignore_errors=True)
        for path in (self.logs, self.images):
            path.mkdir(parents=True, exist_ok=True)
        results = []
        for group in groups:
            for system in self.systems:
                wanted = [s for s in group.scenarios if applies(system, group, s)]
                if wanted:
                    results += self.run_group(group, wanted, system)
        shutil.rmtree(self.work, ignore_errors=True)
        return results

    def run_group(self, group: Group, scenarios: list[Scenario], system: System) -> list[Result]:
        """The group's rows for `system`; a system that breaks gets its failure in each row left."""
        done: list[Result] = []
        try:
            self.run_scenarios(group, scenarios, system, done)
        except Exception as exc:  # noqa: BLE001  (one broken system must not lose the whole run)
            message = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            self.say(f"[{group.name}] {system.name}: {message}")
            measured = {r.scenario.name for r in done}
            done += [Result(system, s, skipped=message) for s in scenarios if s.name not in measured]
        return done

    def run_scenarios(
        self, group: Group, scenarios: list[Scenario], system: System, results: list[Result]
    ) -> None:
        """Starts `system` on a fresh store and appends a result per scenario as each one ends."""
        workdir = self.work / f"{group.name}-{uuid.uuid4().hex[:6]}"
        workdir.mkdir(parents=True)
        self.work.chmod(0o755)
        self.say(f"[{group.name}] {system.name}: starting")
        try:
            with system.start(workdir, group.env, self.logs) as run:
                for key in group.images:
                    run.store(key, sample(key, self.images))
                for scenario in scenarios:
                    result = self.run_scenario(run, system, scenario)
                    results.append(result)
                    self.say(f"[{group.name}] {system.name}: {describe(result)}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def run_scenario(self, run: Run, system: System, scenario: Scenario) -> Result:
        result = Result(system, scenario)
        if scenario.records:
            started = time.monotonic()
            run.seed(scenario.records)
            self.say(f"  seeded {scenario.records:,} records in {time.monotonic() - started:.1f}s")
        path = run.path(scenario.endpoint, scenario.image)
        if path is None:
            result.skipped = "no such endpoint or image"
            return result
        url = run.url + path
        headers = dict(scenario.headers)
        file = sample(scenario.image, self.images)
        watcher = driver.Watcher(run.root(), self.helpers)

        watcher.settle()
        if scenario.probe:
            result.baseline = watcher.rss()
            with watcher.watching():
                result.load = self.probe(run, scenario, url, file, min(scenario.probe, self.settings.probes))
            result.peak, result.others_cpu = watcher.peak, watcher.others_cpu
            result.moved_bytes = result.load.response_bytes
            return result

        if problem := self.check(run, scenario, url, headers, file):
            result.skipped = problem
            return result
        upload = file if scenario.endpoint == "upload" else None
        if upload is not None:
            headers.update(run.upload_headers)
        watcher.settle()
        result.baseline = watcher.rss()
        with watcher.watching():
            driver.wrk(url, scenario.connections, self.settings.warmup, headers, upload)
            cpu = driver.cpu_seconds(watcher.tree())
            runs = [
                driver.wrk(url, scenario.connections, self.settings.seconds, headers, upload)
                for _ in range(self.settings.repeats)
            ]
            cpu = driver.cpu_seconds(watcher.tree()) - cpu
        result.peak, result.others_cpu = watcher.peak, watcher.others_cpu
        answered = sum(r.requests for r in runs)
        result.cpu_ms = 1000 * cpu / answered if answered else 0.0
        runs.sort(key=lambda r: r.rate)
        result.load = runs[len(runs) // 2]
        if result.load.requests == 0:
            # Slower than the whole run: time one request instead, so the row still says how slow.
            watcher.settle()
            result.load = self.probe(run, scenario, url, file, 1)
            result.load.note = f"wrk completed none in {self.settings.seconds:.0f}s; 1 timed request"
            result.moved_bytes = result.load.response_bytes
        elif upload is not None:
            result.moved_bytes = result.load.requests * file.stat().st_size
        else:
            result.moved_bytes = result.load.response_bytes
        if self.settings.profile and system.kind == "service" and scenario.name in PROFILED:
            self.profile(run, system, scenario, url, headers, upload)
        return result

    def check(self, run: Run, scenario: Scenario, url: str, headers: dict, file: Path) -> str:
        """Sends the scenario's request once; says why the system can't take part, or "" if it can."""
        if scenario.endpoint == "upload":
            status = run.upload("check", file).status_code
        else:
            response = requests.get(url, headers=headers, timeout=driver.REQUEST_TIMEOUT_S)
            if scenario.conditional:
                if "ETag" not in response.headers:
                    return "sends no ETag"
                headers["If-None-Match"] = response.headers["ETag"]
                response = requests.get(url, headers=headers, timeout=driver.REQUEST_TIMEOUT_S)
            status = response.status_code
        return "" if status == scenario.expect else f"answers {status}, not {scenario.expect}"

    def probe(self, run: Run, scenario: Scenario, url: str, file: Path, count: int) -> driver.LoadResult:
        """`count` of the scenario's requests, one at a time (uploads or streamed downloads)."""
        if scenario.endpoint != "upload":
            return driver.probe(lambda: driver.stream_get(url), count)
        size = file.stat().st_size

        def send() -> int:
            # Each upload goes to its own model, so the same bytes make a new record every time.
            response = run.upload(f"{scenario.image}-{uuid.uuid4().hex[:8]}", file)
            if response.status_code != scenario.expect:
                return -1
            run.ids.setdefault(scenario.image, response.json()["image_id"])
            return size

        return driver.probe(send, count)

    def profile(
        self, run: Run, system: System, scenario: Scenario, url: str, headers: dict, upload: Path | None
    ) -> None:
        self.profiles.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")
        output = self.profiles / f"{system.slug}--{name}.txt"
        with driver.profiled(run.root(), self.settings.seconds, output):
            driver.wrk(url, scenario.connections, self.settings.seconds, headers, upload)
        self.say(f"  profile: {output}")


def applies(system: System, group: Group, scenario: Scenario) -> bool:
    """Whether `system` has the endpoint, and can have the image (stored up front, or uploaded)."""
    if scenario.endpoint not in system.endpoints:
        return False
    if scenario.endpoint in ("upload", "list"):
        return True
    return scenario.image in group.images or "upload" in system.endpoints


def describe(result: Result) -> str:
    if result.skipped:
        return f"{result.scenario.name}: n/a ({result.skipped})"
    r = result.load
    return (
        f"{result.scenario.name}: {r.rate:,.0f} req/s, {result.throughput:,.1f} MB/s, "
        f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
        f"+{(result.peak - result.baseline) / MB:.1f} MB RSS, {r.errors} errors, "
        f"others' CPU {100 * result.others_cpu:.0f}%"
    )
