"""The fault suite's harness (issue 9): the Procfile's worker and beat as real processes against the test
database, a Redis of the suite's own as their broker and limits store, a TCP proxy in front of moto's S3
that can go down, batches of jobs from several designers, and the audit every scenario ends with.

The audit compares three records that must agree after any fault: the jobs in the database, the objects in
S3 (downloaded and hashed) and apisim's ledger of billed images.
"""

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from urllib.parse import quote

import boto3
import redis
import requests
from celery import Celery
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count
from django.utils import timezone, translation

from apisim.paint import paint
from gallery.models import Generation, Image, Rendition
from tests.conftest import BUCKET, ROOT, PrivateRedis, free_port, wait_for
from tests.test_pipeline import make_generation

MODEL = "wan2.2-t2i-flash"
# Every scenario's environment unless it says otherwise: short calls, a lease of connect + read + 60 s,
# a sweep every 3 s re-sending work lost for 5 s.
BASE_ENVIRONMENT = {
    "QWEN_MAX_CONCURRENT": "4",
    "QWEN_CONNECT_TIMEOUT": "2",
    "QWEN_READ_TIMEOUT": "6",
    "QWEN_SLOT_LEASE": "6",
    "QWEN_SWEEP_SECONDS": "3",
    "QWEN_REQUEUE_AFTER": "5",
}
SIM_LATENCY = 0.4
RESULTS_FILE = ROOT / "var" / "faults-results.json"
SUMMARIES: list[str] = []


