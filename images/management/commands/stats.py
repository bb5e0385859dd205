"""`manage.py stats`: what the store holds, from its records: counts, bytes, what deduplication saves
(the same bytes for several models are stored once), the largest models and the formats.
"""

import json
from collections import Counter

from django.core.management.base import BaseCommand, CommandError, CommandParser

from images import services
from images.bulk import human_bytes, table


def gather(top: int) -> dict:
    blobs: dict[str, int] = {}
    models, model_bytes = Counter[str](), Counter[str]()
    formats, format_bytes = Counter[str](), Counter[str]()
    for record in services.all_records():
        blobs[record.sha256] = record.size
        models[record.model_id] += 1
        model_bytes[record.model_id] += record.size
        formats[record.content_type] += 1
        format_bytes[record.content_type] += record.size
    total, stored = model_bytes.total(), sum(blobs.values())
    largest = sorted(models, key=lambda m: (-model_bytes[m], m))[:top]
    return {
        "images": models.total(),
        "models": len(models),
        "blobs": len(blobs),
        "total_bytes": total,
        "stored_bytes": stored,
        "dedup_saved_bytes": total - stored,
        "largest_models": [{"model_id": m, "images": models[m], "bytes": model_bytes[m]} for m in largest],
        "formats": [
            {"content_type": f, "images": n, "bytes": format_bytes[f]} for f, n in formats.most_common()
        ],
    }


class Command(BaseCommand):
    help = "Counts, bytes, bytes saved by deduplication, the largest models and the formats."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--top", type=int, default=10, help="how many of the largest models (default 10)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="as JSON")

    def handle(self, *args, top: int, as_json: bool, **options) -> None:
        if top < 0:
            raise CommandError("--top must be 0 or more")
        stats = gather(top)
        if as_json:
            self.stdout.write(json.dumps(stats, indent=2))
            return
        lines = table(
            ["", "count", "bytes"],
            [
                ["images", stats["images"], human_bytes(stats["total_bytes"])],
                ["blobs (distinct bytes)", stats["blobs"], human_bytes(stats["stored_bytes"])],
                ["saved by dedup", "", human_bytes(stats["dedup_saved_bytes"])],
                ["models", stats["models"], ""],
            ],
        )
        lines += ["", f"Largest models (by bytes, top {top}):"]
        rows = [[m["model_id"], m["images"], human_bytes(m["bytes"])] for m in stats["largest_models"]]
        lines += table(["model_id", "images", "bytes"], rows)
        lines += ["", "Formats:"]
        rows = [[f["content_type"], f["images"], human_bytes(f["bytes"])] for f in stats["formats"]]
        lines += table(["content_type", "images", "bytes"], rows)
        self.stdout.write("\n".join(lines))
