"""A minute of mixed traffic on two instances of two workers each, on one store, in both modes:
uploads of a few shared contents to many models, deletes, reads and derivatives, all at once. Then
every upload answered 2xx and not deleted reads back byte-identical, no image was deleted twice,
and fsck finds nothing (issue 13)."""

import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests import servers
from tests.helpers import MODES, TIMEOUT, store_env, upload_to
from tests.samples import image_bytes

SECONDS = 60
CLIENTS = 8
CONTENTS = [image_bytes("PNG", (160, 120), seed=7000 + n) for n in range(5)]
MODELS = [f"stress-{n}" for n in range(24)]


@dataclass
class Traffic:
    """What each client did and was told, shared by all of them."""

    urls: list[str]
    statuses: Counter = field(default_factory=Counter)
    stored: dict[str, bytes] = field(default_factory=dict)  # image_id: bytes, from 2xx uploads
    deleted: Counter = field(default_factory=Counter)  # image_id: DELETEs answered 204
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        http = requests.Session()
        while time.monotonic() < until:
            url = rng.choice(self.urls)
            action = rng.choices(["upload", "delete", "read", "derivative"], [4, 2, 3, 1])[0]
            try:
                self.step(http, url, action, rng)
            except requests.RequestException as exc:
                self.failures.append(f"{action}: {exc!r}")

    def known(self, rng: random.Random) -> tuple[str, bytes] | None:
        with self.lock:
            return rng.choice(list(self.stored.items())) if self.stored else None

    def step(self, http: requests.Session, url: str, action: str, rng: random.Random) -> None:
        if action == "upload":
            data = rng.choice(CONTENTS)
            response = upload_to(url, data, rng.choice(MODELS), http=http)
            self.count(action, response.status_code, ok=(200, 201))
            if response.status_code in (200, 201):
                with self.lock:
                    self.stored[response.json()["image_id"]] = data
            return
        picked = self.known(rng)
        if picked is None:
            return
        image_id, data = picked
        if action == "delete":
            response = http.delete(f"{url}/images/{image_id}", timeout=TIMEOUT)
            self.count(action, response.status_code, ok=(204, 404))
            if response.status_code == 204:
                with self.lock:
                    self.deleted[image_id] += 1
        elif action == "read":
            response = http.get(f"{url}/images/{image_id}/content", timeout=TIMEOUT)
            self.count(action, response.status_code, ok=(200, 404))
            if response.status_code == 200 and response.content != data:
                self.failures.append(f"read {image_id}: other bytes")
        else:
            size = rng.choice([64, 128, 256])
            response = http.get(f"{url}/images/{image_id}/content?w={size}&format=webp", timeout=TIMEOUT)
            self.count(action, response.status_code, ok=(200, 404))

    def count(self, action: str, status: int, ok: tuple[int, ...]) -> None:
        with self.lock:
            self.statuses[f"{action} {status}"] += 1
            if status not in ok:
                self.failures.append(f"{action}: {status}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_minute_of_mixed_traffic_on_two_instances_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    with ExitStack() as stack:
        env, _ = stack.enter_context(store_env(request, mode, tmp_path / "data"))
        env["THROTTLE_DERIVE"] = ""  # (issue 15's throttle for making derivatives, where it exists)
        urls = [
            stack.enter_context(servers.served(env, tmp_path / f"instance-{n}.log", workers=2)).url
            for n in range(2)
        ]
        traffic = Traffic(urls)
        until = time.monotonic() + SECONDS
        with ThreadPoolExecutor(CLIENTS) as pool:
            for future in [pool.submit(traffic.client, seed, until) for seed in range(CLIENTS)]:
                future.result()

        assert traffic.failures == [], (traffic.failures[:20], traffic.statuses)
        assert {image_id: n for image_id, n in traffic.deleted.items() if n > 1} == {}
        kept = {
            image_id: data for image_id, data in traffic.stored.items() if image_id not in traffic.deleted
        }
        wrong = defaultdict(list)
        for image_id, data in kept.items():
            response = requests.get(f"{urls[0]}/images/{image_id}/content", timeout=TIMEOUT)
            if (response.status_code, response.content) != (200, data):
                wrong[response.status_code].append(image_id)
        assert dict(wrong) == {}
        report = servers.fsck(env)
        assert report["clean"] and report["problems"] == [], report
    print(
        f"\nstress {mode}: {sum(traffic.statuses.values())} requests in {SECONDS} s, "
        f"{dict(sorted(traffic.statuses.items()))}; {len(traffic.stored)} images stored, "
        f"{len(traffic.deleted)} deleted (each once), {len(kept)} read back byte-identical; fsck clean"
    )
