"""The plumbing the bulk `manage.py` commands share (import, export, fsck, migrate_storage, stats).

The export manifest is written by `export` and read back by `import`, so it is defined once here;
so are the parallel runner, the progress bar and the summaries, so that every command reports alike.
"""

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from django.core.management.base import CommandError
from tqdm import tqdm

from .documents import ImageRecord

MANIFEST = "manifest.jsonl"

T = TypeVar("T")
R = TypeVar("R")


# --- The export manifest: one JSON object a line, an exported file's path and its whole record ----


@dataclass(frozen=True)
class ManifestEntry:
    path: Path
    record: ImageRecord
    cover: bool  # the record is its model's cover (images/covers.py)


def manifest_line(path: str, record: ImageRecord, cover: bool) -> str:
    """`path` is relative to the manifest's folder, so an export can be moved as a whole. `cover` is
    written only when true, so a line without it (an export made before covers) means no cover."""
    fields = asdict(record)
    fields["uploaded_at"] = record.uploaded_at.isoformat()
    return json.dumps({"path": path, **fields} | ({"cover": True} if cover else {}), ensure_ascii=False)


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """Each listed file with the record to restore, and whether it is the cover. A malformed line stops
    the import before it starts, rather than being skipped: a manifest is written by a program, so
    damage means something is wrong.
    """
    folder = manifest.parent.resolve()
    entries = []
    with manifest.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                path = (folder / data.pop("path")).resolve()
                if not path.is_relative_to(folder):
                    raise ValueError(f"{path} is outside the manifest's folder")
                data["uploaded_at"] = datetime.fromisoformat(data["uploaded_at"])
                if data["uploaded_at"].tzinfo is None:
                    raise ValueError("uploaded_at has no time zone")
                cover = data.pop("cover", False)
                if not isinstance(cover, bool):
                    raise ValueError(f"cover is {cover!r}, not true or false")
                known = {k: v for k, v in data.items() if k in ImageRecord.__dataclass_fields__}
                entries.append(ManifestEntry(path, ImageRecord(**known), cover))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CommandError(f"{manifest}:{number}: not a manifest line ({exc})") from exc
    return entries


# --- Running, showing and summing up the work -------------------------------------------------------


def parallel(func: Callable[[T], R], items: Iterable[T], jobs: int) -> Iterator[tuple[T, R]]:
    """`(item, func(item))` for every item, as each finishes, with at most `jobs` at work at once.

    One job runs in the calling thread. An exception (or Ctrl-C) stops the run: queued items are
    dropped and those running finish, so what is interrupted is whole work or none.
    """
    if jobs <= 1:
        for item in items:
            yield item, func(item)
        return
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="bulk")
    pending: set[Future[tuple[T, R]]] = set()
    try:
        for item in items:
            if len(pending) >= 2 * jobs:  # a bounded queue: memory stays flat for any number of items
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            pending.add(pool.submit(_paired, func, item))
        yield from (future.result() for future in as_completed(pending))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _paired(func: Callable[[T], R], item: T) -> tuple[T, R]:
    return item, func(item)


class Progress:
    """A progress bar on stderr with files/s, MB/s and an ETA; off when quiet or not on a terminal."""

    def __init__(self, total: int, description: str, quiet: bool) -> None:
        self.bar = tqdm(
            total=total,
            desc=description,
            unit=" files",
            file=sys.stderr,
            disable=quiet or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        self.bytes = 0

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes
        if not self.bar.disable and (elapsed := self.bar.format_dict["elapsed"]):
            self.bar.set_postfix_str(f"{human_bytes(self.bytes / elapsed)}/s", refresh=False)
        self.bar.update(1)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


@dataclass
class Tally:
    """How many items, and bytes, ended each way; and for the failures, which and why."""

    counts: Counter[str] = field(default_factory=Counter)
    sizes: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: str, size: int, subject: str = "", problem: str | None = None) -> None:
        self.counts[outcome] += 1
        self.sizes[outcome] += size
        if problem is not None:
            self.problems.append((subject, problem))

    def summary(self, labels: dict[str, str]) -> list[str]:
        """One line of counts and bytes per outcome in `labels` (outcome: label), then the problems."""
        counts = ", ".join(
            f"{label} {self.counts[outcome]} ({human_bytes(self.sizes[outcome])})"
            for outcome, label in labels.items()
        )
        return [counts] + [f"  {subject}: {problem}" for subject, problem in sorted(self.problems)]


def human_bytes(n: float) -> str:
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Aligned text columns: the first (a name) to the left, the figures after it to the right."""
    cells = [list(headers)] + [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for name, *figures in cells:
        aligned = [c.rjust(w) for c, w in zip(figures, widths[1:], strict=True)]
        lines.append("  ".join([name.ljust(widths[0]), *aligned]).rstrip())
    return lines
