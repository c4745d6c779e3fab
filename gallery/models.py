import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from gallery.catalog import MAX_SEED, Size, get_model


def _running_without_lease(now) -> Q:
    """Running, but no worker holds it any more: its lease ran out, or it never had one."""
    return Q(Q(lease_until__lte=now) | Q(lease_until__isnull=True), status=Generation.Status.RUNNING)


class GenerationQuerySet(models.QuerySet):
    def stuck(self) -> "GenerationQuerySet":
        """Jobs whose message was lost (queued) or whose worker stopped (running, lease over)."""
        now = timezone.now()
        quiet = now - timedelta(seconds=settings.QWEN_REQUEUE_AFTER)
        return self.filter(
            Q(status=Generation.Status.QUEUED) | _running_without_lease(now),
            updated__lt=quiet,
        )


class Generation(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Done")
        PARTIAL = "partial", _("Partly done")
        FAILED = "failed", _("Failed")
        CANCELED = "canceled", _("Canceled")

    FINISHED = (Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations")
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    model = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    n = models.PositiveSmallIntegerField(default=1)
    seed = models.BigIntegerField()
    prompt_extend = models.BooleanField(default=True)
    watermark = models.BooleanField(default=False)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    status_detail = models.CharField(max_length=300, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    # Billing safety: each API call is recorded as in flight before it is made, and
    # each answer is saved before anything is downloaded, so a redelivered task resumes.
    answers = models.JSONField(default=list, blank=True)
    call_in_flight = models.SmallIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    unconfirmed_calls = models.PositiveSmallIntegerField(default=0)
    retries = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    api_seconds = models.FloatField(default=0)

    created = models.DateTimeField(default=timezone.now, db_index=True)
    updated = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = GenerationQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(fields=["owner", "-created"], name="generation_owner_created"),
            models.Index(fields=["status", "updated"], name="generation_status_updated",
                         condition=Q(status__in=["queued", "running"])),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(n__gte=1, n__lte=4), name="generation_n_1_to_4"),
            models.CheckConstraint(condition=Q(seed__gte=0, seed__lte=MAX_SEED), name="generation_seed_range"),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.size}: {self.prompt[:40]}"

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)

    @property
    def spec(self):
        return get_model(self.model)

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration(self) -> timedelta | None:
        if self.finished_at and self.started_at:
            return self.finished_at - self.started_at
        return None

    @property
    def pending_slots(self) -> range:
        """Placeholders for the images still to come, so the card keeps its shape."""
        return range(max(0, self.n - len(self.images.all())))

    def can_view(self, user) -> bool:
        """A job, its status and its error are its maker's (and staff's): a refused prompt stays private."""
        return user.is_active and (self.owner_id == user.pk or user.is_staff)

    def can_change(self, user) -> bool:
        return self.can_view(user)

    def seed_for(self, index: int) -> int:
        """Image i of a generation is made with seed + i, across calls as within one."""
        return (self.seed + index) % (MAX_SEED + 1)

    def claim(self, lease: timedelta) -> bool:
        """Take the job for this worker; False when another worker holds it or it is over."""
        now = timezone.now()
        claimable = Q(status=self.Status.QUEUED) | _running_without_lease(now)
        taken = Generation.objects.filter(claimable, pk=self.pk).update(
            status=self.Status.RUNNING, lease_until=now + lease,
            started_at=Coalesce(F("started_at"), now), updated=now,
        )
        if taken:
            self.refresh_from_db()
        return bool(taken)

    def cancel(self) -> bool:
        """Cancel a job no worker has started; a running call can't be taken back."""
        canceled = Generation.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.CANCELED, finished_at=timezone.now(), updated=timezone.now())
        self.refresh_from_db()
        return bool(canceled)

    def save_progress(self, **fields) -> None:
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=[*fields, "updated"])

    def finish(self, status: str, error_code: str = "", error_message: str = "") -> None:
        self.save_progress(status=status, error_code=error_code, error_message=error_message,
                           status_detail="", lease_until=None, call_in_flight=None,
                           finished_at=timezone.now())


class ImageQuerySet(models.QuerySet):
    def newest_first(self) -> "ImageQuerySet":
        return self.order_by("-created", "-id")

    def before(self, created, pk) -> "ImageQuerySet":
        """The keyset page after (created, pk) in newest-first order."""
        # The plain bound lets PostgreSQL start the index scan there instead of at the newest row.
        return self.filter(Q(created__lt=created) | Q(created=created, id__lt=pk), created__lte=created)

    def after(self, created, pk) -> "ImageQuerySet":
        return self.filter(Q(created__gt=created) | Q(created=created, id__gt=pk), created__gte=created)


class Image(models.Model):
    class Shape(models.TextChoices):
        SQUARE = "square", _("Square")
        LANDSCAPE = "landscape", _("Landscape")
        PORTRAIT = "portrait", _("Portrait")

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="images")
    # Copied from the generation so that gallery filters and pages need no join.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="images")
    model = models.CharField(max_length=64)
    shape = models.CharField(max_length=16, choices=Shape.choices)
    search = SearchVectorField(null=True, editable=False)
    index = models.PositiveSmallIntegerField()
    file = models.CharField(max_length=255, help_text="Storage key of the original PNG")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    seed = models.BigIntegerField()
    revised_prompt = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["generation", "index"]
        constraints = [
            models.UniqueConstraint(fields=["generation", "index"], name="image_unique_index"),
        ]
        indexes = [
            models.Index(F("created").desc(), F("id").desc(), name="image_newest"),
            models.Index(F("owner"), F("created").desc(), F("id").desc(), name="image_owner_newest"),
            models.Index(F("model"), F("created").desc(), F("id").desc(), name="image_model_newest"),
            GinIndex(fields=["search"], name="image_search"),
        ]

    def __str__(self) -> str:
        return f"{self.generation_id}/{self.index}"

    def can_view(self, user) -> bool:
        """Images are the team's: everyone signed in sees every image in the gallery."""
        return user.is_active

    def can_change(self, user) -> bool:
        """Deleting or changing an image is for the designer who made it, and staff."""
        return user.is_active and (self.owner_id == user.pk or user.is_staff)

    def rendition(self, spec: str) -> "Rendition | None":
        return next((r for r in self.renditions.all() if r.spec == spec), None)

    def delete_with_files(self) -> None:
        """Delete the row and its files together: if storage fails, the row stays."""
        from gallery import storage

        keys = [self.file, *self.renditions.values_list("file", flat=True)]
        with transaction.atomic():
            self.delete()
            storage.delete(keys)

    @property
    def grid(self) -> "Rendition | None":
        return self.rendition(Rendition.Spec.GRID)


class Favourite(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="favourites")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="favourites")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "image"], name="favourite_once")]

    def __str__(self) -> str:
        return f"{self.user} ♥ {self.image}"


class Rendition(models.Model):
    class Spec(models.TextChoices):
        GRID = "grid", "Grid (long edge 512)"
        CARD = "card", "Share card (long edge 256)"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="renditions")
    spec = models.CharField(max_length=16, choices=Spec.choices)
    file = models.CharField(max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "spec"], name="rendition_unique_spec")]

    def __str__(self) -> str:
        return self.file
