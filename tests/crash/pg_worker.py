"""An engine process on a shared Postgres database, for the chaos tests.

``python -m tests.crash.pg_worker DSN SCHEMA LOG INSTANCES LEASE BACKEND`` prints
``READY``, waits for the file ``LOG.go``, invokes instances ``i0`` … (idempotently: every
worker invokes the same ids, at once, in its own random order), then serves: it runs what
it holds or claims, signals the instances it sees suspended (through any engine: itself),
and exits 0 printing ``DONE`` once every instance has completed. The workflow is the one of
``workload.py``, whose step bodies write LOG.
"""

from __future__ import annotations

import random
import sys

import anyio

import memable
from memable import Engine
from memable.storage import PostgresStorage

from .workload import GO, make_workflow


async def run(dsn: str, schema: str, log: str, instances: int, lease: float) -> None:
    wf = make_workflow("chaos", log, pause=(0.01, 0.08), naps_ms=(1, 30))
    storage = PostgresStorage(dsn, schema=schema, lease=lease, pool_size=4)
    async with Engine(storage, workflows=[wf], shutdown_timeout=1) as engine:
        print("READY", flush=True)
        while not await anyio.Path(log + ".go").exists():  # every worker starts at once
            await anyio.sleep(0.01)
        ids = [f"i{i}" for i in range(instances)]
        random.shuffle(ids)
        for instance_id in ids:
            while True:
                try:
                    await engine.invoke(wf, int(instance_id[1:]), instance_id=instance_id)
                    break
                except memable.StorageError:  # the server restarts: the caller retries
                    await anyio.sleep(0.2)
        while True:
            try:
                infos = await engine.instances(wf, limit=None)
            except memable.StorageError:
                await anyio.sleep(0.2)
                continue
            if len(infos) == instances and all(i.status == "completed" for i in infos):
                break
            bad = [info for info in infos if info.status in ("failed", "cancelled")]
            if bad:
                raise SystemExit(f"instances ended badly: {bad}")
            for info in infos:
                if info.status == "suspended" and random.random() < 0.3:
                    try:
                        await engine.signal(wf, info.instance_id, GO, 7)
                    except (memable.SignalSuperseded, memable.SignalRejected):
                        pass
                    except memable.StorageError:
                        break
            await anyio.sleep(0.05)
    print("DONE", flush=True)


if __name__ == "__main__":
    dsn, schema, log_path, count, lease, backend = sys.argv[1:7]
    anyio.run(run, dsn, schema, log_path, int(count), float(lease), backend=backend)
