"""`make services`, which `make run` and `make test` start with, on machines unlike this one.

This machine has PostgreSQL and Redis, so the branches for a bare machine run here against stand-ins:
a PATH holding only the tools the recipe uses, an apt-get that records what it was asked and
"installs" by writing the files the real packages would, and a pg_ctlcluster and redis-server that
listen on free ports. CI's `make run` from a fresh clone (.ci/run) covers the path with real services.
"""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["ls", "sed", "seq", "sleep", "id", "env", "head", "cat"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


LISTEN = f"{sys.executable} -c 'import socket, sys, time; s = socket.socket(); " \
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", int(sys.argv[1]))); " \
         "s.listen(); open(sys.argv[2], \"w\").write(str(__import__(\"os\").getpid())); time.sleep(120)'"


@pytest.fixture
def machine(tmp_path):
    """A bare Debian as far as the recipe can tell: (bin, etc, log, ports), with apt-get when asked."""
    bin_dir, etc, log = tmp_path / "bin", tmp_path / "etc-postgresql", tmp_path / "calls.log"
    bin_dir.mkdir()
    etc.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    ports = {"pg": free_port(), "redis": free_port()}
    script(bin_dir / "pg_ctlcluster", f"""\
        echo "pg_ctlcluster $*" >> {log}
        [ "$4" = start ] && {{ {LISTEN} {ports["pg"]} {tmp_path}/pg.pid >/dev/null 2>&1 & }}
        exit 0
        """)
    yield bin_dir, etc, log, ports
    for pid_file in tmp_path.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), 9)
        except (ProcessLookupError, ValueError):
            pass


def with_apt(bin_dir: Path, etc: Path, log: Path) -> None:
    script(bin_dir / "apt-get", f"""\
        echo "apt-get $*" >> {log}
        case "$*" in
          *" postgresql") {shutil.which("mkdir")} -p {etc}/15/main
                          echo "host all all 127.0.0.1/32 scram-sha-256" > {etc}/15/main/pg_hba.conf ;;
          *" redis-server") {shutil.which("ln")} -s {bin_dir}/redis-server.package {bin_dir}/redis-server ;;
        esac
        """)
    script(bin_dir / "redis-server.package", f"""\
        echo "redis-server $*" >> {log}
        {LISTEN} "$(echo "$*" | sed 's/.*--port \\([0-9]*\\).*/\\1/')" {log.parent}/redis.pid >/dev/null 2>&1 &
        """)


def make_services(bin_dir: Path, etc: Path, ports: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("make"), "-s", "-C", str(ROOT), "services", f"PG_ETC={etc}",
         f"PG_PORT={ports['pg']}", f"REDIS_PORT={ports['redis']}"],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")},
        capture_output=True, text=True, timeout=120)


def test_without_apt_it_stops_with_one_line_saying_what_to_install(machine):
    bin_dir, etc, log, ports = machine
    done = make_services(bin_dir, etc, ports)
    assert done.returncode != 0
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines == [f"PostgreSQL is needed on 127.0.0.1:{ports['pg']}: install PostgreSQL 15 or newer and start it"]


def test_on_debian_it_installs_starts_and_lets_loopback_in(machine):
    bin_dir, etc, log, ports = machine
    with_apt(bin_dir, etc, log)
    done = make_services(bin_dir, etc, ports)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    assert "apt-get install -y -qq postgresql" in calls
    assert "apt-get install -y -qq redis-server" in calls
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in calls
    assert any(call.startswith("redis-server --daemonize yes") and f"--port {ports['redis']}" in call
               for call in calls)
    hba = (etc / "15" / "main" / "pg_hba.conf").read_text().splitlines()
    assert hba[:2] == ["host all all 127.0.0.1/32 trust", "host all all ::1/128 trust"]
    assert "Installing PostgreSQL with apt" in done.stdout and "Installing Redis with apt" in done.stdout


def test_installed_but_stopped_is_started_without_apt(machine):
    bin_dir, etc, log, ports = machine
    (etc / "15" / "main").mkdir(parents=True)
    with_apt(bin_dir, etc, log)
    (bin_dir / "redis-server").symlink_to(bin_dir / "redis-server.package")
    done = make_services(bin_dir, etc, ports)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    assert not [call for call in calls if call.startswith("apt-get")]
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in calls
    assert done.stdout.split() == ["Starting", "PostgreSQL", "Starting", "Redis"]


def test_running_services_are_left_alone(machine):
    bin_dir, etc, log, ports = machine
    with_apt(bin_dir, etc, log)
    with socket.socket() as pg, socket.socket() as rd:
        for sock, port in ((pg, ports["pg"]), (rd, ports["redis"])):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        done = make_services(bin_dir, etc, ports)
    assert done.returncode == 0 and done.stdout == ""
    assert not log.exists()
