import base64
import hashlib
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import connection, models, transaction
from django.db.models import Count, F, Func, Min, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _

from gallery.catalog import MAX_SEED, Size, get_model
from gallery.messages import Message, dump, load, sentences


def _running_without_lease(now) -> Q:
    """Running, but no worker holds it any more: its lease ran out, or it never had one."""
    return Q(Q(lease_until__lte=now) | Q(lease_until__isnull=True), status=Generation.Status.RUNNING)


class GenerationQuerySet(models.QuerySet):
    def stranded(self) -> "GenerationQuerySet":
        """Running jobs no worker holds any more (lease over), quiet for QWEN_REQUEUE_AFTER."""
        now = timezone.now()
        return self.filter(_running_without_lease(now),
                           updated__lt=now - timedelta(seconds=settings.QWEN_REQUEUE_AFTER))

    def waiting_quietly(self) -> dict[str, list]:
        """Queued jobs unchanged for QWEN_REQUEUE_AFTER, oldest first, by model."""
        quiet = timezone.now() - timedelta(seconds=settings.QWEN_REQUEUE_AFTER)
        by_model: dict[str, list] = {}
        for pk, model in (self.filter(status=Generation.Status.QUEUED, updated__lt=quiet)
                          .order_by("created").values_list("pk", "model")):
            by_model.setdefault(model, []).append(pk)
        return by_model

    def waiting_for(self, model: str) -> "GenerationQuerySet":
        """Queued jobs of one model: each waits for a provider slot for its next call."""
        return self.filter(model=model, status=Generation.Status.QUEUED)

    def ready_for(self, model: str, now) -> "GenerationQuerySet":
        """Queued jobs of the model that may be taken now (not waiting out a backoff)."""
        return self.waiting_for(model).filter(Q(not_before__isnull=True) | Q(not_before__lte=now))

    def with_turn(self, model: str) -> "GenerationQuerySet":
        """Annotate each job with its designer's place in the round: calls of theirs running now
        (`active`) and when one of theirs last started (`served`); fewer and longer ago go first."""
        theirs = Generation.objects.filter(owner=OuterRef("owner"), model=model).order_by()
        running = (theirs.filter(status=Generation.Status.RUNNING).values("owner")
                   .annotate(count=Count("pk")).values("count"))
        served = theirs.filter(call_started_at__isnull=False).order_by("-call_started_at").values("call_started_at")
        return self.annotate(active=Coalesce(Subquery(running), 0), served=Subquery(served[:1]))

    def take_next(self, model: str, lease: timedelta) -> "Generation | None":
        """Claim the queued job of `model` whose turn it is, or None when none is ready.

        Round-robin between designers (the one with fewest calls running, then the one
        served longest ago), oldest first within a designer. Takers of one model go one at
        a time (an advisory lock for the transaction), so each sees the others' claims and
        two at once can't both serve the same designer; the take is a few milliseconds.
        """
        now = timezone.now()
        with transaction.atomic():
            with connection.cursor() as cursor:
                # JIT compiling costs more than this small query saves.
                cursor.execute("SET LOCAL jit = off")
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"take_next:{model}"])
            job = (self.ready_for(model, now).with_turn(model)
                   .order_by("active", F("served").asc(nulls_first=True), "created")
                   .select_for_update(skip_locked=True, of=("self",)).first())
            if job is None:
                return None
            job.save_progress(status=Generation.Status.RUNNING, lease_until=now + lease, not_before=None,
                              started_at=job.started_at or now, holder=uuid.uuid4())
        return job

    def created_between(self, start, end) -> "GenerationQuerySet":
        """Jobs created from start up to, not including, end."""
        return self.filter(created__gte=start, created__lt=end)

    def billed_per(self, *fields: str) -> models.QuerySet:
        """Images billed by the settled jobs here (ended, billed_images set), summed per value of fields.

        `day` is the day a job was created, in the studio's time zone.
        """
        day = TruncDate("created", tzinfo=timezone.get_default_timezone())
        return (self.filter(status__in=Generation.FINISHED, billed_images__isnull=False).annotate(day=day)
                .values(*fields).annotate(images=models.Sum("billed_images")).order_by(*fields))

    def held_per(self, *fields: str) -> models.QuerySet:
        """Images held by the jobs here still queued or running, and how many jobs, summed per value of fields."""
        return (self.filter(status__in=[Generation.Status.QUEUED, Generation.Status.RUNNING])
                .values(*fields).annotate(images=models.Sum("n"), jobs=models.Count("pk")).order_by(*fields))


