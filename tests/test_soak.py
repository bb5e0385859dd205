"""A bounded soak: three minutes of mixed traffic against the real service (embedded mode, the
default two workers), with its memory watched. Only the slow suite runs it (`-m slow`).

Thirty-two clients, each on a keep-alive connection, read (bytes, metadata, lists, a model's
newest image), upload and delete their own uploads, and now and then ask for an image that does
not exist. The only answers allowed are the right ones, the intended 404s, and 429 when uploads
outrun THROTTLE_UPLOAD. Memory, the RSS of the whole process tree, may grow by 10% at most from
minute 1 to minute 3, and a full fsck passes at the end.
"""

import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests import servers
from tests.helpers import TIMEOUT, new_model_id, upload_to
from tests.samples import image_bytes

SECONDS = 180
CONNECTIONS = 32
SAMPLE_EVERY = 5  # seconds, for the memory
MAX_GROWTH = 0.10  # from minute 1 to minute 3
# Loose enough that most uploads go through, tight enough that some meet a 429 (per worker).
THROTTLE = "1500/min"
WEIGHTS = {
    "content": 35,
    "metadata": 15,
    "list": 12,
    "model image": 10,
    "upload": 14,
    "delete": 10,
    "unknown image": 4,  # an intended 404
}
ALLOWED = {
    "content": {200},
    "metadata": {200},
    "list": {200},
    "model image": {200},
    "upload": {201, 429},
    "delete": {204, 429},
    "unknown image": {404},
}


@dataclass
class Client:
    """One connection's worth of traffic; keeps its own uploads, so that it reads and deletes only
    images that it knows exist."""

    url: str
    number: int
    seeded: list[tuple[str, str, bytes]]  # image_id, model_id, bytes
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        rng = random.Random(self.number)
        mine: list[tuple[str, str, bytes]] = []
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        with requests.Session() as http:
            while not stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                image_id, model_id, data = rng.choice(mine if mine and rng.random() < 0.5 else self.seeded)
                if kind == "delete" and not mine:
                    kind = "upload"
                started = time.perf_counter()
                try:
                    response, check = self.send(http, rng, kind, image_id, model_id, data, mine)
                except requests.RequestException as exc:
                    self.errors.append(f"{kind}: {exc!r}")
                    continue
                self.latencies.append(time.perf_counter() - started)
                self.statuses[(kind, response.status_code)] += 1
                if response.status_code not in ALLOWED[kind] or not check(response):
                    self.errors.append(f"{kind} {response.status_code}: {response.content[:200]!r}")

    def send(self, http, rng, kind, image_id, model_id, data, mine):
        """The request, and how to judge a success (bytes must be the image's own)."""
        ok = lambda response: True  # noqa: E731
        if kind == "content":
            response = http.get(f"{self.url}/images/{image_id}/content", timeout=TIMEOUT)
            return response, lambda r: r.status_code != 200 or r.content == data
        if kind == "metadata":
            response = http.get(f"{self.url}/images/{image_id}", timeout=TIMEOUT)
            return response, lambda r: r.status_code != 200 or r.json()["model_id"] == model_id
        if kind == "list":
            params = {"limit": 20} if rng.random() < 0.5 else {"limit": 20, "model_id": model_id}
            return http.get(f"{self.url}/images", params=params, timeout=TIMEOUT), ok
        if kind == "model image":
            return http.get(f"{self.url}/image/{model_id}", timeout=TIMEOUT), ok
        if kind == "unknown image":
            return http.get(f"{self.url}/images/{rng.randbytes(12).hex()}", timeout=TIMEOUT), ok
        if kind == "upload":
            new_model = new_model_id(f"soak{self.number}")
            new_data = image_bytes(
                "PNG" if rng.random() < 0.5 else "JPEG", (96, 64), seed=rng.randrange(10**12)
            )
            response = upload_to(self.url, new_data, new_model, http=http)
            if response.status_code == 201:
                mine.append((response.json()["image_id"], new_model, new_data))
            return response, ok
        victim = mine.pop(rng.randrange(len(mine)))
        response = http.delete(f"{self.url}/images/{victim[0]}", timeout=TIMEOUT)
        if response.status_code != 204:
            mine.append(victim)
        return response, ok


def mean_rss(samples: list[tuple[float, int]], around: float, window: float = 10) -> float:
    return statistics.mean(rss for at, rss in samples if abs(at - around) <= window / 2)


@pytest.mark.slow
def test_three_minutes_of_mixed_traffic_without_errors_or_memory_growth(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "THROTTLE_UPLOAD": THROTTLE}
    with servers.served(env, tmp_path / "service.log") as served:
        seeded = []
        for n in range(60):
            data, model_id = image_bytes("JPEG" if n % 2 else "PNG", (160, 120), seed=n), f"seed-{n % 6}"
            response = upload_to(served.url, data, model_id)
            assert response.status_code == 201, response.text
            seeded.append((response.json()["image_id"], model_id, data))

        clients = [Client(served.url, n, seeded) for n in range(CONNECTIONS)]
        stop = threading.Event()
        threads = [threading.Thread(target=client.run, args=(stop,), daemon=True) for client in clients]
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < SECONDS:
            samples.append((elapsed, servers.rss_bytes(served.pids())))
            time.sleep(min(SAMPLE_EVERY, max(0.0, SECONDS - elapsed)))
        samples.append((time.monotonic() - started, servers.rss_bytes(served.pids())))
        stop.set()
        for thread in threads:
            thread.join(2 * TIMEOUT)
        duration = time.monotonic() - started
        report = servers.fsck(env, "--deep")

    statuses = sum((client.statuses for client in clients), Counter())
    errors = [error for client in clients for error in client.errors]
    latencies = sorted(latency for client in clients for latency in client.latencies)
    minute_1, minute_3 = mean_rss(samples, 60), mean_rss(samples, SECONDS - 5)
    total = sum(statuses.values())
    by_status = Counter()
    for (_, status), count in statuses.items():
        by_status[status] += count
    mib = {name: f"{value / 2**20:.1f} MiB" for name, value in [("1", minute_1), ("3", minute_3)]}
    mib["peak"] = f"{max(rss for _, rss in samples) / 2**20:.1f} MiB"
    p50, p99 = (latencies[int(len(latencies) * q)] * 1000 for q in (0.5, 0.99))
    print(
        f"\nsoak: {total} requests in {duration:.0f} s ({total / duration:.0f}/s) on {CONNECTIONS} "
        f"connections; statuses {dict(sorted(by_status.items()))}; p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"RSS {mib['1']} at minute 1, {mib['3']} at minute 3 ({(minute_3 / minute_1 - 1) * 100:+.1f}%), "
        f"peak {mib['peak']}; errors {len(errors)}; fsck clean: {report['clean']}"
    )
    assert errors == [], errors[:10]
    assert statuses[("upload", 201)] and statuses[("delete", 204)], statuses
    assert minute_3 <= minute_1 * (1 + MAX_GROWTH), (minute_1, minute_3)
    assert report["clean"], report["problems"]