def procfile(name: str) -> list[str]:
    """The Procfile's command for one process type, as the Procfile starts it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        kind, _, command = line.partition(":")
        if kind.strip() == name:
            return shlex.split(command)
    raise LookupError(f"the Procfile has no {name!r} line")


class Service:
    """One Procfile process in a process group of its own, logging to var/<log_name>."""

    def __init__(self, name: str, args: list[str], ready_marker: str, log_name: str):
        self.name = name
        self.args = args
        self.ready_marker = ready_marker
        self.log_path = ROOT / "var" / log_name
        self.process: subprocess.Popen | None = None
        self.environment: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, environment: dict[str, str], timeout: float = 60) -> None:
        self.environment = environment
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {datetime.now().isoformat()} starting {shlex.join(self.args)}\n".encode())
            offset = log.tell()
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return self.ready_marker.encode() in log.read()
        ready.__name__ = f"{self.name}_ready"
        wait_for(ready, timeout=timeout, interval=0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown, nothing acknowledged or released."""
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """A warm shutdown (SIGTERM), then SIGKILL if it takes longer than timeout."""
        if not self.running:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class TcpProxy:
    """A TCP forwarder of the suite's own in front of a service; `down()` refuses new connections and cuts the
    open ones, as when the service's host goes away, until `up()`."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.delay = 0.0  # seconds each chunk sent to the service waits: a slow service

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="faults-proxy", daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            for source, sink, slow in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, slow), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(65536):
                if slow and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for sock in (source, sink):
                    self._open.discard(sock)
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    sock.close()


class Stack:
    """The suite's own broker and limits Redis, the S3 proxy, and the Procfile's worker and beat."""

    def __init__(self, sim_url: str, s3_endpoint: str):
        self.sim_url = sim_url
        self.redis = PrivateRedis()
        self.redis.start()
        host, port = s3_endpoint.removeprefix("http://").split(":")
        self.s3_proxy = TcpProxy(host, int(port))
        self.s3_proxy.up()
        worker = procfile("worker") + ["-n", f"faults-{os.getpid()}@%h"]
        beat = procfile("beat")
        schedule = f"var/faults-beat-{os.getpid()}-schedule"
        beat[beat.index("--schedule") + 1] = schedule
        self.worker = Service("worker", worker, " ready.", "test-faults-worker.log")
        self.beat = Service("beat", beat, "beat: Starting", "test-faults-beat.log")

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def limits_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/1"

    def environment(self, **overrides: str) -> dict[str, str]:
        database = connection.settings_dict
        credentials = quote(database["USER"] or "postgres", safe="")
        if database.get("PASSWORD"):
            credentials += ":" + quote(database["PASSWORD"], safe="")
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
        return inherited | {
            "DJANGO_DEBUG": "true",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": (f"postgres://{credentials}@{database['HOST'] or '127.0.0.1'}:"
                             f"{database['PORT'] or 5432}/{database['NAME']}"),
            "CELERY_BROKER_URL": self.broker_url,
            "QWEN_LIMITS_REDIS_URL": self.limits_url,
            "QWEN_API_BASE_URL": self.sim_url,
            "QWEN_API_KEY": "test-key",
            "QWEN_DOWNLOAD_HOSTS": self.sim_url.removeprefix("http://"),
            "AWS_STORAGE_BUCKET_NAME": BUCKET,
            "AWS_S3_ENDPOINT_URL": self.s3_proxy.url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_S3_REGION_NAME": "us-east-1",
        } | BASE_ENVIRONMENT | overrides

    def ready(self, **overrides: str) -> None:
        """Everything up, the worker and beat running with this environment, the limits store empty."""
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start()
        self.s3_proxy.up()
        self.s3_proxy.delay = 0.0
        with redis.Redis.from_url(self.limits_url) as limits:
            limits.flushdb()
        environment = self.environment(**overrides)
        for service in (self.worker, self.beat):
            if not service.running or service.environment != environment:
                service.stop()
                if service is self.beat:
                    self.forget_schedule()
                service.start(environment)

    def send(self, batch: "Batch") -> None:
        batch.sent_at = time.monotonic()
        self.enqueue(batch.ids)

    def enqueue(self, ids) -> None:
        """Send each job's message to the worker's queue, as the generate view does on commit."""
        sender = Celery("faults-sender", broker=self.broker_url, set_as_current=False)
        try:
            for generation_id in ids:
                sender.send_task("gallery.tasks.run_generation", args=[str(generation_id)], queue="celery")
        finally:
            sender.close()

    def close(self) -> None:
        for service in (self.worker, self.beat):
            service.stop(timeout=15)
        self.s3_proxy.down()
        self.redis.stop()
        self.forget_schedule()

    @staticmethod
    def forget_schedule() -> None:
        """Beat starts with no memory of earlier sweeps (its schedule file, in whatever form shelve made it)."""
        for path in (ROOT / "var").glob(f"faults-beat-{os.getpid()}-schedule*"):
            path.unlink(missing_ok=True)


def sim_config(sim, **changes) -> None:
    requests.post(f"{sim.url}/_sim/config", json=changes, timeout=5).raise_for_status()


def ledger(sim) -> dict:
    response = requests.get(f"{sim.url}/_sim/ledger", timeout=10)
    assert response.status_code == 200, f"apisim has no usable /_sim/ledger ({response.status_code})"
    return response.json()


# --- a batch of jobs --------------------------------------------------------------------------------------


@dataclass
class Batch:
    tag: str
    ids: list = field(default_factory=list)
    prompts: dict = field(default_factory=dict)  # id -> prompt
    sent_at: float = 0.0

    def pick(self, count: int, n: int | None = None, taken: set | None = None) -> list:
        """`count` jobs from the middle of the batch (asking n images, if given), none of `taken`, which
        gains them: jobs to match faults to, so that the faults fire mid-batch."""
        taken = taken if taken is not None else set()
        sizes = dict(self.jobs().values_list("pk", "n"))
        middle = self.ids[len(self.ids) // 4:]
        chosen = [pk for pk in middle if pk not in taken and (n is None or sizes[pk] == n)][:count]
        assert len(chosen) == count, f"the batch has too few jobs of {n} images"
        taken.update(chosen)
        return chosen

    def jobs(self):
        return Generation.objects.filter(pk__in=self.ids)

    def finished(self) -> int:
        return self.jobs().filter(status__in=Generation.FINISHED).count()

    def storing(self):
        """Jobs held by a worker with an answer saved and no call in flight: storing its images."""
        return (self.jobs().filter(status=Generation.Status.RUNNING, call_in_flight__isnull=True)
                .exclude(answers=[]))

    def calls_in_flight(self) -> dict:
        """Jobs whose call the database shows as made but not answered, and the images each may cost."""
        return dict(self.jobs().filter(status=Generation.Status.RUNNING, call_in_flight__isnull=False)
                    .values_list("pk", "n"))


def make_batch(tag: str, designers: int = 4, per_designer: int = 13, n_for=lambda index: 2 if index % 3 == 0 else 1,
               stack: Stack | None = None) -> Batch:
    """per_designer jobs from each of `designers` designers, interleaved as they would arrive, sent to the
    worker if `stack` is given; each prompt is unique ("[tag dD-JJ] …"), so a fault can `match` one job."""
    batch = Batch(tag)
    owners = [User.objects.create_user(f"{tag}-designer{d}", f"{tag}{d}@example.com", "pw") for d in range(designers)]
    for index in range(per_designer):
        for d, owner in enumerate(owners):
            prompt = f"[{tag} d{d}-{index:02d}] a lighthouse on a cliff at dusk, 电影感"
            job = make_generation(owner, prompt=prompt, model=MODEL, width=512, height=512,
                                  n=n_for(index * designers + d), seed=1000 + 10 * (index * designers + d))
            batch.ids.append(job.pk)
            batch.prompts[job.pk] = prompt
    if stack is not None:
        stack.send(batch)
    return batch


def mid_batch(batch: Batch, finished: int = 10, in_flight: int = 1, storing: int = 0, timeout: float = 60) -> dict:
    """Wait until `finished` jobs are done, at least `in_flight` calls are in flight and `storing` jobs are
    storing a saved answer's images; return the calls in flight."""
    def fault_time():
        calls = batch.calls_in_flight()
        if batch.finished() < finished or len(calls) < in_flight:
            return None
        if storing and batch.storing().count() < storing:
            return None
        return calls
    return wait_for(fault_time, timeout=timeout, interval=0.02)


