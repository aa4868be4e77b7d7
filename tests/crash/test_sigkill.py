"""Kill a real process with SIGKILL at random moments; nothing is lost or repeated.

The worker (``worker.py``) runs instances of the workflow of ``workload.py``: sequential
and concurrent steps, a suspend point it signals itself, a durable timer and a fan-out.
The test kills it at random times — inside step bodies, between a body and its commit,
while suspending, while signals are delivered and timers fire — restarts it, and finally
checks the database and the side-effect log each step body writes.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import workload

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

WORKER = ("-m", "tests.crash.worker")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]  # the worker is the module tests.crash.…
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), str(root),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    return env


def crash_and_recover(
    tmp_path: Path, backend: str, *, kills: int, instances: int, seed: int
) -> dict[str, int]:
    """SIGKILL the worker *kills* times at random moments; verify every batch it finishes.

    A batch is one database: the worker is started, killed, restarted … until a run is
    allowed to finish; then the database and log are verified and a new batch begins,
    until *kills* kills have been dealt.
    """
    rng = random.Random(seed)
    totals = {"kills": 0, "batches": 0}
    while totals["kills"] < kills:
        batch = tmp_path / f"batch-{totals['batches']}"
        batch.mkdir()
        db, log = batch / "crash.db", batch / "effects.log"
        command = [sys.executable, *WORKER, str(db), str(log), str(instances), backend]
        batch_kills = 0
        while totals["kills"] < kills:
            process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL)
            # Interpreter start-up takes ~0.15 s; kill anywhere in the work after it.
            time.sleep(rng.uniform(0.12, 0.6))
            if process.poll() is not None:
                assert process.returncode == 0, f"the worker failed ({process.returncode})"
                break  # it finished before the kill: verify this batch
            process.send_signal(signal.SIGKILL)
            process.wait()
            batch_kills += 1
            totals["kills"] += 1
        final = subprocess.run(
            command, env=_env(), capture_output=True, text=True, timeout=120, check=False
        )
        assert final.returncode == 0, final.stderr
        assert "DONE" in final.stdout
        verify(db, log, instances=instances, kills=batch_kills)
        totals["batches"] += 1
    return totals


def verify(db: Path, log: Path, *, instances: int, kills: int) -> None:
    """Check the promises: correct outputs, nothing lost, no body re-run after its commit."""
    runs: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        instance_id, key, nonce, _pid = line.split()
        runs[instance_id, key].append(nonce)

    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = dict(connection.execute("SELECT instance_id, status FROM instances"))
        steps = {
            (instance_id, key): value
            for instance_id, key, value in connection.execute(
                "SELECT instance_id, key, value FROM steps WHERE state = 'completed'"
            )
        }
    finally:
        connection.close()

    top = [f"i{i}" for i in range(instances)]
    children = [f"{i}/kids-{n}" for i in top for n in range(workload.CHILDREN)]
    assert {i: statuses.get(i) for i in top + children} == dict.fromkeys(
        top + children, "completed"
    ), "an instance was lost or left unfinished"

    expected_bodies = [(i, key) for i in top for key in workload.STEP_KEYS] + [
        (c, "c") for c in children
    ]
    for instance_id, key in expected_bodies:
        executions = runs[instance_id, key]
        assert executions, f"{instance_id} {key} never ran"
        assert len(executions) <= kills + 1, f"{instance_id} {key} ran {len(executions)} times"
        recorded = _decoded(steps[instance_id, key])
        # The recorded result is the one of the LAST execution: no body ran after its commit.
        assert recorded == f"{key}:{executions[-1]}", (instance_id, key, executions, recorded)


def _decoded(envelope: str) -> str:
    """The value of a stored ``str`` envelope."""
    data = json.loads(envelope)
    assert data["type"] == "str"
    value: str = data["value"]
    return value


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigkill_at_random_moments(tmp_path: Path, backend: str) -> None:
    """Killed 12 times mid-run, every instance still completes exactly as promised."""
    result = crash_and_recover(tmp_path, backend, kills=12, instances=24, seed=1234)
    assert result == {"kills": 12, "batches": result["batches"]}
    assert result["batches"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigkill_many_times(tmp_path: Path, backend: str) -> None:
    """The long run (nox -s crash): hundreds of kills, counted and printed."""
    kills = int(os.environ.get("MEMABLE_CRASH_KILLS", "500"))
    seed = int(os.environ.get("MEMABLE_CRASH_SEED", "20261124"))
    result = crash_and_recover(tmp_path, backend, kills=kills, instances=20, seed=seed)
    print(
        f"\n{backend}: survived {result['kills']} SIGKILLs in {result['batches']} databases"
        f" (seed {seed})"
    )
    assert result["kills"] == kills
