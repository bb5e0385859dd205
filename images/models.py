"""The embedded mode's image records (Django's database). Mongo mode keeps the same fields in MongoDB."""

from django.db import models


class StoredImage(models.Model):
    image_id = models.CharField(max_length=24, primary_key=True)
    model_id = models.CharField(max_length=128)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=64)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    uploaded_at = models.DateTimeField()

    class Meta:
        db_table = "images"
        constraints = [
            models.UniqueConstraint(fields=["model_id", "sha256"], name="images_model_sha256_uniq")
        ]
        indexes = [
            models.Index(fields=["model_id", "-uploaded_at", "-image_id"], name="images_model_newest"),
            models.Index(fields=["-uploaded_at", "-image_id"], name="images_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id}/{self.filename}"