def wait_terminal(batch: Batch, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if batch.finished() == len(batch.ids):
            return True
        time.sleep(0.5)
    return False


# --- the audit -------------------------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    faults: str
    jobs: int = 0
    images_asked: int = 0
    succeeded: int = 0
    partial: int = 0
    failed: int = 0
    not_finished: int = 0
    failed_why: dict = field(default_factory=dict)
    billed: int = 0
    stored: int = 0
    allowed_excess: int = 0
    duplicates: int = 0
    orphans: int = 0
    unconfirmed_jobs: int = 0
    in_flight_at_fault: int = 0
    recover_s: float | None = None
    drain_s: float | None = None
    total_s: float = 0.0
    problems: list = field(default_factory=list)

    def line(self) -> str:
        why = "; ".join(f"{count}× {reason}" for reason, count in self.failed_why.items()) or "-"
        recover = "-" if self.recover_s is None else f"{self.recover_s:.1f}s"
        drain = "-" if self.drain_s is None else f"{self.drain_s:.1f}s"
        return (f"[faults] {self.scenario}: jobs {self.jobs} ({self.images_asked} images), faults: {self.faults}; "
                f"succeeded {self.succeeded}, partial {self.partial}, failed {self.failed}"
                f"{f', NOT FINISHED {self.not_finished}' if self.not_finished else ''} (why: {why}); "
                f"billed {self.billed}, stored {self.stored} (excess allowed {self.allowed_excess}, in flight at "
                f"fault {self.in_flight_at_fault}), duplicates {self.duplicates}, orphans {self.orphans}, "
                f"jobs showing unconfirmed calls {self.unconfirmed_jobs}; recovered {recover}, all done {drain} "
                f"after the fault ended; scenario {self.total_s:.0f}s")


def record(figures: Figures) -> None:
    SUMMARIES.append(figures.line())
    print(figures.line())
    results = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    results[figures.scenario] = asdict(figures) | {"at": timezone.now().isoformat(), "host": socket.gethostname(),
                                                   "cpus": os.cpu_count()}
    RESULTS_FILE.write_text(json.dumps(results, indent=2, ensure_ascii=False))


def s3_client():
    from django.conf import settings

    return boto3.client("s3", endpoint_url=settings.AWS_S3_ENDPOINT_URL, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def stored_objects(ids) -> dict[str, str]:
    """Every object in the bucket under these jobs' folders: key -> the job id."""
    wanted = {str(pk) for pk in ids}
    found = {}
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="generations/"):
        for item in page.get("Contents", []):
            folder = item["Key"].split("/")[1]
            if folder in wanted:
                found[item["Key"]] = folder
    return found


@translation.override("en")  # the job cards' words are checked in English, whatever a request left active
def audit(batch: Batch, sim, figures: Figures, *, restored_at: datetime | None, allowed_excess: int,
          expected_bad: dict | None = None, finished_in_time: bool = True,
          done_within: float | None = None) -> Figures:
    """Check what issue 9 asks after any fault, recording the figures, then fail on any problem found.

    expected_bad: job id -> words its message must hold, for jobs a permanent fault may end partial or
    failed; every other job must have succeeded. done_within: seconds after restored_at by which every job
    must have ended, where the issue asks for work to resume at once rather than after a lease.
    """
    expected_bad = expected_bad or {}
    problems = figures.problems
    jobs = {job.pk: job for job in batch.jobs()}
    ids = list(jobs)
    figures.jobs = len(jobs)
    figures.images_asked = sum(job.n for job in jobs.values())
    statuses = Counter(job.status for job in jobs.values())
    figures.succeeded = statuses[Generation.Status.SUCCEEDED]
    figures.partial = statuses[Generation.Status.PARTIAL]
    figures.failed = statuses[Generation.Status.FAILED]
    figures.not_finished = sum(not job.is_finished for job in jobs.values())
    figures.failed_why = dict(Counter(f"{job.status} {job.error_code}: {job.error_text[:120]}"
                                      for job in jobs.values()
                                      if job.status in (Generation.Status.PARTIAL, Generation.Status.FAILED)))
    figures.allowed_excess = allowed_excess
    figures.unconfirmed_jobs = sum(job.unconfirmed_calls > 0 for job in jobs.values())

    # every job in a terminal state
    if not finished_in_time or figures.not_finished:
        stuck = [f"{job.prompt[:14]} {job.status} detail={job.detail_text!r} call_in_flight={job.call_in_flight} "
                 f"attempts={job.attempts} retries={job.retries} lease_until={job.lease_until:%H:%M:%S}"
                 if job.lease_until else f"{job.prompt[:14]} {job.status} detail={job.detail_text!r}"
                 for job in jobs.values() if not job.is_finished]
        problems.append(f"{len(stuck)} jobs not finished in time: {stuck[:8]}")

    # no job failed for a fault that went away; those a permanent fault ended say why
    for pk, job in jobs.items():
        if pk in expected_bad:
            if job.status not in (Generation.Status.PARTIAL, Generation.Status.FAILED) or not any(
                    word.lower() in job.error_text.lower() for word in expected_bad[pk]):
                problems.append(f"{job.prompt[:14]} {job.status} {job.error_code}: {job.error_text!r} "
                                f"(expected partial/failed saying one of {expected_bad[pk]})")
        elif job.is_finished and job.status != Generation.Status.SUCCEEDED:
            problems.append(f"{job.prompt[:14]} ended {job.status} {job.error_code}: {job.error_text!r} "
                            "for a fault that went away")

    # every image row names a stored original with its SHA-256; S3 holds exactly the objects the rows name
    images = list(Image.objects.filter(generation_id__in=ids).order_by("generation_id", "index"))
    figures.stored = len(images)
    duplicate_rows = (Image.objects.filter(generation_id__in=ids).values("generation_id", "index")
                      .annotate(rows=Count("pk")).filter(rows__gt=1).count())
    same_bytes = sum(count - 1 for count in Counter((image.generation_id, image.sha256) for image in images).values())
    figures.duplicates = duplicate_rows + same_bytes
    if figures.duplicates:
        problems.append(f"{duplicate_rows} (generation, index) pairs with several rows, {same_bytes} images "
                        "stored twice under other indexes")
    s3 = s3_client()
    for image in images:
        expected_key = f"generations/{image.generation_id}/{image.index}.png"
        if image.file != expected_key:
            problems.append(f"image {image} is stored at {image.file}, not {expected_key}")
        try:
            data = s3.get_object(Bucket=BUCKET, Key=image.file)["Body"].read()
        except s3.exceptions.NoSuchKey:
            problems.append(f"image {image} has a row but no original in storage ({image.file})")
            continue
        if hashlib.sha256(data).hexdigest() != image.sha256 or len(data) != image.bytes:
            problems.append(f"image {image}: storage holds {len(data)} bytes whose SHA-256 is not the recorded one")
        job = jobs[image.generation_id]
        made = paint(job.prompt, job.seed_for(image.index), job.width, job.height)
        if data != made or image.seed != job.seed_for(image.index):
            problems.append(f"image {image} (seed {image.seed}) is not the image the provider made for its job's "
                            f"prompt and seed {job.seed_for(image.index)}")
    named = set(Image.objects.filter(generation_id__in=ids).values_list("file", flat=True))
    named |= set(Rendition.objects.filter(image__generation_id__in=ids).values_list("file", flat=True))
    objects = stored_objects(ids)
    orphans = sorted(set(objects) - named)
    missing = sorted(key for key in named - set(objects) if not key.endswith(".png"))
    figures.orphans = len(orphans)
    if orphans:
        problems.append(f"{len(orphans)} objects in storage that no row names (paid images thrown away or stored "
                        f"twice): {orphans[:6]}")
    if missing:
        problems.append(f"{len(missing)} thumbnails named by rows are not in storage: {missing[:6]}")

    # billed (apisim's ledger) − stored ≤ what was in flight at the fault, and each such job shows it
    entries = [entry for entry in ledger(sim)["entries"] if f"[{batch.tag} " in (entry.get("prompt") or "")]
    billed_per_prompt = Counter()
    for entry in entries:
        billed_per_prompt[entry["prompt"]] += entry["images"]
    figures.billed = sum(billed_per_prompt.values())
    stored_per_job = Counter(image.generation_id for image in images)
    for pk, job in jobs.items():
        excess = billed_per_prompt[job.prompt] - stored_per_job[pk]
        if excess < 0:
            problems.append(f"{job.prompt[:14]} stored {stored_per_job[pk]} images but the ledger bills only "
                            f"{billed_per_prompt[job.prompt]}")
        shows_it = job.unconfirmed_calls > 0 or (
            job.status in (Generation.Status.PARTIAL, Generation.Status.FAILED) and job.error_text)
        if excess > 0 and not shows_it:
            problems.append(f"{job.prompt[:14]} ({job.status}) was billed {billed_per_prompt[job.prompt]} images, "
                            f"stored {stored_per_job[pk]}, and shows nothing (unconfirmed_calls=0)")
    if figures.billed - figures.stored > allowed_excess:
        problems.append(f"billed {figures.billed} − stored {figures.stored} = {figures.billed - figures.stored} "
                        f"> {allowed_excess} (images of the calls in flight at the fault, and of permanent faults)")

    # time to recover: from the fault's end to the first job finished after it, and to the last
    finished_times = sorted(job.finished_at for job in jobs.values() if job.finished_at)
    if restored_at is not None:
        after = [moment for moment in finished_times if moment >= restored_at]
        if after:
            figures.recover_s = (after[0] - restored_at).total_seconds()
            figures.drain_s = (after[-1] - restored_at).total_seconds()
    if done_within is not None and (figures.drain_s is None or figures.drain_s > done_within):
        problems.append(f"the last job ended {figures.drain_s}s after the fault, not within {done_within}s: "
                        "work waited (for a lease?) instead of resuming at once")
    figures.total_s = time.monotonic() - batch.sent_at
    record(figures)
    assert not problems, "\n".join([figures.line(), *problems])
    return figures


def terminate_other_backends() -> int:
    """pg_terminate_backend on every other connection to the test database: the worker's connections."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]
