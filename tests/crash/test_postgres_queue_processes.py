"""Queues and schedules shared by three engine processes on one Postgres database.

The workers (``pg_queue_worker.py``) are real processes; their bodies append to one log
(``O_APPEND``, one write a line), whose order is the order the bodies got there across
processes. From it: the most bodies in flight at once (a SIGKILLed process's bodies end
at its death), how often each body ran, and which process ran it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from memable._ids import tick_id

from .. import pg
from . import pg_queue_worker
from .test_queue_sigkill import peak_in_flight

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

WORKER = Path(pg_queue_worker.__file__)
BACKENDS = ("asyncio", "trio", "asyncio")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


class Workers:
    """Worker processes on one schema, and the log their bodies write."""

    def __init__(self, dsn: str, schema: str, tmp_path: Path) -> None:
        self.dsn = dsn
        self.schema = schema
        self.tmp_path = tmp_path
        self.log = tmp_path / "bodies.log"
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, index: int, count: int, *args: str, backend: str) -> subprocess.Popen[str]:
        n = len(self.processes)
        command = [sys.executable, str(WORKER), self.dsn, self.schema, str(self.log),
                   str(index), str(count), *args, backend]  # fmt: skip
        with open(self.tmp_path / f"worker-{n}.err", "w") as err:
            process = subprocess.Popen(
                command, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True
            )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "READY", self.stderr(n)
        self.processes.append(process)
        return process

    def go(self, *args: str) -> list[subprocess.Popen[str]]:
        """Start three workers (one per backend), then let them begin at once."""
        started = [
            self.start(i, len(BACKENDS), *args, backend=backend)
            for i, backend in enumerate(BACKENDS)
        ]
        Path(f"{self.log}.go").touch()
        return started

    def stderr(self, n: int) -> str:
        return (self.tmp_path / f"worker-{n}.err").read_text()

    def finish(self, process: subprocess.Popen[str], timeout: float = 120) -> None:
        out, _ = process.communicate(timeout=timeout)
        n = self.processes.index(process)
        assert process.returncode == 0, self.stderr(n)[-3000:]
        assert "DONE" in out

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def kill(self, process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        with self.log.open("a") as file:
            file.write(f"kill {process.pid}\n")

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"SET search_path = {self.schema}")
            return conn.execute(query).fetchall()


@pytest.fixture
def workers(postgres_server: pg.PostgresServer, tmp_path: Path) -> Iterator[Workers]:
    made = Workers(postgres_server.dsn, postgres_server.new_schema(), tmp_path)
    yield made
    made.kill_all()


def check_queue(w: Workers, jobs: int, concurrency: int | None) -> tuple[Counter[str], list[str]]:
    """Every job completed in the database, the concurrency limit (if any) held and was
    reached; how often each job's body started, and the log."""
    lines = w.lines()
    # peak_in_flight reads "start ID PID" / "end ID PID" / "kill PID" (times dropped).
    peak, ended, _ = peak_in_flight([" ".join(line.split()[:3]) for line in lines])
    if concurrency is not None:
        assert peak == concurrency  # never more in flight, across processes; and it filled
    expected = {f"job-{n}" for n in range(jobs)}
    assert ended == expected
    statuses = dict(w.sql("SELECT instance_id, status FROM instances"))
    assert statuses == dict.fromkeys(expected, "completed")
    [(owned,)] = w.sql("SELECT count(*) FROM instances WHERE owner IS NOT NULL")
    assert owned == 0
    starts = Counter(line.split()[1] for line in lines if line.startswith("start"))
    return starts, lines


def concurrency_across_processes(workers: Workers, jobs: int, concurrency: int) -> None:
    processes = workers.go("queue", str(jobs), str(concurrency), "-", "0.03", "5")
    for process in processes:
        workers.finish(process, timeout=600)
    starts, lines = check_queue(workers, jobs, concurrency)
    assert set(starts.values()) == {1}
    pids = {line.split()[2] for line in lines if line.startswith("start")}
    assert pids == {str(process.pid) for process in processes}


