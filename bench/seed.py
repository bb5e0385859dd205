"""Tops the service's store up to N image records, fast: bulk inserts, not HTTP.

Run as `python -m bench.seed N` with the service's own environment (DATA_DIR, MONGO_*), so it writes
where the running service reads. Records go straight into the document store (MongoDB's `images`
collection, or the embedded mode's `StoredImage` table) in the shape `ImageRecord` defines; no blobs
are written, since a listing never reads them.
"""

import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

BATCH = 5_000


def fake_records(start: int, count: int) -> list:
    from images.documents import ImageRecord, new_image_id

    epoch = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        ImageRecord(
            image_id=new_image_id(),
            model_id=f"seed-{i % 1000}",
            filename=f"seed-{i}.jpg",
            content_type="image/jpeg",
            size=18_000,
            sha256=f"{i:064x}",
            width=120,
            height=90,
            uploaded_at=epoch + timedelta(seconds=i),
        )
        for i in range(start, start + count)
    ]


def top_up(total: int) -> int:
    """Adds records until the store holds `total`; returns how many were added."""
    from bson import ObjectId
    from django.conf import settings

    from images.documents import MongoDocuments
    from images.models import StoredImage

    if settings.MONGO:
        docs = MongoDocuments()
        docs.ensure_indexes()
        have = docs.collection.count_documents({})
    else:
        have = StoredImage.objects.count()
    missing = max(0, total - have)
    for start in range(have, have + missing, BATCH):
        batch = fake_records(start, min(BATCH, have + missing - start))
        if settings.MONGO:
            rows = []
            for record in batch:
                row = asdict(record)
                row["_id"] = ObjectId(row.pop("image_id"))
                rows.append(row)
            docs.collection.insert_many(rows, ordered=False)
        else:
            StoredImage.objects.bulk_create([StoredImage(**asdict(r)) for r in batch], batch_size=1000)
    return missing


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imageservice.settings")
    import django

    django.setup()
    added = top_up(int(sys.argv[1]))
    print(f"seeded {added} records")


if __name__ == "__main__":
    main()
