"""What the ``memable`` command line prints: tables that fit the terminal for people
(drawn by ``rich`` when it is installed and the output is a terminal, plain text
otherwise), and stable JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._info import InstanceInfo
from ._inspect import History, SignalInfo, StepInfo
from ._serde import UNTYPED

if TYPE_CHECKING:
    from ._records import EngineRecord, QueueRecord, ScheduleRecord

__all__ = [
    "print_answer",
    "print_engines",
    "print_list",
    "print_queues",
    "print_schedules",
    "print_shared_engines",
    "print_show",
    "to_json",
]


# -- JSON -----------------------------------------------------------------------------------


def to_json(obj: Any) -> Any:
    """Attrs objects (and lists and dicts of them) as JSON-ready data: times as ISO 8601
    text, durations as seconds; a step also says its ``duration``."""
    if attrs.has(type(obj)):
        data = {field.name: to_json(getattr(obj, field.name)) for field in attrs.fields(type(obj))}
        if isinstance(obj, StepInfo):
            data["duration"] = obj.duration.total_seconds()
        return data
    if isinstance(obj, list | tuple):
        return [to_json(item) for item in obj]
    if isinstance(obj, dict):
        return {str(key): to_json(value) for key, value in obj.items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    return obj


def _dump(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


# -- tables ---------------------------------------------------------------------------------


def _width() -> int:
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _rich() -> bool:
    wanted = os.environ.get("MEMABLE_RICH")
    if wanted == "0" or (wanted is None and not sys.stdout.isatty()):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
    """Print a table that fits the terminal: the widest columns are cut first."""
    if _rich():
        from rich.console import Console
        from rich.table import Table

        grid = Table(title=title or None, title_justify="left", header_style="bold")
        for header in headers:
            grid.add_column(header, overflow="fold")
        for row in rows:
            grid.add_row(*row)
        Console(width=_width()).print(grid)
        return
    if title:
        print(title)
    rows = [[cell.replace("\n", " ") for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    room = _width() - 2 * (len(headers) - 1)
    while sum(widths) > room and max(widths) > 6:
        widest = widths.index(max(widths))
        widths[widest] -= 1
    for row in [list(headers), *rows]:
        cells = [_cut(cell, w).ljust(w) for cell, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


#: The states whose status message is shown beside them.
_LIVE: Final = ("running", "suspended", "cancelled")


def _about(info: InstanceInfo) -> str:
    """What a row of the listing says beside the status."""
    if info.status == "suspended" and info.waiting_on:
        text = "waiting on " + ", ".join(info.waiting_on)
        return f"{text} — {info.status_message}" if info.status_message else text
    if info.error is not None:
        return str(info.error)
    # A finished instance's last message is history (``show`` has it), not news.
    return info.status_message if info.status_message and info.status in _LIVE else ""


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if value is not None else "-"


# -- the commands' output -------------------------------------------------------------------


def print_list(infos: Sequence[InstanceInfo], cursor: str | None, *, as_json: bool) -> None:
    """The ``list`` command's output."""
    if as_json:
        _dump({"instances": to_json(list(infos)), "next": cursor})
        return
    if not infos:
        print("no instances")
        return
    rows = [[i.instance_id, i.workflow, i.status, _when(i.created_at), _about(i)] for i in infos]
    table(["ID", "WORKFLOW", "STATUS", "CREATED (UTC)", "INFO"], rows)
    if cursor is not None:
        print(f"more: memable list --after {cursor}")


