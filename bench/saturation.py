"""Fair share under saturation: a backlog of jobs against the studio-wide provider limit.

Run from the project root (PostgreSQL and Redis running):

    .venv/bin/python bench/saturation.py [--jobs 200] [--limit 4] [--latency 2] [--designers 4]

Starts apisim (max_concurrent = C, latency = L), moto's S3 server and a redis-server of its
own for the provider limits, all on free loopback ports, and a real Celery worker as the
Procfile does (threads pool, 2·C + 2 threads) on Redis db 14 (purged first) and the database
qwenstudio_saturation (dropped, created and migrated). It queues N jobs of wan2.2-t2i-flash (512×512,
n = 1, no per-model limit, so only QWEN_MAX_CONCURRENT = C applies) from D designers, each
designer's jobs in one block; once N/4 have finished it queues one job from a late designer.

Figures: makespan (last finished − first created) against the ideal (N + 1)·L / C (goal ≤ 1.1),
the late job's wait for its call (goal ≤ 2·L), apisim's peak of calls in flight (≤ C) and its
429s, and where the time beyond the ideal went. Exits non-zero when a job did not succeed, the
peak passed C, or the provider answered 429.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import boto3
import redis
import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]
from pipeline import free_port, start, stop  # noqa: E402  (bench/pipeline.py)

MODEL = "wan2.2-t2i-flash"
SIZE = 512
API_KEY = "bench-key"
BUCKET = "qwenstudio-saturation"
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/qwenstudio_saturation"
BROKER_URL = "redis://127.0.0.1:6379/14"
USER_PREFIX = "saturation-"
POLL_WRAPPER = """import sys
import gallery.limits
from celery.__main__ import main
gallery.limits.POLL = float(sys.argv.pop(1))
sys.argv[0] = "celery"
main()
"""


def popen(stack: ExitStack, args: list[str], logdir: Path, name: str) -> subprocess.Popen:
    """Start a process of ours in its own session (Ctrl-C reaches only us) and stop it when the stack closes."""
    log = stack.enter_context(open(logdir / f"{name}.log", "wb"))
    process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                               start_new_session=True)
    stack.callback(stop, process)
    return process


def wait_until(check, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")


def start_services(stack: ExitStack, args: argparse.Namespace, workdir: Path) -> str:
    """apisim, moto, the limits Redis; the studio's environment points at them. Returns apisim's URL."""
    sim = f"127.0.0.1:{free_port()}"
    host, port = sim.split(":")
    start(stack, "apisim", ["--host", host, "--port", port], f"http://{sim}/healthz", workdir,
          env={"APISIM_API_KEY": API_KEY, "APISIM_QUIET": "true", "APISIM_MAX_CONCURRENT": str(args.limit),
               "APISIM_LATENCY": str(args.latency)})
    s3 = f"http://127.0.0.1:{free_port()}"
    start(stack, "moto.server", ["-H", "127.0.0.1", "-p", s3.rsplit(":", 1)[1]], f"{s3}/moto-api/", workdir)
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    limits_port = free_port()
    limits = popen(stack, ["redis-server", "--port", str(limits_port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"], workdir, "limits-redis")
    limits_url = f"redis://127.0.0.1:{limits_port}/0"
    wait_until(lambda: redis.Redis.from_url(limits_url).ping(), "limits redis-server", 10, limits)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="qwenstudio.settings", DJANGO_DEBUG="true", DJANGO_LOG_LEVEL="WARNING",
        DATABASE_URL=DATABASE_URL, CELERY_BROKER_URL=BROKER_URL, QWEN_LIMITS_REDIS_URL=limits_url,
        QWEN_MAX_CONCURRENT=str(args.limit), QWEN_API_BASE_URL=f"http://{sim}", QWEN_API_KEY=API_KEY,
        QWEN_DOWNLOAD_HOSTS=sim, AWS_STORAGE_BUCKET_NAME=BUCKET, AWS_S3_ENDPOINT_URL=s3,
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_S3_REGION_NAME="us-east-1",
    )
    return f"http://{sim}"


def prepare_database() -> None:
    """A new database each run: no dead rows of earlier runs (autovacuum may be off), and the migrations
    of the working tree as they are now, even one edited in place."""
    import psycopg
    from psycopg import sql

    server, name = DATABASE_URL.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    for command in (["ensure_database"], ["migrate", "--verbosity", "0"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, check=True, env=dict(os.environ),
                       stdout=subprocess.DEVNULL)


def purge_broker() -> None:
    redis.Redis.from_url(BROKER_URL).flushdb()


def start_worker(stack: ExitStack, args: argparse.Namespace, workdir: Path) -> subprocess.Popen:
    """A Celery worker as the Procfile starts it; returns once it answers a ping."""
    from qwenstudio.celery import app

    purge_broker()
    stack.callback(purge_broker)
    command = [str(ROOT / ".venv" / "bin" / "celery")]
    if args.poll is not None:  # an experiment: the same worker with gallery.limits.POLL changed
        command = [sys.executable, "-c", POLL_WRAPPER, str(args.poll)]
    worker = popen(stack, [*command, "-A", "qwenstudio", "worker", "--pool", "threads",
                           "--concurrency", str(args.threads), "--loglevel", args.loglevel,
                           "--hostname", f"saturation-{os.getpid()}@%h"], workdir, "worker")
    wait_until(lambda: app.control.ping(timeout=0.5), "celery worker", 60, worker)
    return worker


def remove_users() -> None:
    from django.contrib.auth.models import User

    User.objects.filter(username__startswith=USER_PREFIX).delete()  # cascades to their jobs and images


def queue_jobs(owners: list, count: int, first: int = 0) -> list:
    """Make `count` jobs, each owner's in one block, commit them, then send one message each."""
    from gallery.models import Generation
    from gallery.tasks import enqueue

    per_owner = [count // len(owners) + (i < count % len(owners)) for i in range(len(owners))]
    blocks = [owner for owner, jobs in zip(owners, per_owner, strict=True) for _ in range(jobs)]
    jobs = [Generation(owner=owner, prompt=f"saturation job {number} of {owner.username}: a lighthouse at dusk",
                       model=MODEL, width=SIZE, height=SIZE, n=1, seed=number, prompt_extend=False)
            for number, owner in enumerate(blocks, start=first)]
    Generation.objects.bulk_create(jobs)  # autocommit: committed on return
    for job in jobs:
        if not enqueue(job.pk):
            raise RuntimeError("could not send a message to the broker")
    return jobs


def cpu_ticks(pid: int | None = None) -> float:
    """CPU seconds used by a process (utime + stime), or by the whole machine (all but idle and iowait)."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / hz


def run(args: argparse.Namespace, sim: str, worker: subprocess.Popen) -> dict:
    """Queue the backlog and the late job, wait for every job; return what happened."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.db.models import Count

    from gallery.models import Generation

    remove_users()
    owners = [User.objects.create(username=f"{USER_PREFIX}designer-{i + 1}") for i in range(args.designers)]
    late_owner = User.objects.create(username=f"{USER_PREFIX}late")
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    load_before = os.getloadavg()
    machine_cpu, worker_cpu, wall = cpu_ticks(), cpu_ticks(worker.pid), time.monotonic()
    queue_jobs(owners, args.jobs)
    late = None
    all_jobs = Generation.objects.filter(owner__username__startswith=USER_PREFIX)
    timeout = 3 * (args.jobs + 1) * args.latency / args.limit + 60
    deadline = time.monotonic() + timeout
    while True:
        counts = dict(all_jobs.order_by().values_list("status").annotate(Count("pk")))
        done = sum(counts.get(status, 0) for status in Generation.FINISHED)
        if late is None and done >= args.jobs // 4:
            late, = queue_jobs([late_owner], 1, first=args.jobs)
        if late is not None and done >= args.jobs + 1:
            break
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}; statuses {counts}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s with {done} of {args.jobs + 1} jobs finished; "
                               f"statuses {counts}")
        time.sleep(0.2)
    wall = time.monotonic() - wall
    machine_cpu, worker_cpu = cpu_ticks() - machine_cpu, cpu_ticks(worker.pid) - worker_cpu
    with connection.cursor() as cursor:
        cursor.execute("SELECT n_dead_tup, current_setting('autovacuum') FROM pg_stat_user_tables "
                       "WHERE relname = 'gallery_generation'")
        dead = cursor.fetchone()
    jobs = list(all_jobs.values("pk", "owner__username", "prompt", "status", "created", "started_at",
                                "call_started_at", "finished_at", "attempts", "retries", "error_code"))
    return {
        "jobs": jobs, "late": next(job for job in jobs if job["pk"] == late.pk),
        "calls": requests.get(f"{sim}/_sim/calls", timeout=10).json()["calls"],
        "state": requests.get(f"{sim}/_sim/state", timeout=5).json(),
        "load": (load_before, os.getloadavg()), "wall": wall, "machine_cpu": machine_cpu, "worker_cpu": worker_cpu,
        "dead": dead,
    }


