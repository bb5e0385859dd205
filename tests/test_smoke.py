from django.core.files.uploadedfile import SimpleUploadedFile

from tests.samples import image_bytes


def test_upload_then_read_back(store, client):
    data = image_bytes("PNG")
    response = client.post("/upload", {"file": SimpleUploadedFile("a.png", data), "model_id": "m1"})
    assert response.status_code == 201, response.content
    image_id = response.json()["image_id"]
    content = client.get(f"/images/{image_id}/content")
    # Small blobs come whole from the hot cache; larger ones stream.
    body = b"".join(content.streaming_content) if content.streaming else content.content
    assert body == data
