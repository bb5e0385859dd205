"""What is measured: scenarios, grouped by the store they need, and the targets the report judges.

Each group runs on every system that has one of its endpoints, started afresh with an empty store (a
new DATA_DIR or database), so no scenario pays for another's data and every memory baseline is a cold
server's. To add a row (derivatives, say), add a Scenario to a group, or a Group, and teach
`systems.ServiceRun.PATHS` the endpoint; a target is one more `Target` line.
"""

import math
from dataclasses import dataclass, field

from tests.budgets import count


@dataclass(frozen=True)
class Scenario:
    name: str
    endpoint: str  # a key of a system's paths: "by_id", "by_model", "list", "upload"
    image: str = "hot"  # the sample image (samples.SIZES) it reads or uploads
    connections: int = 32
    headers: dict[str, str] = field(default_factory=dict)
    conditional: bool = False  # send If-None-Match with the ETag of a first answer
    expect: int = 200
    records: int = 0  # top the store up to this many records first
    probe: int = 0  # this many requests one at a time, instead of wrk (for very long requests)


@dataclass(frozen=True)
class Group:
    name: str
    images: tuple[str, ...]  # sample images every system stores before the scenarios
    scenarios: tuple[Scenario, ...]
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the systems


RANGE_64K = {"Range": "bytes=1048576-1114111"}  # 64 KB from the middle of the 10 MB image

GROUPS = (
    Group(
        "hot",
        ("hot",),
        (
            Scenario("GET 18 KB by id", "by_id"),
            Scenario("GET 18 KB by model_id", "by_model"),
            Scenario("GET 18 KB, 304", "by_id", conditional=True, expect=304),
        ),
    ),
    Group(
        "big",
        ("big",),
        (
            Scenario("GET 10 MB", "by_id", "big", connections=8),
            Scenario(
                "GET 64 KB range of 10 MB", "by_id", "big", connections=8, headers=RANGE_64K, expect=206
            ),
        ),
    ),
    Group("upload-small", (), (Scenario("POST 18 KB", "upload", connections=8, expect=201),)),
    Group("upload-big", (), (Scenario("POST 10 MB", "upload", "big", connections=8, expect=201),)),
    Group(
        "listing",
        (),
        (
            # One client at a time: the p99 is the service's own time, not a queue's.
            Scenario("list 100 of 10,000", "list", connections=1, records=10_000),
            Scenario("list 100 of 100,000", "list", connections=1, records=100_000),
        ),
    ),
    Group(
        "huge",
        (),
        (
            Scenario("POST 100 MB (memory)", "upload", "huge", connections=1, expect=201, probe=2),
            Scenario("GET 100 MB (memory)", "by_id", "huge", connections=1, probe=2),
        ),
        env={"MAX_UPLOAD_MB": "128", "MAX_IMAGE_PIXELS": "200000000"},
    ),
)


@dataclass(frozen=True)
class Target:
    """The service's `scenarios` in `modes`, compared with `against` (a peer's role) or absolute.

    metric: "rate" (requests/s), "throughput" (MB/s), "p99" (ms), "memory" (peak growth per connection,
    MB), or "p99_vs:<scenario>" (p99 relative to another scenario's on the same system). With several
    scenarios, the worst of them counts.
    """

    scenarios: tuple[str, ...]
    modes: tuple[str, ...]  # "embedded", "mongo"
    metric: str
    bound: float
    against: str | None = None
    note: str = ""
    round_trips: str = ""  # what one request sends to MongoDB (tests/budgets.py), for the table

    @property
    def at_most(self) -> bool:
        return self.metric in ("memory", "p99") or self.metric.startswith("p99_vs:")


EMBEDDED, MONGO, BOTH = ("embedded",), ("mongo",), ("embedded", "mongo")
# 10 MB is 40 GridFS chunks, read 16 a batch (storage.GridFSReader): two getMores after the find.
# Once read whole, an instance has a local copy (BLOB_CACHE_MB): the record's find alone.
BIG_BATCHES = math.ceil(10 * 1024 * 1024 / (255 * 1024) / 16)
HOT_GET = f"{count('GET, hot')} hot, {count('GET by id, cold')} cold"
BIG_GET = (
    f"{count('GET by id, cold, blob cached on disk')} cached on disk, "
    f"{count('GET by id, cold') + BIG_BATCHES - 1} cold"
)

TARGETS = (
    Target(("GET 18 KB by id",), EMBEDDED, "rate", 1.0, "bare-django"),
    Target(("GET 18 KB by id",), MONGO, "rate", 0.8, "bare-django", round_trips=HOT_GET),
    Target(("GET 18 KB by id",), MONGO, "rate", 3.0, "naive", round_trips=HOT_GET),
    Target(("GET 10 MB",), EMBEDDED, "throughput", 0.6, "nginx"),
    Target(("GET 10 MB",), MONGO, "throughput", 3.0, "naive", round_trips=BIG_GET),
    Target(
        ("GET 10 MB",), BOTH, "memory", 16.0, note="peak growth per concurrent download", round_trips=BIG_GET
    ),
    Target(("POST 18 KB",), EMBEDDED, "rate", 2.0, "naive", note="validation on"),
    Target(
        ("POST 18 KB",),
        MONGO,
        "rate",
        1.0,
        "naive",
        note="validation on",
        round_trips=str(count("upload new")),
    ),
    Target(("POST 100 MB (memory)",), BOTH, "memory", 48.0, note="peak growth per upload"),
    Target(
        ("POST 100 MB (memory)", "GET 100 MB (memory)"),
        BOTH,
        "memory",
        8.0,
        note='promise: "a 100 MB image passes through with only a few MB of extra memory per request"'
        " (read as at most 8 MB, upload and download)",
    ),
    Target(("list 100 of 100,000",), BOTH, "p99", 20.0, round_trips=str(count("listing page"))),
    Target(("list 100 of 100,000",), BOTH, "p99_vs:list 100 of 10,000", 1.5),
    Target(
        ("GET 18 KB by id",),
        ("scaleout",),
        "rate",
        0.5,
        "nginx",
        note="issue 9: through nginx (deploy/nginx.conf) with its cache warm, against nginx serving the file",
    ),
)
