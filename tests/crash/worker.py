"""A process the crash tests kill with SIGKILL at random moments.

``python -m tests.crash.worker DB LOG INSTANCES BACKEND`` runs (or recovers) INSTANCES
instances of the workflow of ``workload.py`` (whose step bodies write LOG), signalling them
itself, until all are completed; then prints ``DONE``.
"""

from __future__ import annotations

import random
import sys

import anyio

import memable
from memable import Engine

from .workload import GO, make_workflow


async def run(db: str, log: str, instances: int) -> None:
    wf = make_workflow("crashy", log, pause=(0.005, 0.06), naps_ms=(1, 20))
    async with Engine(db, workflows=[wf]) as engine:
        for i in range(instances):
            await engine.invoke(wf, i, instance_id=f"i{i}")
        while True:
            infos = await engine.instances(wf, limit=None)
            if all(info.status == "completed" for info in infos):
                break
            bad = [info for info in infos if info.status in ("failed", "cancelled")]
            if bad:
                raise SystemExit(f"instances ended badly: {bad}")
            for info in infos:
                if info.status != "completed" and random.random() < 0.5:
                    try:
                        await engine.signal(wf, info.instance_id, GO, 7)
                    except (memable.SignalSuperseded, memable.SignalRejected):
                        pass
            await anyio.sleep(0.002)
    print("DONE", flush=True)


if __name__ == "__main__":
    db_path, log_path, count, backend = sys.argv[1:5]
    anyio.run(run, db_path, log_path, int(count), backend=backend)