def print_show(history: History, tree: list[Any], *, as_json: bool, now: float) -> None:
    """The ``show`` command's output."""
    if as_json:
        data = to_json(history)
        data["children"] = _tree_json(tree)
        _dump(data)
        return
    info = history.instance
    status: str = info.status
    if info.status_message and info.status in _LIVE:
        status += f" — {info.status_message}"
    header = [
        ("instance", info.instance_id),
        ("workflow", info.workflow),
        ("status", status),
        ("created", _when(info.created_at) + " UTC"),
        ("updated", _when(info.updated_at) + " UTC"),
    ]
    if info.finished_at is not None:
        header.append(("finished", _when(info.finished_at) + " UTC"))
    if info.parent_id is not None:
        header.append(("parent", info.parent_id))
    header.append(("input", _value(info.input)))
    if info.status == "completed":
        header.append(("output", _value(info.output)))
    if info.error is not None:
        header.append(("error", str(info.error)))
    width = _width()
    for name, value in header:
        print(f"{name:<9} {_cut(value, width - 10)}")
    _print_waits(history, now)
    _print_steps(history)
    if history.signals:
        rows = [[s.key, s.state, _when(s.received_at), _payload(s)] for s in history.signals]
        print()
        table(["KEY", "STATE", "RECEIVED (UTC)", "PAYLOAD"], rows, title="signals")
    if history.timers:
        signalled = {s.key for s in history.signals if s.state != "timed_out"}
        finished = info.status in ("completed", "failed", "cancelled")
        rows = []
        for t in history.timers:
            state = _left(t.deadline, t.fired, now)
            if not t.fired and t.key in signalled:
                state = "unused: the signal came first"
            elif not t.fired and finished:
                state = f"unused: the instance {info.status}"
            rows.append([t.key, t.kind, _when(t.deadline), state])
        print()
        table(["KEY", "KIND", "DEADLINE (UTC)", "STATE"], rows, title="timers")
    if tree:
        print()
        print("children")
        _print_tree(tree, "")
    _print_errors(history)


def _payload(signal: SignalInfo) -> str:
    if signal.payload is None:
        return "-"
    kind = "sent as JSON" if signal.payload_type == UNTYPED else signal.payload_type
    return f"{signal.payload} ({kind})"


def _left(deadline: datetime, fired: bool, now: float) -> str:
    if fired:
        return "fired"
    left = deadline.timestamp() - now
    return "due" if left <= 0 else f"in {_span(timedelta(seconds=left))}"


def _print_waits(history: History, now: float) -> None:
    info = history.instance
    if info.status != "suspended":
        return
    timers = {t.key: t for t in history.timers}
    waits = []
    for key in info.waiting_on:
        timer = timers.get(key)
        if timer is not None and timer.kind == "sleep":
            waits.append(f"{key} (timer, {_left(timer.deadline, timer.fired, now)})")
            continue
        kind = history.payload_types.get(key)
        what = f"signal of {kind}" if kind else "signal"
        if timer is not None:
            what += f", deadline {_left(timer.deadline, timer.fired, now)}"
        waits.append(f"{key} ({what})")
    live = [child for child in history.children if child.status in ("running", "suspended")]
    if live:
        waits.append(f"{len(live)} children")
    if waits:
        print(f"{'waits on':<9} " + "; ".join(waits))


def _print_steps(history: History) -> None:
    if not history.steps:
        return
    rows = []
    for n, step in enumerate(history.steps, 1):
        result = str(step.error) if step.error is not None else (step.value or "")
        rows.append([str(n), step.key, step.state, str(step.attempts), _when(step.started_at),
                     _span(step.duration), result])  # fmt: skip
    print()
    table(["#", "STEP", "STATE", "TRIES", "STARTED (UTC)", "TOOK", "RESULT"], rows, title="steps")


def _print_errors(history: History) -> None:
    failed = [step for step in history.steps if step.error is not None]
    error = history.instance.error
    if not failed and error is None:
        return
    print()
    print("errors")
    for step in failed:
        assert step.error is not None
        print(f"--- step {step.key} ({step.state}, {step.attempts} attempts): {step.error}")
        print(step.error.traceback.rstrip() or "(no traceback)")
    if error is not None and error.traceback:
        print(f"--- instance: {error}")
        print(error.traceback.rstrip())


def _print_tree(nodes: list[Any], indent: str) -> None:
    for n, (info, below) in enumerate(nodes):
        last = n == len(nodes) - 1
        about = _about(info)
        print(f"{indent}{'└── ' if last else '├── '}{info.instance_id}  {info.status}"
              + (f"  {about}" if about else ""))  # fmt: skip
        _print_tree(below, indent + ("    " if last else "│   "))


def _tree_json(nodes: list[Any]) -> list[Any]:
    return [{**to_json(info), "children": _tree_json(below)} for info, below in nodes]


