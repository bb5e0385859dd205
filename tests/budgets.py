"""The MongoDB round trips each operation may make, in order, as (command, collection): pinned by
tests/test_budgets.py on FerretDB and MONGO_TEST_URI, shown by bench/ beside its figures, listed in
the README's Performance section. "Cold" means the worker's hot caches are empty; a hot hit sends
nothing. Data only, so that bench/ can import it without the test tools.
"""

# Each operation's commands, in order, as (command, collection). "Cold" means this process's hot
# caches are empty: a hot hit sends nothing.
BUDGETS = {
    # blob exists? (no: so no record of these bytes either, and the pin need not look again); pin,
    # closing mark?; chunks, files document, other copies?; the record
    "upload new": [
        ("find", "fs.files"),
        ("insert", "fs.pins"),
        ("find", "fs.closing"),
        ("insert", "fs.chunks"),
        ("insert", "fs.files"),
        ("find", "fs.files"),
        ("insert", "images"),
    ],
    # the same bytes for the same model: the blob exists, then the model's record of it: 200,
    # nothing written; is it the model's cover?
    "upload known": [("find", "fs.files"), ("find", "images"), ("find", "covers")],
    "upload shared": [  # bytes that another model's image holds: a pin and a record
        ("find", "fs.files"),
        ("find", "images"),
        ("insert", "fs.pins"),
        ("find", "fs.closing"),
        ("find", "fs.files"),
        ("insert", "images"),
    ],
    "GET by id, cold": [("find", "images"), ("find", "fs.files"), ("find", "fs.chunks")],
    # the model's cover, by _id; else its newest record
    "GET by model_id, cold": [
        ("find", "covers"),
        ("find", "images"),
        ("find", "fs.files"),
        ("find", "fs.chunks"),
    ],
    "GET, hot": [],
    "304, hot": [],
    "listing page": [("find", "images"), ("find", "covers")],  # the page's covers: one _id $in
    # the record; the derivative's size (it exists), its use; its files document and chunks
    "derivative hit, cold": [
        ("find", "images"),
        ("find", "fs.files"),
        ("update", "derivative_uses"),
        ("find", "fs.files"),
        ("find", "fs.chunks"),
    ],
    # the record, then its delete; the model's cover if it was this image; the pin's delete; under
    # the closing mark: other pins?
    "delete, bytes shared": [
        ("find", "images"),
        ("delete", "images"),
        ("delete", "covers"),
        ("delete", "fs.pins"),
        ("insert", "fs.closing"),
        ("find", "fs.pins"),
        ("delete", "fs.closing"),
    ],
    # ... no other pin: the copies, each listed for its purge and deleted while the mark is still
    # ours; purges due; the derivatives' names, then each one's delete (here one derivative)
    "delete, last": [
        ("find", "images"),
        ("delete", "images"),
        ("delete", "covers"),
        ("delete", "fs.pins"),
        ("insert", "fs.closing"),
        ("find", "fs.pins"),
        ("find", "fs.files"),
        ("find", "fs.closing"),
        ("insert", "fs.deleted"),
        ("delete", "fs.files"),
        ("delete", "fs.closing"),
        ("find", "fs.deleted"),
        ("distinct", "fs.files"),
        ("find", "fs.files"),
        ("insert", "fs.deleted"),
        ("delete", "fs.files"),
        ("find", "fs.deleted"),
        ("delete", "derivative_uses"),
    ],
    # ... a blob of 5 chunks read 2 per batch: one getMore per further batch (GridFSReader's
    # CHUNKS_PER_BATCH is 16: 1 MB is one batch, 10 MB (40 chunks) three)
    "GET by id, cold, 5 chunks": [
        ("find", "images"),
        ("find", "fs.files"),
        ("find", "fs.chunks"),
        ("getMore", "fs.chunks"),
        ("getMore", "fs.chunks"),
    ],
    # ... the same blob again: read whole once by this instance, it has a local copy (GridFSStorage's
    # cache_dir, for blobs over the hot cache's BlobCache.MAX_BLOB), opened with no command at all
    "GET by id, cold, blob cached on disk": [("find", "images")],
}


def count(operation: str) -> int:
    return len(BUDGETS[operation])
