"""The style the service replaces, for measuring only: Flask and pymongo's `GridFS`, whole blobs in memory.

Uploads are read whole, checked with Pillow's `verify()`, and `put` into GridFS with the model_id on the
files document; downloads `fs.get(id).read()` the whole blob and `send_file` it from memory. The image id
is the GridFS file id. Configured by BENCH_MONGO_URI and BENCH_MONGO_DB.
"""

import io
import os

import gridfs
from bson import ObjectId
from bson.errors import InvalidId
from flask import Flask, abort, jsonify, request, send_file
from PIL import Image
from pymongo import MongoClient

app = Flask(__name__)
_fs: dict[int, gridfs.GridFS] = {}


def fs() -> gridfs.GridFS:
    """One client per process, made after gunicorn forks (MongoClient is not fork-safe)."""
    pid = os.getpid()
    if pid not in _fs:
        client = MongoClient(os.environ["BENCH_MONGO_URI"])
        _fs[pid] = gridfs.GridFS(client[os.environ["BENCH_MONGO_DB"]])
    return _fs[pid]


@app.post("/upload")
def upload():
    file = request.files["file"]
    model_id = request.form["model_id"]
    data = file.read()
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception:  # noqa: BLE001  (any decoder error means "not an image")
        abort(422)
    file_id = fs().put(data, filename=file.filename, content_type=file.mimetype, model_id=model_id)
    return jsonify(image_id=str(file_id), model_id=model_id), 201


def send(grid_out: gridfs.GridOut):
    data = grid_out.read()
    return send_file(io.BytesIO(data), mimetype=grid_out.content_type or "image/jpeg")


@app.get("/images/<image_id>/content")
def image_content(image_id: str):
    try:
        return send(fs().get(ObjectId(image_id)))
    except (InvalidId, gridfs.NoFile):
        abort(404)


@app.get("/image/<model_id>")
def model_image(model_id: str):
    try:
        return send(fs().get_last_version(model_id=model_id))
    except gridfs.NoFile:
        abort(404)