def test_concurrency_holds_across_three_processes(workers: Workers) -> None:
    """3 engine processes and 8 enqueuers (spread over them) fill a queue of
    concurrency 4 with 120 jobs: never more than 4 bodies in flight across the
    processes, every body ran exactly once, and every process ran some."""
    concurrency_across_processes(workers, 120, 4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_concurrency_holds_across_three_processes_3000_jobs(workers: Workers) -> None:
    """The long run: 3,000 jobs through a queue of concurrency 10."""
    concurrency_across_processes(workers, 3000, 10)


def test_rate_limit_holds_across_three_processes(workers: Workers) -> None:
    """A queue of at most 4 starts per 2 s, 12 jobs, 3 processes: no 2-second window
    holds more than 4 admissions. Measured at the bodies, which start a little after
    their admission: the starts of any 5 bodies in a row span at least the window
    (less the time a body may take to start, 0.5 s here)."""
    processes = workers.go("queue", "12", "100", "4/2.0", "0.03", "5")
    for process in processes:
        workers.finish(process)
    starts, lines = check_queue(workers, 12, None)
    assert set(starts.values()) == {1}
    times = sorted(float(line.split()[3]) for line in lines if line.startswith("start"))
    spans = [later - earlier for earlier, later in zip(times, times[4:], strict=False)]
    assert min(spans) > 2.0 - 0.5, times


def test_sigkill_an_engine_holding_queue_slots(workers: Workers) -> None:
    """SIGKILL one of three engine processes while its bodies hold queue slots: the
    others take its instances over once its lease expires, the limit holds all along
    (its instances keep their slots until they end elsewhere), nothing is lost, and no
    body runs again but the ones the kill interrupted."""
    jobs = 90
    victim, *others = workers.go("queue", str(jobs), "4", "-", "0.12", "3")
    deadline = time.monotonic() + 60
    while workers.sql("SELECT count(*) FROM instances") != [(jobs,)]:
        assert time.monotonic() < deadline, "not every job was enqueued"
        time.sleep(0.01)
    while True:  # bodies in flight in the victim
        assert time.monotonic() < deadline, "the victim never ran bodies"
        lines = workers.lines()
        flying = {line.split()[1] for line in lines if line.startswith("start ")
                  and line.split()[2] == str(victim.pid)}  # fmt: skip
        if flying - {line.split()[1] for line in lines if line.startswith("end ")}:
            break
        time.sleep(0.002)
    workers.kill(victim)
    # Frozen until its lease expires: what it held then, the others run (again).
    held = {row[0] for row in workers.sql(
        "SELECT instance_id FROM instances i JOIN engines e ON i.owner = e.engine_id"
        f" WHERE i.status = 'running' AND e.name LIKE '%:{victim.pid}'"
    )}  # fmt: skip
    for process in others:
        workers.finish(process)
    starts, lines = check_queue(workers, jobs, 4)
    killed = lines.index(f"kill {victim.pid}")
    interrupted = {line.split()[1] for line in lines[:killed] if line.startswith("start ")
                   and line.split()[2] == str(victim.pid)}  # fmt: skip
    interrupted -= {line.split()[1] for line in lines[:killed] if line.startswith("end ")}
    assert interrupted  # the kill hit bodies in flight
    assert interrupted <= held  # (their slots stayed taken)
    assert {job for job, n in starts.items() if n > 1} <= held  # only those ran again,
    assert all(starts[job] <= 2 for job in held)  # at most once more,
    for job in held:  # and ended in another process, after the kill
        last = max(n for n, line in enumerate(lines) if line.startswith(f"end {job} "))
        assert last > killed
        assert lines[last].split()[2] != str(victim.pid)


def test_schedule_ticks_once_across_three_skewed_processes(workers: Workers) -> None:
    """Three engine processes on clocks 2 s behind, on time and 2 s ahead run one
    schedule ticking every second; the one ahead (which starts most ticks) is stopped
    until another takes over, restarted, and later another is restarted: every tick
    from the first to the last ran exactly once, with no gap."""
    behind, _, ahead = processes = [
        workers.start(i, 3, "schedule", str(skew), backend=backend)
        for i, (skew, backend) in enumerate(zip((-2, 0, 2), BACKENDS, strict=True))
    ]
    Path(f"{workers.log}.go").touch()

    def ticks_by(pids: set[int]) -> int:
        return sum(
            line.startswith("tick") and int(line.split()[2]) in pids for line in workers.lines()
        )

    def wait_for_ticks(pids: set[int], count: int) -> None:
        deadline = time.monotonic() + 60
        while ticks_by(pids) < count:
            assert time.monotonic() < deadline, "no ticks"
            time.sleep(0.05)

    def stop(process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGTERM)
        workers.finish(process)

    wait_for_ticks({ahead.pid}, 2)
    stop(ahead)  # the others take over: a tick by one of them
    survivors = {p.pid for p in processes if p is not ahead}
    wait_for_ticks(survivors, ticks_by(survivors) + 2)
    ahead = workers.start(2, 3, "schedule", "2", backend="asyncio")
    wait_for_ticks({ahead.pid}, 2)
    stop(behind)
    workers.start(0, 3, "schedule", "-2", backend="trio")
    time.sleep(1.5)
    live = [p for p in workers.processes if p.poll() is None]
    for process in live:
        stop(process)
    ran = Counter(line.split()[1] for line in workers.lines() if line.startswith("tick"))
    assert set(ran.values()) == {1}, ran  # no tick ran twice
    stored = sorted(row[0] for row in workers.sql("SELECT instance_id FROM instances"))
    assert stored == sorted(ran)
    first, last = (datetime.fromisoformat(stored[i].split("@")[1]).timestamp() for i in (0, -1))
    expected = [tick_id("tick", first + s) for s in range(round(last - first) + 1)]
    assert stored == expected  # every second from the first tick to the last: no gap
    assert len(stored) >= 8
    statuses = {row[0] for row in workers.sql("SELECT status FROM instances")}
    assert statuses == {"completed"}