def handovers(calls: list[dict]) -> list[float]:
    """For each call's end, the time until the next call started (in order): how long its slot stood idle
    while jobs waited. A start is matched to the earliest unmatched end before it."""
    ends = sorted(call["ended"] for call in calls)
    starts = sorted(call["at"] for call in calls)
    gaps, i = [], 0
    for started in starts:
        if i < len(ends) and ends[i] <= started:
            gaps.append(started - ends[i])
            i += 1
    return gaps


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def report(args: argparse.Namespace, result: dict) -> bool:
    """Print the figures; True when every check passed."""
    jobs, calls, late = result["jobs"], result["calls"], result["late"]
    n, c, latency = args.jobs, args.limit, args.latency
    t0 = min(job["created"] for job in jobs)
    t_end = max(job["finished_at"] for job in jobs)
    makespan = (t_end - t0).total_seconds()
    ideal = (n + 1) * latency / c
    by_prompt = {call["prompt"]: call for call in calls if call["status"] == 200}
    late_call = by_prompt.get(late["prompt"])
    late_wait = (late_call["at"] - late["created"].timestamp()) if late_call else float("nan")
    late_wait_db = (late["call_started_at"] - late["created"]).total_seconds()
    ok_calls = [call for call in calls if call["status"] == 200]
    throttled = sum(call["status"] == 429 for call in calls)
    other = len(calls) - len(ok_calls) - throttled
    succeeded = sum(job["status"] == "succeeded" for job in jobs)
    failed = len(jobs) - succeeded
    peak = result["state"]["peak_in_flight"]
    durations = [call["ended"] - call["at"] for call in ok_calls]
    first_at, last_end = min(call["at"] for call in ok_calls), max(call["ended"] for call in ok_calls)
    busy = sum(durations)
    span = last_end - first_at
    gaps = handovers(ok_calls)
    # After its call: the answer back to the worker, download, thumbnails, upload, rows, finish.
    after = [(job["finished_at"].timestamp() - by_prompt[job["prompt"]]["ended"]) for job in jobs
             if job["prompt"] in by_prompt]
    load_before, load_after = result["load"]
    ratio = makespan / ideal

    print(f"date      {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"machine   {machine()}")
    print(f"load      1/5/15-min before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; machine CPU busy "
          f"{result['machine_cpu'] / result['wall'] / (os.cpu_count() or 1):.0%} of {os.cpu_count()} cores, "
          f"the worker {result['worker_cpu']:.1f} CPU-s ({result['worker_cpu'] / len(jobs) * 1000:.0f} ms a job)")
    print(f"setup     N={n} jobs from {args.designers} designers in blocks + 1 late job, C={c}, L={latency:g}s, "
          f"{MODEL} {SIZE}×{SIZE} n=1, worker --pool threads --concurrency {args.threads}"
          + (f", POLL patched to {args.poll:g}s" if args.poll is not None else "") + "\n")
    print(f"makespan  {makespan:.1f}s   ideal (N+1)·L/C = {ideal:.1f}s   ratio {ratio:.3f}   (goal ≤ 1.1: "
          f"{'met' if ratio <= 1.1 else 'NOT met'})")
    print(f"late job  wait for its call {late_wait:.2f}s (apisim) / {late_wait_db:.2f}s (call_started_at)   "
          f"wait/L {late_wait / latency:.2f}   (goal ≤ 2: {'met' if late_wait / latency <= 2 else 'NOT met'})")
    print(f"provider  peak in flight {peak} (limit {c})   429s {throttled}   other errors {other}   "
          f"calls {len(calls)} for {len(jobs)} jobs")
    print(f"jobs      {succeeded} succeeded, {failed} not", end="")
    if failed:
        print(" (" + ", ".join(sorted({f"{job['status']} {job['error_code']}" for job in jobs
                                        if job["status"] != "succeeded"})) + ")", end="")
    print("\n\nwhere the time went")
    print(f"  first job created → first call           {first_at - t0.timestamp():6.2f}s")
    print(f"  first call → last call's end             {span:6.2f}s   slots busy {busy / (c * span):.1%} "
          f"(call length mean {statistics.mean(durations):.3f}s, max {max(durations):.3f}s)")
    print(f"  slot idle between calls (a call's end → next start): mean {statistics.mean(gaps) * 1000:.0f} ms, "
          f"p50 {pct(gaps, 50) * 1000:.0f}, p90 {pct(gaps, 90) * 1000:.0f}, max {max(gaps) * 1000:.0f} ms "
          f"over {len(gaps)} hand-overs")
    sending = [by_prompt[job["prompt"]]["at"] - job["started_at"].timestamp() for job in jobs
               if job["prompt"] in by_prompt]
    print(f"    of which the job's take_next → its call at apisim (claim, save, slot check, POST): "
          f"p50 {pct(sending, 50) * 1000:.0f} ms, p90 {pct(sending, 90) * 1000:.0f} ms; the rest is the answer's "
          f"way back, saving it, the slot's release and the next taker's poll")
    print(f"  gallery_generation (which take_next scans) had ~{result['dead'][0]} dead row versions "
          f"at the end (autovacuum {result['dead'][1]}; a new database each run)")
    retries = result.get("retries")
    print("  Celery retries of a message that found no slot within SLOT_WAIT: "
          + (f"{retries}" if retries is not None else "not counted (run with --loglevel INFO)"))
    print(f"  last call's end → last job finished      {t_end.timestamp() - last_end:6.2f}s")
    print(f"  call's end → its job finished: p50 {pct(after, 50) * 1000:.0f} ms, p90 {pct(after, 90) * 1000:.0f} ms")
    print(f"  ideal with the measured call length: {(n + 1) * statistics.mean(durations) / c:.1f}s")
    print("\nper designer (s from the first job's creation)")
    print(f"  {'designer':<22} {'jobs':>4} {'first call':>10} {'median call':>11} {'last finished':>13}")
    for name in sorted({job["owner__username"] for job in jobs}):
        theirs = [job for job in jobs if job["owner__username"] == name]
        starts = sorted((job["call_started_at"] - t0).total_seconds() for job in theirs)
        last = max((job["finished_at"] - t0).total_seconds() for job in theirs)
        print(f"  {name:<22} {len(theirs):>4} {starts[0]:>10.1f} {statistics.median(starts):>11.1f} {last:>13.1f}")
    owner_of = {job["prompt"]: job["owner__username"] for job in jobs if job["pk"] != late["pk"]}
    served = dict.fromkeys(sorted(set(owner_of.values())), 0)
    lead, half = 0, {}
    for number, call in enumerate(sorted(ok_calls, key=lambda call: call["at"]), start=1):
        if call["prompt"] in owner_of:
            served[owner_of[call["prompt"]]] += 1
            if all(count < args.jobs // args.designers for count in served.values()):
                lead = max(lead, max(served.values()) - min(served.values()))
        if number == len(ok_calls) // 2:
            half = dict(served)
    print(f"  calls per designer among the first {len(ok_calls) // 2}: "
          + ", ".join(f"{count}" for count in half.values())
          + f";  most calls ahead of another designer while all had jobs queued: {lead} (round-robin: 1)")
    passed = failed == 0 and peak <= c and throttled == 0
    print(f"\nchecks: every job succeeded, peak ≤ C, no 429: {'PASS' if passed else 'FAIL'}")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--designers", type=int, default=4)
    parser.add_argument("--threads", type=int, help="worker threads (default 2·limit + 2)")
    parser.add_argument("--poll", type=float, help="experiment: run the worker with gallery.limits.POLL "
                        "set to this many seconds (default: the worker as the Procfile starts it)")
    parser.add_argument("--loglevel", default="WARNING", choices=["WARNING", "INFO"],
                        help="the worker's; at INFO the Celery retries (a task that found no slot) are counted")
    parser.add_argument("--dump", type=Path, help="also write the jobs' rows and apisim's calls to this JSON file")
    args = parser.parse_args()
    if args.jobs < args.designers or args.designers < 1 or args.limit < 1 or args.latency < 0:
        parser.error("need --jobs ≥ --designers ≥ 1, --limit ≥ 1, --latency ≥ 0")
    args.threads = args.threads or 2 * args.limit + 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the ExitStack on kill too
    workdir = Path(tempfile.mkdtemp(prefix="bench-saturation-"))
    try:
        with ExitStack() as stack:
            sim = start_services(stack, args, workdir)
            prepare_database()
            import django

            django.setup()
            stack.callback(remove_users)
            worker = start_worker(stack, args, workdir)
            result = run(args, sim, worker)
        log = (workdir / "worker.log").read_text(errors="replace")
        result["retries"] = log.count("retry: Retry in") if args.loglevel == "INFO" else None
        passed = report(args, result)
        if args.dump:
            args.dump.write_text(json.dumps({key: result[key] for key in ("jobs", "calls", "state")}, default=str,
                                            indent=1))
    except BaseException:
        print(f"service and worker logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
