"""Turns results into the printed table, bench/out/results.md, results.json and PNG charts."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .load import summarize_profile
from .matrix import TARGETS, Target
from .runner import MB, Result

PEERS = ("nginx", "bare-django", "naive")
COLUMNS = (
    "scenario", "system", "conns", "req/s", "MB/s", "p50 ms", "p99 ms", "CPU ms/req", "RSS +MB/conn",
    "x nginx", "x bare-django", "x naive", "others' CPU", "note",
)  # fmt: skip


def peer(results: list[Result], result: Result, kind: str) -> Result | None:
    """The `kind` system's result for the same scenario, on the same backend where there is a choice."""
    found = [
        r
        for r in results
        if r.system.kind == kind and r.scenario.name == result.scenario.name and r.load and r.load.rate
    ]
    same = [r for r in found if r.system.backend == result.system.backend]
    return (same or found or [None])[0]


def times(x: float) -> str:
    return f"{x:,.0f}x" if x >= 100 else f"{x:.2f}x" if x >= 0.01 else "<0.01x"


def ratio(results: list[Result], result: Result, kind: str) -> str:
    other = peer(results, result, kind)
    if other is None or other is result or not result.load:
        return ""
    return times(result.load.rate / other.load.rate)


def rows(results: list[Result]) -> list[list[str]]:
    table = []
    for r in results:
        head = [r.scenario.name, r.system.name, str(r.scenario.connections)]
        if r.skipped:
            table.append([*head, f"n/a: {r.skipped}", *[""] * (len(COLUMNS) - 4)])
            continue
        load = r.load
        notes = [f"{load.errors} errors"] if load.errors else []
        notes += [load.note] if load.note else []
        table.append(
            [
                *head,
                f"{load.rate:,.1f}",
                f"{r.throughput:,.1f}",
                f"{load.p50_ms:,.1f}",
                f"{load.p99_ms:,.1f}",
                f"{r.cpu_ms:.3f}" if r.cpu_ms else "",
                f"{r.growth_per_connection:,.1f}",
                *(ratio(results, r, kind) for kind in PEERS),
                f"{100 * r.others_cpu:.0f}%",
                "; ".join(notes),
            ]
        )
    return table


@dataclass
class Verdict:
    target: Target
    system: str
    value: float | None
    failure: str = ""  # why the service could not be measured (a wrong status, errors)

    @property
    def met(self) -> bool | None:
        if self.failure:
            return False
        if self.value is None:
            return None
        return self.value <= self.target.bound if self.target.at_most else self.value >= self.target.bound

    @property
    def wanted(self) -> str:
        t = self.target
        sign = "≤" if t.at_most else "≥"
        if t.metric == "memory":
            return f"RSS growth {sign} {t.bound:g} MB per connection"
        if t.metric == "p99":
            return f"p99 {sign} {t.bound:g} ms"
        if t.metric.startswith("p99_vs:"):
            return f"p99 {sign} {t.bound:g}x {t.metric.split(':', 1)[1]}"
        what = "req/s" if t.metric == "rate" else "MB/s"
        return f"{what} {sign} {t.bound:g}x {t.against}"

    @property
    def measured(self) -> str:
        if self.failure:
            return self.failure
        if self.value is None:
            return "not measured"
        if self.target.metric in ("memory", "p99"):
            return f"{self.value:,.2f} {'MB' if self.target.metric == 'memory' else 'ms'}"
        return times(self.value)


def judge(results: list[Result]) -> list[Verdict]:
    verdicts = []
    services = []
    for r in results:
        if r.system.kind in ("service", "nginx-cache") and r.system not in services:
            services.append(r.system)
    for target in TARGETS:
        for system in services:
            if system.mode in target.modes:
                verdicts.append(Verdict(target, system.name, *measure(results, target, system)))
    return verdicts


def measure(results: list[Result], target: Target, system) -> tuple[float | None, str]:
    """The target's figure for `system`, or None and why it failed (or "" if it just didn't run)."""
    values = []
    for name in target.scenarios:
        mine = next((r for r in results if r.system == system and r.scenario.name == name), None)
        if mine is None:
            return None, ""
        if mine.skipped:
            return None, f"{name}: {mine.skipped}"
        if mine.load.errors:
            return None, f"{name}: {mine.load.errors} failed requests"
        if target.metric == "memory":
            values.append(mine.growth_per_connection)
        elif target.metric == "p99":
            values.append(mine.load.p99_ms)
        elif target.metric.startswith("p99_vs:"):
            other_name = target.metric.split(":", 1)[1]
            other = next((r for r in results if r.system == system and r.scenario.name == other_name), None)
            if other is None or other.load is None or not other.load.p99_ms:
                return None, ""
            values.append(mine.load.p99_ms / other.load.p99_ms)
        else:
            other = peer(results, mine, target.against)
            if other is None:
                return None, ""
            if target.metric == "rate":
                values.append(mine.load.rate / other.load.rate)
            else:
                values.append(mine.throughput / other.throughput if other.throughput else 0.0)
    return (max(values) if target.at_most else min(values)), ""


def verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    return [
        [
            " + ".join(v.target.scenarios),
            v.system,
            v.wanted,
            v.measured,
            {True: "met", False: "NOT MET", None: "not measured"}[v.met],
            v.target.round_trips if "mongo" in v.system else "",
            v.target.note,
        ]
        for v in verdicts
    ]


VERDICT_COLUMNS = ("scenario", "system", "target", "measured", "verdict", "Mongo round trips", "note")


