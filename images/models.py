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
    # None, not "", for "nobody" (open mode), exactly as in MongoDB.
    uploaded_by = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    label = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001  (None: no label, as in MongoDB)

    class Meta:
        db_table = "images"
        constraints = [
            models.UniqueConstraint(fields=["model_id", "sha256"], name="images_model_sha256_uniq")
        ]
        indexes = [
            models.Index(fields=["model_id", "-uploaded_at", "-image_id"], name="images_model_newest"),
            models.Index(fields=["-uploaded_at", "-image_id"], name="images_newest"),
            models.Index(
                fields=["model_id", "label", "-uploaded_at", "-image_id"], name="images_model_label_newest"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id}/{self.filename}"


class ApiKey(models.Model):
    """An API key in embedded mode: only the sha256 of the key is kept."""

    name = models.CharField(max_length=100, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.CharField(max_length=100)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)  # to within a minute: see apikeys
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_keys"

    def __str__(self) -> str:
        return self.name


class Lease(models.Model):
    """A short, expiring claim on a name, so that only one process makes a given derivative."""

    name = models.CharField(max_length=200, primary_key=True)
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "leases"

    def __str__(self) -> str:
        return self.name


class DerivativeUse(models.Model):
    """A stored derivative's size and last use, for removing the least recently used
    (images/derivative_cache.py)."""

    name = models.CharField(max_length=200, primary_key=True)
    size = models.BigIntegerField()
    used_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "derivative_uses"

    def __str__(self) -> str:
        return self.name


class Cover(models.Model):
    """A model's chosen cover image (images/covers.py); Mongo mode keeps the same in `covers`."""

    model_id = models.CharField(max_length=128, primary_key=True)
    image_id = models.CharField(max_length=24)
    set_at = models.DateTimeField()

    class Meta:
        db_table = "covers"

    def __str__(self) -> str:
        return f"{self.model_id}: {self.image_id}"
