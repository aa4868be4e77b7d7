"""A real disk full: a SQLite file on a small tmpfs fills up while instances run.

The engine meets ``SQLITE_FULL`` in step commits, suspends and finishes; it keeps the
instances (none left ``running`` without a task), retries with backoff, and once space is
freed every instance finishes — in the same engine, without a restart. Mounting a tmpfs
needs root, which CI has; SQLite's own page limit gives the same error everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

import memable
from memable import Context, Engine, SuspendPoint
from memable.storage import SQLiteStorage

GO = SuspendPoint("go:v1", int)
BLOB = 64 * 1024


def make_workflow(runs: list[str], filled: anyio.Event) -> memable.Workflow[int, int]:
    async def body(key: str) -> str:
        await filled.wait()  # the first commits meet a full disk
        runs.append(key)
        return "x" * BLOB

    async def wf(ctx: Context, n: int) -> int:
        total = 0
        for i in range(4):
            total += len(await ctx.step(f"big:{i}", body, f"{n}:{i}"))
        total += await ctx.suspend(GO)
        return total

    return memable.Workflow("fill", wf)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    done = subprocess.run(mount, check=False, capture_output=True, text=True)
    if done.returncode != 0:  # a container without CAP_SYS_ADMIN; the page-limit test remains
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros into *path* until the file system is full."""
    with contextlib.suppress(OSError), path.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


async def drive_through_a_full_disk(
    storage: SQLiteStorage,
    full: Callable[[], None],
    free: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> list[str]:
    """Start 3 instances, fill storage under their first steps, free it: all finish here."""
    runs: list[str] = []
    filled = anyio.Event()
    wf = make_workflow(runs, filled)
    caplog.set_level(logging.WARNING, logger="memable")
    async with Engine(storage, workflows=[wf]) as engine:
        invocations = [await engine.invoke(wf, n, instance_id=f"i{n}") for n in range(3)]
        full()
        filled.set()
        await anyio.sleep(0.5)  # let the runs hit the full disk and back off
        free()
        with anyio.fail_after(30):
            for n, invocation in enumerate(invocations):
                while not isinstance(await invocation.wait(), memable.Suspended):
                    await anyio.sleep(0.01)
                await engine.signal(wf, f"i{n}", GO, 1)
                assert await invocation.result() == 4 * BLOB + 1
        for n in range(3):
            assert (await engine.state(wf, f"i{n}")).status == "completed"
    # The runs did meet the full disk, and each said so under its instance.
    for n in range(3):
        assert f"storage failed while recording a step for instance 'i{n}'" in caplog.text
    assert str(Path(storage.path).parent) not in caplog.text
    # Every step ran, and one ran again only if its commit failed.
    for n in range(3):
        for i in range(4):
            assert 1 <= runs.count(f"{n}:{i}") <= 6
    return runs


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
async def test_a_full_tmpfs_heals_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "small", "4m") as where:
        filler = where / "filler"
        storage = SQLiteStorage(where / "f.db")
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                filler.unlink()
                freed = True

        runs = await drive_through_a_full_disk(storage, lambda: fill(filler), free, caplog)
        assert freed
        assert len(runs) >= 12


async def test_a_full_database_heals_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same through SQLite's page limit (``SQLITE_FULL`` on any machine)."""
    path = tmp_path / "f.db"
    storage = SQLiteStorage(path)
    storage.open()
    storage.close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]

    class Limited(SQLiteStorage):  # type: ignore[misc]  # the test reaches its connection
        limit = pages + 40

        def open(self) -> None:
            super().open()
            self.set_limit()

        def set_limit(self) -> None:
            assert self._db is not None
            self._db.execute(f"PRAGMA max_page_count = {self.limit}")

    limited = Limited(path)

    def free() -> None:
        limited.limit = 1_000_000
        limited.set_limit()

    await drive_through_a_full_disk(limited, lambda: None, free, caplog)