def text_table(columns: tuple[str, ...], table: list[list[str]]) -> str:
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(columns), line(["-" * w for w in widths])]
    previous = None
    for row in table:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def markdown_table(columns: tuple[str, ...], table: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(escape(c) for c in row) + " |" for row in table]
    return "\n".join(out)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def charts(results: list[Result], folder: Path) -> list[Path]:
    """One PNG per scenario: requests/s, p99 and memory growth per connection, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    names = list(dict.fromkeys(r.scenario.name for r in results))
    for name in names:
        measured = [r for r in results if r.scenario.name == name and r.load]
        if not measured:
            continue
        labels = [r.system.name for r in measured]
        panels = (
            ("requests/s", [r.load.rate for r in measured]),
            ("p99 latency, ms", [r.load.p99_ms for r in measured]),
            ("RSS growth per connection, MB", [r.growth_per_connection for r in measured]),
        )
        fig, axes = plt.subplots(1, 3, figsize=(15, 0.6 * len(labels) + 1.6))
        for ax, (title, values) in zip(axes, panels, strict=True):
            ax.barh(labels, values, color=["#d62728" if "service" in x else "#7f7f7f" for x in labels])
            ax.set_title(title, fontsize=10)
            positive = [v for v in values if v > 0]
            if positive and max(positive) > 50 * min(positive):
                ax.set_xscale("log")  # nginx would flatten every other bar
                ax.set_title(f"{title} (log scale)", fontsize=10)
            ax.invert_yaxis()
            for i, v in enumerate(values):
                ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
            ax.margins(x=0.25)
        for ax in axes[1:]:
            ax.set_yticklabels([])
        fig.suptitle(f"{name} ({measured[0].scenario.connections} connections)")
        fig.tight_layout()
        path = folder / f"{slug(name)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    return made


def profile_section(profiles: Path | None) -> str:
    if profiles is None or not profiles.is_dir():
        return ""
    parts = []
    for path in sorted(profiles.glob("*.txt")):
        top = summarize_profile(path)
        if not top:
            continue
        table = [[frame, f"{own:.1f}", f"{inc:.1f}"] for frame, own, inc in top]
        parts.append(f"### {path.stem}\n\n" + markdown_table(("frame", "self %", "inclusive %"), table))
    return "## Profiles (py-spy, busiest frames by own samples)\n\n" + "\n\n".join(parts) if parts else ""


NOTES = """\
- Each group of scenarios runs on every system started afresh on an empty store (new DATA_DIR or
  database), so the memory baseline is a cold server's and no scenario pays for another's data.
- RSS is the sum over the server's whole process tree (gunicorn's master and workers, or nginx's),
  sampled every 20 ms; growth is the peak during the scenario (warm-up included) minus the idle figure
  just before it, divided by the connections.
- Ratios compare requests/s with the same scenario on the peer (the naive peer on the same MongoDB where
  there is one); the targets on 10 MB compare MB/s.
- Uploads give every request different bytes (a JPEG comment with a counter), so each one stores a blob.
- "CPU ms/req" is the CPU time of the server's own processes (gunicorn's master and workers, or
  nginx's; not FerretDB's) over the measured runs, divided by the requests they answered.
- "Mongo round trips" are the commands that one request of the target's scenario sends to MongoDB,
  as tests/test_budgets.py pins them (tests/budgets.py); a hot hit sends none.
- "others' CPU" is the share of all cores that processes outside the benchmark (not the server, wrk,
  FerretDB or the bench itself) used during the measurement. Anything but a few % skews that row.
- Listing runs one client at a time, so its p99 is the service's own time rather than queueing.
- FerretDB's SQLite handler pushes down no filter but `_id` and no sort: each GridFS read scans all of
  `fs.chunks`, and each listing page sorts the whole collection in FerretDB. Mongo-mode figures on
  FerretDB measure that as much as the service; set MONGO_TEST_URI to add a real MongoDB."""


def write(
    results: list[Result], header: dict[str, str], out: Path, profiles: Path | None
) -> tuple[str, Path]:
    """Writes results.md, results.json and the charts under `out`; returns the text to print."""
    table = rows(results)
    verdicts = verdict_rows(judge(results))
    printed = "\n\n".join(
        [
            "\n".join(f"{k}: {v}" for k, v in header.items()),
            text_table(COLUMNS, table),
            "Targets\n" + text_table(VERDICT_COLUMNS, verdicts),
        ]
    )
    made = charts(results, out / "charts")
    md = [
        "# image-service benchmark",
        "\n".join(f"- {k}: {v}" for k, v in header.items()),
        "## Results\n\n" + markdown_table(COLUMNS, table),
        "## Targets\n\n" + markdown_table(VERDICT_COLUMNS, verdicts),
        "## How it was measured\n\n" + NOTES,
        profile_section(profiles),
        "## Charts\n\n" + "\n".join(f"![{p.stem}](charts/{p.name})" for p in made),
    ]
    path = out / "results.md"
    path.write_text("\n\n".join(part for part in md if part) + "\n")
    raw = [
        {
            "scenario": r.scenario.name,
            "system": r.system.name,
            "connections": r.scenario.connections,
            "skipped": r.skipped,
            "requests": r.load.requests if r.load else 0,
            "seconds": r.load.seconds if r.load else 0,
            "rate": r.load.rate if r.load else 0,
            "mb_per_s": r.throughput,
            "p50_ms": r.load.p50_ms if r.load else 0,
            "p99_ms": r.load.p99_ms if r.load else 0,
            "errors": r.load.errors if r.load else 0,
            "baseline_mb": r.baseline / MB,
            "peak_mb": r.peak / MB,
            "note": r.load.note if r.load else "",
        }
        for r in results
    ]
    (out / "results.json").write_text(json.dumps({"header": header, "results": raw}, indent=1) + "\n")
    return printed, path