class Generation(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Done")
        PARTIAL = "partial", _("Partly done")
        FAILED = "failed", _("Failed")
        CANCELED = "canceled", _("Canceled")

    FINISHED = (Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELED)
    QUEUE_DOWN = "queue_down"

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
    # What the card says, as gallery.messages codes, translated when shown: the status line while
    # the job waits or runs, and why it ended short (sentences, in order). error_code is the
    # provider's (or the studio's) name for the failure. status_detail and error_message hold the
    # English sentences of jobs from before the codes, shown as they are.
    detail_code = models.CharField(max_length=64, blank=True, default="", db_default="")
    detail_params = models.JSONField(blank=True, default=dict, db_default={})
    error_notes = models.JSONField(blank=True, default=list, db_default=[])
    status_detail = models.CharField(max_length=300, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    # Billing safety: each API call is recorded as in flight before it is made, and
    # each answer is saved before anything is downloaded, so a redelivered task resumes.
    answers = models.JSONField(default=list, blank=True)
    call_in_flight = models.SmallIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    unconfirmed_calls = models.PositiveSmallIntegerField(default=0)
    retries = models.PositiveSmallIntegerField(default=0)  # of the API, after 5xx answers (at most MAX_RETRIES)
    waits = models.PositiveSmallIntegerField(default=0)  # for storage or Redis to come back (no limit)
    # Images the provider billed, settled when the job ends; until then the job holds n of its
    # maker's daily quota.
    billed_images = models.PositiveSmallIntegerField(null=True, blank=True)
    # Running: a worker holds the job until then. Queued: it may be taken from `not_before` on.
    lease_until = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    # When its latest call started: the fair queue's round-robin and the provider limits read it.
    call_started_at = models.DateTimeField(null=True, blank=True)
    # Which turn holds the job while it runs: the message that held it may take it back at once.
    holder = models.UUIDField(null=True, blank=True, editable=False)
    # Since when the provider has answered its calls with 429s only (None once one is answered).
    throttled_since = models.DateTimeField(null=True, blank=True)
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
            models.Index(fields=["model", "created"], name="generation_waiting", condition=Q(status="queued")),
            models.Index(fields=["owner", "model", "-call_started_at"], name="generation_owner_served"),
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

    @property
    def waits_for_the_queue(self) -> bool:
        """Its message could not be sent (the broker was down): the sweeper sends it once it is back."""
        return self.status == self.Status.QUEUED and self.detail_code == self.QUEUE_DOWN

    @staticmethod
    def saying(detail: Message | None) -> dict:
        """The fields that make the card's status line say `detail` (nothing, for None)."""
        if detail is None:
            return {"detail_code": "", "detail_params": {}, "status_detail": ""}
        return {"detail_code": detail.code, "detail_params": detail.to_json()["params"], "status_detail": ""}

    @property
    def detail_text(self) -> str:
        """The status line in the reader's language (a job from before the codes keeps its English)."""
        if not self.detail_code:
            return self.status_detail
        return str(Message.from_json({"code": self.detail_code, "params": self.detail_params}))

    @property
    def reasons(self) -> list[Message]:
        """Why the job ended short, or what went wrong on the way, one message per sentence.

        A job from before the codes has its English sentence, which a Message shows as it is."""
        return load(self.error_notes) or ([Message(self.error_message)] if self.error_message else [])

    @property
    def error_text(self) -> str:
        """The reasons in the reader's language."""
        return sentences(self.reasons)

    @property
    def calls_left(self) -> int:
        """API calls the job still has to make (none once every answer is saved)."""
        spec = self.spec
        return len(spec.calls_for(self.n)) - len(self.answers) if spec else 0

    @property
    def is_waiting(self) -> bool:
        """Queued for its turn, before its first call or between calls."""
        return self.status == self.Status.QUEUED

    def can_cancel(self, user) -> bool:
        """A job waiting for its turn can be canceled by its maker; a call under way can't be taken back."""
        return self.is_waiting and self.can_change(user)

    @property
    def can_try_again(self) -> bool:
        """An ended job that left images wanting: the card offers its settings back to edit."""
        return self.status in (self.Status.FAILED, self.Status.PARTIAL, self.Status.CANCELED)

    def claim(self, lease: timedelta, holder=None) -> bool:
        """Take back a running job whose worker stopped or which waited to retry, or which `holder` (the
        turn that held it) left when the database failed; False when another worker holds it.

        Queued jobs are taken in their turn, by GenerationQuerySet.take_next.
        """
        now = timezone.now()
        mine = Q(status=self.Status.RUNNING, holder=holder) if holder else Q(pk__in=[])
        taken = Generation.objects.filter(_running_without_lease(now) | mine, pk=self.pk).update(
            lease_until=now + lease, started_at=Coalesce(F("started_at"), now), updated=now, holder=uuid.uuid4(),
        )
        if taken:
            self.refresh_from_db()
        return bool(taken)

    def requeue(self, detail: Message | None = None, not_before=None, **progress) -> None:
        """Give the job back to the queue to wait for its next call's turn (after `not_before`),
        saving `progress` and whether a call of its is unconfirmed."""
        self.save_progress(status=self.Status.QUEUED, lease_until=None, not_before=not_before,
                           call_in_flight=self.call_in_flight, **self.saying(detail), **progress)

    def jobs_ahead(self) -> int:
        """Queued jobs of the same model that the round-robin will start before this one."""
        owners = list(Generation.objects.waiting_for(self.model).order_by().values("owner")
                      .annotate(queued=Count("pk"), first=Min("created")).with_turn(self.model)
                      .values("owner", "queued", "first", "active", "served"))
        mine = next((o for o in owners if o["owner"] == self.owner_id), None)
        if mine is None:
            return 0
        rank = Generation.objects.waiting_for(self.model).filter(
            owner=self.owner_id, created__lt=self.created).count()

        def turn(owner):  # take_next's order, for each designer's oldest waiting job
            served = owner["served"]
            return owner["active"], served is not None, served.timestamp() if served else 0, owner["first"]

        ahead = rank
        for owner in owners:
            if owner["owner"] != self.owner_id:
                # One of theirs each round before this job's round, and one more in it if they go first.
                ahead += min(owner["queued"], rank) + (owner["queued"] > rank and turn(owner) < turn(mine))
        return ahead

    def cancel(self) -> bool:
        """Cancel a job waiting for its turn. Images of its earlier calls stay, and are what it billed."""
        with transaction.atomic():
            job = Generation.objects.select_for_update().filter(pk=self.pk, status=self.Status.QUEUED).first()
            if job is not None:
                job.finish(self.Status.CANCELED)
        self.refresh_from_db()
        return job is not None

    class LostHold(Exception):
        """Another turn took the job over (this one outlived its lease): this one must stop."""

    def save_progress(self, **fields) -> None:
        """Save these fields, only while the turn that holds the job (if any) still does."""
        holder = self.holder
        for name, value in fields.items():
            setattr(self, name, value)
        fields["updated"] = self.updated = timezone.now()
        rows = Generation.objects.filter(pk=self.pk)
        if holder is not None:
            rows = rows.filter(holder=holder)
        if not rows.update(**fields):
            raise self.LostHold(f"job {self.pk} is held by another turn")

    @property
    def images_answered(self) -> int:
        """Images the provider sent back, and so billed (API.md: it bills the images it returns)."""
        return sum(len(answer["results"]) for answer in self.answers)

    def finish(self, status: str, error_code: str = "", reasons: list[Message] = ()) -> None:
        """End the job, settling its quota to what the provider billed: images that never came are given back."""
        # A call still unconfirmed when the job ends may have been billed: the card says so.
        unconfirmed = self.unconfirmed_calls + (self.call_in_flight is not None)
        self.save_progress(status=status, error_code=error_code, error_notes=dump(reasons), error_message="",
                           **self.saying(None), lease_until=None, not_before=None, call_in_flight=None,
                           unconfirmed_calls=unconfirmed, finished_at=timezone.now(),
                           billed_images=self.images_answered)


class ImageQuerySet(models.QuerySet):
    def in_collection(self, collection) -> "ImageQuerySet":
        """The collection's images, carrying their item's copy of (created, id) to page by: newest_first,
        before and after then read the item table's index (collection_item_newest), not every image."""
        return self.filter(collection_items__collection=collection).annotate(
            page_created=F("collection_items__image_created"), page_id=F("collection_items__image_id"))

    def for_tiles(self, user) -> "ImageQuerySet":
        """With what a grid tile shows from other rows, in the same query (a prefetch and two joined models
        cost more than the query itself): the generation's `prompt`, the `owner_name`, the grid thumbnail's
        `grid_width` and `grid_height` (None until one is made), and whether it `is_favourite` of user.
        Of the image itself, only what a tile, its links and a page's cursor read."""
        grid = models.FilteredRelation("renditions", condition=Q(renditions__spec=Rendition.Spec.GRID))
        favourite = Favourite.objects.filter(user=user.pk if user else None, image=OuterRef("pk"))
        return (self.only("id", "generation_id", "owner_id", "model", "width", "height", "revised_prompt", "created")
                .annotate(grid_rendition=grid)
                .annotate(prompt=F("generation__prompt"), owner_name=F("owner__username"),
                          grid_width=F("grid_rendition__width"), grid_height=F("grid_rendition__height"),
                          is_favourite=models.Exists(favourite)))

    def page_keys(self) -> tuple[str, str]:
        """The fields these images page by, newest first: (created, id), or in_collection's copies."""
        return ("page_created", "page_id") if "page_created" in self.query.annotations else ("created", "id")

    def newest_first(self) -> "ImageQuerySet":
        created, pk = self.page_keys()
        return self.order_by(f"-{created}", f"-{pk}")

    def before(self, created, pk) -> "ImageQuerySet":
        """The keyset page after (created, pk) in newest-first order."""
        # The plain bound lets PostgreSQL start the index scan there instead of at the newest row.
        at, key = self.page_keys()
        older = Q(**{f"{at}__lt": created}) | Q(**{at: created, f"{key}__lt": pk})
        return self.filter(older, **{f"{at}__lte": created})

    def after(self, created, pk) -> "ImageQuerySet":
        at, key = self.page_keys()
        newer = Q(**{f"{at}__gt": created}) | Q(**{at: created, f"{key}__gt": pk})
        return self.filter(newer, **{f"{at}__gte": created})


class TsFilter(Func):
    """ts_filter(search, weights): the lexemes of Image.search with one of `weights` ('{a}', '{a,b}')."""

    function = "ts_filter"
    output_field = SearchVectorField()

    def __init__(self, weights: str):
        super().__init__(F("search"), Value(weights))


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
            # One per tier of a search by relevance (search.FIELDS): the prompt, the prompt or revised
            # prompt, anywhere. A word found only elsewhere is not in the first two at all.
            GinIndex(TsFilter("{a}"), name="image_search_prompt"),
            GinIndex(TsFilter("{a,b}"), name="image_search_main"),
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


class Quota(models.Model):
    """A designer's own daily allowance of images, set by staff; without one, QWEN_DAILY_IMAGE_QUOTA."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="quota")
    daily_images = models.PositiveIntegerField(
        null=True, blank=True, help_text="Images a day; empty for the studio's default (QWEN_DAILY_IMAGE_QUOTA).")

    def __str__(self) -> str:
        return f"{self.user}: {self.daily_images if self.daily_images is not None else 'default'}"


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


class CollectionQuerySet(models.QuerySet):
    def for_list(self) -> "CollectionQuerySet":
        """With the owner, the number of images and the first image's id, for the collections page."""
        first = CollectionItem.objects.filter(collection=models.OuterRef("pk")).order_by("position", "id")
        return (self.select_related("owner")
                .annotate(image_count=models.Count("items"), cover_id=models.Subquery(first.values("image_id")[:1])))


class Collection(models.Model):
    """A named, ordered set of gallery images, made by one designer and seen by the whole team."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections")
    name = models.CharField(max_length=120)
    images = models.ManyToManyField(Image, through="CollectionItem", related_name="collections")
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)

    objects = CollectionQuerySet.as_manager()

    class Meta:
        ordering = ["-updated", "-id"]
        indexes = [models.Index(fields=["owner", "-updated"], name="collection_owner_updated")]

    def __str__(self) -> str:
        return self.name

    def can_view(self, user) -> bool:
        return user.is_active

    def can_change(self, user) -> bool:
        """Adding, removing, reordering, renaming and deleting are for its maker and staff."""
        return user.is_active and (self.owner_id == user.pk or user.is_staff)

    def ordered_images(self) -> ImageQuerySet:
        return Image.objects.filter(collection_items__collection=self).order_by(
            "collection_items__position", "collection_items__id")

    def add(self, image_ids: list[int]) -> int:
        """Append the images not in it yet, in the order given; return how many were added."""
        with transaction.atomic():
            # The lock keeps two adds from taking the same positions.
            Collection.objects.select_for_update().filter(pk=self.pk).first()
            present = set(self.items.values_list("image_id", flat=True))
            created = dict(Image.objects.filter(pk__in=image_ids).values_list("pk", "created"))
            new = [pk for pk in dict.fromkeys(image_ids) if pk in created and pk not in present]
            last = self.items.aggregate(last=models.Max("position"))["last"]
            start = 0 if last is None else last + 1
            CollectionItem.objects.bulk_create(
                [CollectionItem(collection=self, image_id=pk, image_created=created[pk], position=start + i)
                 for i, pk in enumerate(new)],
                ignore_conflicts=True)
            self.save(update_fields=["updated"])
        return len(new)

    def remove(self, image_ids: list[int]) -> int:
        with transaction.atomic():
            removed, _ = self.items.filter(image_id__in=image_ids).delete()
            self.save(update_fields=["updated"])
        return removed

    def reorder(self, image_ids: list[int]) -> None:
        """Put the images in this order; members not named keep their order after them."""
        with transaction.atomic():
            Collection.objects.select_for_update().filter(pk=self.pk).first()
            items = {item.image_id: item for item in self.items.order_by("position", "id")}
            named = [items.pop(pk) for pk in dict.fromkeys(image_ids) if pk in items]
            ordered = named + list(items.values())
            for position, item in enumerate(ordered):
                item.position = position
            CollectionItem.objects.bulk_update(ordered, ["position"])
            self.save(update_fields=["updated"])

    def move(self, image_id: int, offset: int) -> None:
        """Move one image earlier (-1) or later (+1), the keyboard's way to reorder."""
        order = list(self.items.order_by("position", "id").values_list("image_id", flat=True))
        if image_id not in order:
            return
        index = order.index(image_id)
        target = min(max(index + offset, 0), len(order) - 1)
        order.insert(target, order.pop(index))
        self.reorder(order)


class CollectionItem(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="items")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="collection_items")
    position = models.PositiveIntegerField()
    added = models.DateTimeField(default=timezone.now)
    # The image's own `created`, which never changes: the gallery filtered to a collection pages newest
    # first through this table's index alone, whatever the collection's size (gallery.browse).
    image_created = models.DateTimeField()

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["collection", "image"], name="collection_item_once")]
        indexes = [
            models.Index(fields=["collection", "position"], name="collection_item_position"),
            models.Index(F("collection"), F("image_created").desc(), F("image").desc(), name="collection_item_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.collection_id}#{self.position}: {self.image_id}"


class ShareLinkQuerySet(models.QuerySet):
    def managed_by(self, user) -> "ShareLinkQuerySet":
        """The links user may manage (ShareLink.can_change): their own, or every one for staff."""
        return self if user.is_staff else self.filter(owner=user)

    def live(self) -> "ShareLinkQuerySet":
        now = timezone.now()
        # A designer who leaves the studio takes their links with them.
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True,
                           owner__is_active=True)


class ShareLink(models.Model):
    """A link for people outside the studio to one image, one generation or one collection.

    The token is never stored: the row keeps a random `secret` and the SHA-256 of the token, and
    the token is an HMAC of the secret under SECRET_KEY. A database reader alone can neither use a
    link nor make one, yet the maker can copy it again from /shared/.
    """

    class Expiry(models.TextChoices):
        DAY = "1", _("1 day")
        WEEK = "7", _("7 days")
        MONTH = "30", _("30 days")
        NEVER = "never", _("Never")

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="share_links")
    image = models.ForeignKey(Image, null=True, blank=True, on_delete=models.CASCADE, related_name="share_links")
    generation = models.ForeignKey(Generation, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="share_links")
    collection = models.ForeignKey(Collection, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="share_links")
    secret = models.CharField(max_length=64, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    show_parameters = models.BooleanField(default=False)
    allow_downloads = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    views = models.PositiveIntegerField(default=0)
    last_viewed_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    objects = ShareLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(image__isnull=False, generation__isnull=True, collection__isnull=True)
                           | Q(image__isnull=True, generation__isnull=False, collection__isnull=True)
                           | Q(image__isnull=True, generation__isnull=True, collection__isnull=False)),
                name="share_link_covers_one_thing"),
        ]
        indexes = [models.Index(fields=["owner", "-created"], name="share_link_owner_created")]

    def __str__(self) -> str:
        return f"{self.kind} link by {self.owner}"

    @staticmethod
    def token_for(secret: str) -> str:
        mac = salted_hmac("gallery.ShareLink.token", secret, algorithm="sha256").digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()  # 192 bits, 32 URL-safe characters

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def create(cls, owner, target, *, expiry: str, show_parameters: bool, allow_downloads: bool) -> "ShareLink":
        secret = secrets.token_hex(32)
        days = None if expiry == cls.Expiry.NEVER else int(expiry)
        return cls.objects.create(
            owner=owner, **{target._meta.model_name: target},
            secret=secret, digest=cls.digest_of(cls.token_for(secret)),
            show_parameters=show_parameters, allow_downloads=allow_downloads,
            expires_at=timezone.now() + timedelta(days=days) if days else None)

    @classmethod
    def find_live(cls, token: str) -> "ShareLink | None":
        """The live link this token opens; None for an unknown, expired or revoked one alike."""
        if not token or len(token) > 64:
            return None
        return (cls.objects.live().select_related("owner", "image", "generation", "collection")
                .filter(digest=cls.digest_of(token)).first())

    @property
    def token(self) -> str:
        return self.token_for(self.secret)

    @property
    def kind(self) -> str:
        return "image" if self.image_id else "generation" if self.generation_id else "collection"

    @property
    def target(self):
        return self.image or self.generation or self.collection

    @property
    def is_live(self) -> bool:
        # As live() has it: a deactivated designer's links end with the account.
        return (self.owner.is_active and self.revoked_at is None
                and (self.expires_at is None or self.expires_at > timezone.now()))

    def can_view(self, user) -> bool:
        """Managing a link (seeing it on /shared/, copying, revoking) is for its maker and staff."""
        return user.is_active and (self.owner_id == user.pk or user.is_staff)

    def can_change(self, user) -> bool:
        return self.can_view(user)

    def images(self) -> ImageQuerySet:
        """What the link shows, in the order it shows it (without the search vector, which it never needs)."""
        if self.image_id:
            images = Image.objects.filter(pk=self.image_id)
        elif self.generation_id:
            images = Image.objects.filter(generation_id=self.generation_id).order_by("index")
        else:
            images = self.collection.ordered_images()
        return images.defer("search")

    def revoke(self) -> None:
        ShareLink.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.refresh_from_db(fields=["revoked_at"])

    def record_view(self) -> None:
        """One UPDATE per page view; image requests under the link write nothing."""
        ShareLink.objects.filter(pk=self.pk).update(views=F("views") + 1, last_viewed_at=timezone.now())
