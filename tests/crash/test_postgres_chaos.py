"""Chaos with real engine processes on one Postgres database (``pg_worker.py``).

Every test checks the database and the side-effect log each step body writes: every
instance completed, every recorded result is the return value of one real execution of
its body, no body ran more often than the faults allow, and nothing stays unfinished.
The default suite runs short versions; ``nox -s crash`` (marker ``slow``) the long ones.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .. import pg
from . import workload

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

WORKER = ("-m", "tests.crash.pg_worker")
LEASE = 2.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]  # the worker is the module tests.crash.…
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), str(root),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    return env


class Cluster:
    """Worker processes on one schema, and what they wrote."""

    def __init__(self, dsn: str, schema: str, tmp_path: Path, instances: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.log = tmp_path / "effects.log"
        self.instances = instances
        self.tmp_path = tmp_path
        self.workers: list[subprocess.Popen[str]] = []

    def start(self, backend: str = "asyncio") -> subprocess.Popen[str]:
        n = len(self.workers)
        command = [sys.executable, *WORKER, self.dsn, self.schema, str(self.log),
                   str(self.instances), str(LEASE), backend]  # fmt: skip
        with open(self.tmp_path / f"worker-{n}.err", "w") as err:
            process = subprocess.Popen(
                command, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True
            )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "READY", self.stderr(n)
        self.workers.append(process)
        return process

    def go(self, *backends: str) -> list[subprocess.Popen[str]]:
        """Start a worker per backend, then let them all begin at once."""
        started = [self.start(backend) for backend in backends]
        Path(f"{self.log}.go").touch()
        return started

    def stderr(self, n: int) -> str:
        return (self.tmp_path / f"worker-{n}.err").read_text()

    def finish(self, *, timeout: float = 120) -> None:
        """Wait for every live worker to print DONE and exit 0."""
        deadline = time.monotonic() + timeout
        for n, process in enumerate(self.workers):
            if process.returncode is not None and process.returncode < 0:
                continue  # killed by the test
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert process.returncode == 0, self.stderr(n)
            assert "DONE" in out

    def kill_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"SET search_path = {self.schema}")
            return conn.execute(query).fetchall()

    def progress(self) -> int:
        """How many step results are recorded so far."""
        [(count,)] = self.sql("SELECT count(*) FROM steps")
        return int(count)

    def running_in(self, process: subprocess.Popen[str]) -> int:
        """How many running instances the engine of *process* holds (its row names it)."""
        [(count,)] = self.sql(
            "SELECT count(*) FROM instances i JOIN engines e ON i.owner = e.engine_id"
            f" WHERE i.status = 'running' AND e.name LIKE '%:{process.pid}'"
        )
        return int(count)

    def wait_progress(self, steps: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.progress() < steps:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)

    def verify(self, *, max_runs: int) -> dict[tuple[str, str], list[tuple[str, str]]]:
        """The promises, checked against the database and the side-effect log."""
        runs: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
        for line in self.log.read_text().splitlines():
            instance_id, key, nonce, pid = line.split()
            runs[instance_id, key].append((nonce, pid))
        statuses = dict(self.sql("SELECT instance_id, status FROM instances"))
        steps = {
            (i, key): json.loads(value)["value"]
            for i, key, value in self.sql(
                "SELECT instance_id, key, value FROM steps WHERE state = 'completed'"
            )
        }
        top = [f"i{i}" for i in range(self.instances)]
        children = [f"{i}/kids-{n}" for i in top for n in range(workload.CHILDREN)]
        assert statuses == dict.fromkeys(top + children, "completed"), "lost or unfinished"
        [(owned,)] = self.sql("SELECT count(*) FROM instances WHERE owner IS NOT NULL")
        assert owned == 0, "a finished instance is still held"
        bodies = [(i, key) for i in top for key in workload.STEP_KEYS]
        bodies += [(c, "c") for c in children]
        for instance_id, key in bodies:
            executions = runs[instance_id, key]
            assert executions, f"{instance_id} {key} never ran"
            assert len(executions) <= max_runs, (instance_id, key, executions)
            recorded = steps[instance_id, key]
            assert recorded in {f"{key}:{nonce}" for nonce, _ in executions}, (
                instance_id, key, executions, recorded,
            )  # fmt: skip
        return runs


@pytest.fixture
def cluster(postgres_server: pg.PostgresServer, tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(instances: int) -> Cluster:
        made.append(Cluster(postgres_server.dsn, postgres_server.new_schema(), tmp_path,
                            instances))  # fmt: skip
        return made[-1]

    yield make
    for each in made:
        each.kill_all()


def three_engines_once(cluster: Any, instances: int) -> None:
    c = cluster(instances)
    c.go("asyncio", "trio", "asyncio")
    c.finish()
    runs = c.verify(max_runs=1)  # no fault: every body ran exactly once
    assert len({pid for executions in runs.values() for _, pid in executions}) >= 2


def test_three_engines_run_each_instance_exactly_once(cluster: Any) -> None:
    """Three engine processes invoke the same 30 ids at once and share the work: every
    instance completes, every step body ran exactly once (across engines)."""
    three_engines_once(cluster, 30)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_engines_300_instances(cluster: Any) -> None:
    """The long run: 3 engines, 300 instances, each body exactly once."""
    three_engines_once(cluster, 300)


def sigkill_one(cluster: Any, instances: int) -> None:
    c = cluster(instances)
    victim, _, _ = c.go("asyncio", "trio", "asyncio")
    c.wait_progress(instances)  # mid-run: some steps recorded, many in flight
    victim.kill()
    victim.wait()
    c.finish()
    c.verify(max_runs=2)  # a body in flight in the killed engine may run again elsewhere


def test_sigkill_one_engine_others_finish_its_instances(cluster: Any) -> None:
    """SIGKILL one of three engines mid-run: the others reap it and finish its instances."""
    sigkill_one(cluster, 24)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_one_engine_of_three_with_300_instances(cluster: Any) -> None:
    sigkill_one(cluster, 300)


def sigstop_one(cluster: Any, instances: int) -> None:
    c = cluster(instances)
    paused, _ = c.go("asyncio", "trio")
    c.wait_progress(instances // 2)
    deadline = time.monotonic() + 60
    while c.running_in(paused) < 2:  # pause it while it runs instances (bodies in flight)
        assert time.monotonic() < deadline, "the engine to pause never ran two at once"
        time.sleep(0.005)
    paused.send_signal(signal.SIGSTOP)
    time.sleep(LEASE * 2.5)  # past its lease: the other reaps it and takes over
    paused.send_signal(signal.SIGCONT)
    c.finish()
    c.verify(max_runs=2)
    # The other engine reaped the paused one (so every later write of the paused engine
    # was refused: its transactions lock its engine row, which is gone) and took over.
    assert "reaped 1 engines" in c.stderr(1), c.stderr(1)[-3000:]


def test_sigstop_past_the_lease_late_writes_are_refused(cluster: Any) -> None:
    """SIGSTOP an engine past its lease; the other takes over; SIGCONT: its late writes
    are refused, nothing is recorded twice, everything completes."""
    sigstop_one(cluster, 24)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigstop_past_the_lease_with_300_instances(cluster: Any) -> None:
    sigstop_one(cluster, 300)


def test_server_restart_mid_run(tmp_path: Path) -> None:
    """Restart the PostgreSQL server mid-run: every engine reconnects and finishes."""
    if os.environ.get("MEMABLE_TEST_POSTGRES"):
        pytest.skip("restarts only a server the tests started themselves")
    servers = pg.server()
    server = next(servers)  # a server of its own: the others' tests keep theirs
    try:
        c = Cluster(server.dsn, "chaos", tmp_path, 16)
        try:
            c.go("asyncio", "trio")
            c.wait_progress(16)
            server.stop("fast")
            time.sleep(1.0)
            server.start()
            c.finish()
            c.verify(max_runs=2)
        finally:
            c.kill_all()
    finally:
        servers.close()