def print_answer(result: dict[str, Any], *, as_json: bool) -> None:
    """What a steering command (signal, cancel, resume, purge) did."""
    if as_json:
        _dump(result)
    else:
        print(result.get("message", ""))


def print_engines(engines: list[dict[str, str]], *, as_json: bool) -> None:
    """The ``engines`` command's output."""
    if as_json:
        _dump({"engines": engines})
    elif not engines:
        print("no engine runs on this database")
    else:
        table(["PROCESS", "STORAGE"], [[e["process"], e["storage"]] for e in engines])


def print_shared_engines(rows: Sequence[EngineRecord], *, as_json: bool, now: float) -> None:
    """The ``engines`` command's output on a shared database (Postgres): every registered
    engine, its process, heartbeat age (database clock) and how many instances it holds."""
    data = [
        {
            "engine_id": row.engine_id,
            "name": row.name,
            "host": row.host,
            "process": None if row.pid is None else str(row.pid),
            "started_at": datetime.fromtimestamp(row.started_at, UTC).isoformat(),
            "heartbeat": datetime.fromtimestamp(row.heartbeat, UTC).isoformat(),
            "heartbeat_age": round(row.heartbeat_age, 3),
            "expired": row.expired,
            "instances": row.instances,
            "storage": "postgres",
        }
        for row in rows
    ]
    if as_json:
        _dump({"engines": data})
    elif not data:
        print("no engine is registered on this database")
    else:
        table(
            ["ENGINE", "HOST", "PROCESS", "UP", "HEARTBEAT", "INSTANCES", "NAME"],
            [
                [
                    row.engine_id[:12],
                    row.host or "-",
                    "-" if row.pid is None else str(row.pid),
                    _span(timedelta(seconds=max(0.0, now - row.started_at))),
                    _span(timedelta(seconds=row.heartbeat_age))
                    + " ago"
                    + (" (expired)" if row.expired else ""),
                    str(row.instances),
                    row.name,
                ]
                for row in rows
            ],
        )


def print_queues(rows: Sequence[tuple[QueueRecord, dict[str, int]]], *, as_json: bool) -> None:
    """The ``queues`` command's output: limits, pause, and instances by status."""
    data = [
        {
            "name": row.name,
            "concurrency": row.concurrency,
            "rate_limit": None if row.rate_count is None else [row.rate_count, row.rate_period],
            "paused": row.paused,
            **{status: counts.get(status, 0) for status in ("enqueued", "running", "suspended")},
        }
        for row, counts in rows
    ]
    if as_json:
        _dump({"queues": data})
    elif not data:
        print("no queue has been used with this database")
    else:
        table(
            ["QUEUE", "CONCURRENCY", "RATE", "PAUSED", "ENQUEUED", "RUNNING", "SUSPENDED"],
            [
                [
                    str(q["name"]),
                    "-" if q["concurrency"] is None else str(q["concurrency"]),
                    "-" if row.rate_count is None else f"{row.rate_count}/{row.rate_period:g}s",
                    "yes" if q["paused"] else "no",
                    str(q["enqueued"]),
                    str(q["running"]),
                    str(q["suspended"]),
                ]
                for q, (row, _) in zip(data, rows, strict=True)
            ],
        )


def print_schedules(
    rows: Sequence[ScheduleRecord], statuses: dict[str, str], *, as_json: bool
) -> None:
    """The ``schedules`` command's output: each schedule's last tick and latest instance."""
    data = [
        {
            "name": row.name,
            "last_tick": datetime.fromtimestamp(row.last_tick, UTC).isoformat(),
            "last_run": row.last_run,
            "last_run_status": statuses.get(row.name),
        }
        for row in rows
    ]
    if as_json:
        _dump({"schedules": data})
    elif not data:
        print("no schedule has run on this database")
    else:
        table(
            ["SCHEDULE", "LAST TICK (UTC)", "LAST INSTANCE", "STATUS"],
            [
                [
                    row.name,
                    _when(datetime.fromtimestamp(row.last_tick, UTC)),
                    row.last_run or "-",
                    statuses.get(row.name) or "-",
                ]
                for row in rows
            ],
        )
