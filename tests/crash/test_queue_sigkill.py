"""A queue's limit holds across engines killed with SIGKILL and restarted on one file.

The worker (``queue_worker.py``) drains a queue of concurrency 3; the test kills it at
random moments, restarts it, and at the end reads the log its bodies write: at no moment
were more than 3 bodies in flight (a killed process's bodies end at its death), and every
job finished.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import queue_worker

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

WORKER = Path(queue_worker.__file__)
JOBS = 40


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def peak_in_flight(lines: list[str]) -> tuple[int, set[str], int]:
    """The most bodies in flight at once, the jobs that ended, and how many bodies the
    kills interrupted."""
    flying: set[tuple[str, str]] = set()
    ended: set[str] = set()
    peak = interrupted = 0
    for line in lines:
        what, *rest = line.split()
        if what == "start":
            flying.add((rest[0], rest[1]))
            peak = max(peak, len(flying))
        elif what == "end":
            flying.discard((rest[0], rest[1]))
            ended.add(rest[0])
        elif what == "kill":
            left = {(job, pid) for job, pid in flying if pid != rest[0]}
            interrupted += len(flying) - len(left)
            flying = left
    return peak, ended, interrupted


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_queue_limit_across_killed_engines(tmp_path: Path, backend: str) -> None:
    rng = random.Random(13)
    db, log = tmp_path / "queue.db", tmp_path / "bodies.log"
    command = [sys.executable, str(WORKER), str(db), str(log), str(JOBS), backend]
    kills = 0
    while True:
        process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, text=True)
        if kills < 3:  # once this process's bodies run, kill it a little later
            deadline = time.monotonic() + 30
            mine = f" {process.pid}\n"
            while time.monotonic() < deadline and process.poll() is None:
                if log.exists() and any(
                    line.startswith("start") and line.endswith(mine)
                    for line in log.read_text().splitlines(keepends=True)
                ):
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.1))
        if kills < 3 and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.communicate()  # waits, and closes its pipe
            with log.open("a") as file:
                file.write(f"kill {process.pid}\n")
            kills += 1
            continue
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        assert out.strip() == "DONE"
        break
    peak, ended, interrupted = peak_in_flight(log.read_text().splitlines())
    assert kills == 3
    assert interrupted >= 1  # the kills hit running bodies (their slots were held on)
    assert ended == {f"job-{n}" for n in range(JOBS)}
    assert peak == 3
