"""The ``memable`` command line: see and steer the instances in a database.

It needs none of the application's code (stored values are JSON envelopes) and works
beside a running engine: it reads a SQLite file through a read-only connection, and
hands signals, cancels, resumes and purges to the engine that owns the file through
its inbox (or applies them itself when no engine owns it). On Postgres it is a client
(``PostgresStorage(register=False)``): it reads, and writes those requests directly,
for the engines to pick up. Errors are one line on stderr and exit status 2; a request
the database refuses exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from ._records import InstanceState

if TYPE_CHECKING:
    from ._inspect import History
    from .storage._protocol import Storage

__all__ = ["COMMANDS", "CliError", "main"]

#: How long ``signal``, ``cancel``, ``resume`` and ``purge`` wait for a running
#: engine to apply them (seconds).
ANSWER_TIMEOUT = 10.0


class CliError(Exception):
    """A one-line error for the user; the command exits with ``status``."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit status 2 (argparse's default prints the usage too)."""
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``1d12h``, ``30m``, ``45s``, ``2w`` as a timedelta (argparse type)."""
    compact = text.replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (like 7d, 12h, 1d12h, 30m)")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'not JSON: {text!r} (quote strings: \'"yes"\'; true, 3, {{"a": 1}} are JSON)'
        ) from None


# -- opening the database ----------------------------------------------------------------


def _is_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def _postgres(db: str, schema: str, lease: float = 15.0) -> Storage:
    """A Postgres client (it registers no engine, never creates the schema), not open."""
    try:
        from .storage._postgres import PostgresStorage
    except ImportError:
        raise CliError(
            "a postgresql:// database needs psycopg: pip install 'memable[postgres]'"
        ) from None
    try:
        return PostgresStorage(db, schema=schema, pool_size=2, register=False, lease=lease)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def open_reader(db: str, schema: str = "memable", *, lease: float = 15.0) -> Storage:
    """The storage of *db*, opened for reading beside any engine that runs on it (on
    Postgres: a client, which can steer instances too)."""
    from ._exceptions import StorageError

    if _is_url(db):
        storage = _postgres(db, schema, lease)
    else:
        from .storage._sqlite import SQLiteStorage

        storage = SQLiteStorage(db, read_only=True)
    try:
        storage.open()
    except StorageError as exc:
        raise CliError(str(exc)) from exc
    return storage


# -- the commands --------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from . import _cliview, _inspect
    from ._info import InstanceInfo

    storage = open_reader(args.db, args.schema)
    try:
        after = None
        if args.since is not None:
            after = (datetime.now(UTC) - args.since).timestamp()
        try:
            records, cursor = _inspect.load_page(
                storage, workflow=args.workflow, status=args.status, waiting_on=args.waiting_on,
                parent_id=args.parent, created_after=after, limit=args.limit, after=args.after,
            )  # fmt: skip
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    finally:
        storage.close()
    infos = [InstanceInfo.from_record(record) for record in records]
    _cliview.print_list(infos, cursor, as_json=args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    from . import _cliview

    storage = open_reader(args.db, args.schema)
    try:
        history = load(storage, args.instance_id)
        tree = _children_tree(storage, history)
    finally:
        storage.close()
    _cliview.print_show(history, tree, as_json=args.json, now=time.time())
    return 0


def load(storage: Storage, instance_id: str) -> History:
    """The history of *instance_id* as the command line sees it (JSON values)."""
    from . import _inspect
    from ._info import InstanceInfo

    record = storage.get_instance(instance_id)
    if record is None:
        raise CliError(f"no instance {instance_id!r} in this database")
    return _inspect.load_history(storage, record)(InstanceInfo.from_record)


def _children_tree(storage: Storage, history: History, limit: int = 500) -> list[Any]:
    """The children of an instance, each with its own children: ``[(info, [...]), ...]``."""
    from ._info import InstanceInfo

    budget = [limit]

    def below(instance_id: str) -> list[Any]:
        nodes = []
        for record in storage.list_instances(parent_id=instance_id, limit=budget[0]):
            budget[0] -= 1
            nodes.append((InstanceInfo.from_record(record), below(record.instance_id)))
            if budget[0] <= 0:
                break
        return nodes

    nodes = []
    for child in history.children:
        if budget[0] <= 0:
            break
        budget[0] -= 1
        nodes.append((child, below(child.instance_id)))
    return nodes


def _signal(args: argparse.Namespace) -> int:
    _check_ids(args.instance_id, args.key)
    payload = json.dumps(args.payload)
    return _steer(args, "signal", args.instance_id, key=args.key, payload=payload)


def _cancel(args: argparse.Namespace) -> int:
    _check_ids(args.instance_id)
    return _steer(args, "cancel", args.instance_id, reason=args.reason)


def _resume(args: argparse.Namespace) -> int:
    _check_ids(args.instance_id)
    return _steer(args, "resume", args.instance_id)


def _purge(args: argparse.Namespace) -> int:
    seconds = args.older_than.total_seconds()
    return _steer(args, "purge", "", payload=repr(seconds))


def _check_ids(instance_id: str, key: str | None = None) -> None:
    from ._exceptions import InvalidKey
    from ._keys import check_instance_ref, check_key

    try:
        check_instance_ref(instance_id)
        if key is not None:
            check_key(key, "suspend point key")
    except InvalidKey as exc:
        raise CliError(str(exc)) from exc


def _steer(args: argparse.Namespace, verb: str, instance_id: str, **request: Any) -> int:
    """Apply a request through the owning engine's inbox, or directly if none owns it."""
    from . import _cliview

    if _is_url(args.db):
        storage = open_reader(args.db, args.schema)
        try:
            answer = _direct(storage, verb, instance_id, **request)
        finally:
            storage.close()
    else:
        answer = _steer_sqlite(args.db, verb, instance_id, **request)
    result = json.loads(answer)
    _cliview.print_answer(result, as_json=args.json)
    if result.get("outcome") == "not_found":
        return 2
    return 0 if result.get("ok") else 1


def _steer_sqlite(path: str, verb: str, instance_id: str, **request: Any) -> str:
    from ._exceptions import StorageError
    from .storage._sqlite import InboxClient, SQLiteStorage, owner_of

    open_reader(path).close()  # a missing file or another kind of database: say so first
    for attempt in range(3):
        owner = owner_of(path)  # before any connection of ours (see owner_of)
        if owner is not None:
            try:
                client = InboxClient(path)
            except StorageError as exc:
                raise CliError(str(exc)) from exc
            try:
                return _through_inbox(client, owner, verb, instance_id, **request)
            finally:
                client.close()
        storage = SQLiteStorage(path)
        try:
            storage.open()
        except StorageError as exc:
            if "in use by another engine" in str(exc) and attempt < 2:
                continue  # an engine started meanwhile: hand it the request
            raise CliError(str(exc)) from exc
        try:
            return _direct(storage, verb, instance_id, **request)
        finally:
            storage.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _through_inbox(client: Any, owner: str, verb: str, instance_id: str, **request: Any) -> str:
    item = client.post(verb, instance_id, now=time.time(), **request)
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while time.monotonic() < deadline:
        answer = client.answer(item)
        if answer is not None:
            return str(answer)
        time.sleep(0.01)
    if client.withdraw(item):
        raise CliError(
            f"the engine that owns the database (process {owner}) did not apply the request"
            f" within {ANSWER_TIMEOUT:g} s; nothing was done",
            status=1,
        )
    answer = client.answer(item)  # applied just now
    return str(answer) if answer is not None else '{"ok": true, "outcome": "applied"}'


def _direct(storage: Storage, verb: str, instance_id: str, **request: Any) -> str:
    """Apply a request in storage: a SQLite file no engine owns, or Postgres."""
    from ._inbox import apply_directly

    payload = request.pop("payload", None)
    return apply_directly(storage, verb, instance_id, now=time.time(), payload=payload, **request)


def _engines(args: argparse.Namespace) -> int:
    from . import _cliview

    storage = open_reader(args.db, args.schema, lease=args.lease)
    try:
        reader = getattr(storage, "list_engines", None)
        rows = None if reader is None else reader()
    finally:
        storage.close()
    if rows is not None:
        _cliview.print_shared_engines(rows, as_json=args.json, now=time.time())
        return 0
    from .storage._sqlite import owner_of

    owner = owner_of(args.db)
    engines = [] if owner is None else [{"process": owner, "storage": "sqlite"}]
    _cliview.print_engines(engines, as_json=args.json)
    return 0


def _queues(args: argparse.Namespace) -> int:
    from . import _cliview

    storage = open_reader(args.db, args.schema)
    try:
        reader = getattr(storage, "list_queues", None)
        if reader is None:
            raise CliError("this storage has no queues")
        rows = reader()
    finally:
        storage.close()
    _cliview.print_queues(rows, as_json=args.json)
    return 0


def _schedules(args: argparse.Namespace) -> int:
    from . import _cliview

    storage = open_reader(args.db, args.schema)
    try:
        reader = getattr(storage, "list_schedules", None)
        if reader is None:
            raise CliError("this storage has no schedules")
        rows = reader()
        last = {row.name: storage.get_instance(row.last_run) for row in rows if row.last_run}
    finally:
        storage.close()
    statuses: dict[str, str] = {
        name: record.status for name, record in last.items() if record is not None
    }
    _cliview.print_schedules(rows, statuses, as_json=args.json)
    return 0


def _web(args: argparse.Namespace) -> int:
    try:
        from .web._serve import serve
    except ImportError as exc:  # pragma: no cover - the web extra is missing
        raise CliError(f"{exc}; install memable[web]") from exc
    try:
        return serve(
            args.db,
            schema=args.schema,
            host=args.host,
            port=args.port,
            allow_actions=args.allow_actions,
            backend=args.backend,
            imports=args.imports,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _args_web(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="the address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="the port (default: %(default)s)")
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help="let the dashboard signal, cancel and resume instances (each a POST with a CSRF"
        " token; on a SQLite file, handed to the engine that owns it through its inbox; on"
        " Postgres, written directly, and the engines pick it up)",
    )
    p.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="asyncio (served by uvicorn, the default) or trio (served by hypercorn)",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (repeatable) to know the payload types of its suspend points:"
        " the dashboard shows them and checks signal payloads against them",
    )


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.demo_db, backend=args.backend, crash_run=args.crash_run)


def _args_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workflow", "-w", help="only instances of this workflow")
    p.add_argument(
        "--status",
        "-s",
        choices=typing.get_args(InstanceState),
        help="only instances in this status",
    )
    p.add_argument("--waiting-on", metavar="KEY", help="only instances suspended on KEY")
    p.add_argument("--parent", metavar="ID", help="only the children of instance ID")
    p.add_argument("--since", type=duration, help="only instances created in the last 2h, 7d…")
    p.add_argument("--limit", "-n", type=int, default=50, help="page size (default: 50)")
    p.add_argument("--after", metavar="CURSOR", help="the page after CURSOR (printed below)")


def _args_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance_id", metavar="ID")


def _args_signal(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance_id", metavar="ID")
    p.add_argument("key", metavar="KEY", help="the suspend point's key")
    p.add_argument("payload", metavar="JSON", type=_json_arg, help="the payload, as JSON")


def _args_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance_id", metavar="ID")
    p.add_argument("--reason", default="cancelled from the command line")


def _args_purge(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--older-than", type=duration, required=True, metavar="AGE", help="7d, 12h, 30m…"
    )


def _lease(text: str) -> float:
    try:
        lease = float(text)
    except ValueError:
        lease = float("nan")
    if not 0.3 <= lease < 86400:
        raise argparse.ArgumentTypeError(f"not a lease in seconds: {text!r} (like 15, 2.5)")
    return lease


def _args_engines(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease",
        type=_lease,
        default=15.0,
        metavar="SECONDS",
        help="on Postgres, the engines' lease: a heartbeat older than it is shown expired"
        " (default: %(default)s)",
    )


def _args_none(p: argparse.ArgumentParser) -> None:
    pass


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        dest="demo_db",
        default="memable-demo.db",
        help="the SQLite file (default: %(default)s)",
    )
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--crash-run", metavar="ID", help=argparse.SUPPRESS)


#: The commands: name -> (help, add its arguments, run it). Other parts of memable add
#: theirs here (``engines`` on Postgres, ``queues``, ``schedules``, ``web``).
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "list": ("list instances, newest first", _args_list, _list),
    "show": ("show what an instance did: steps, errors, waits, children", _args_id, _show),
    "signal": ("deliver a JSON payload to a suspend point (writes)", _args_signal, _signal),
    "cancel": ("cancel a running or suspended instance (writes)", _args_cancel, _cancel),
    "resume": ("run a failed or stuck instance again (writes)", _args_id, _resume),
    "purge": ("delete finished instances older than an age (writes)", _args_purge, _purge),
    "engines": ("the engines that run on the database", _args_engines, _engines),
    "queues": ("queues: limits, pause, and instances enqueued and running", _args_none, _queues),
    "schedules": ("schedules: the last tick and the instance it started", _args_none, _schedules),
    "web": ("serve the dashboard (read-only unless --allow-actions)", _args_web, _web),
    "demo": ("run a durable workflow that survives a killed process", _args_demo, _demo),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memable")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"memable {_version()}")
        parser.exit(0)


def parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="the database: a SQLite file or a postgresql:// URL (default: $MEMABLE_DB)",
    )
    common.add_argument(
        "--schema",
        default=argparse.SUPPRESS,
        help="the schema of memable's tables in a postgresql:// database (default:"
        " $MEMABLE_SCHEMA, else memable)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    main = _Parser(
        prog="memable",
        description="See and steer durable workflows stored by memable.",
        parents=[common],
    )
    main.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    commands = main.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, (help, add, _) in COMMANDS.items():
        parents: list[_Parser] = [] if name == "demo" else [common]
        description = help[:1].upper() + help[1:] + "."
        add(commands.add_parser(name, help=help, description=description, parents=parents))
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``memable`` command line; return the exit status."""
    args = parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.db = getattr(args, "db", None) or os.environ.get("MEMABLE_DB")
    if args.command != "demo" and not args.db:
        return _fail("no database: pass --db PATH (or a postgresql:// URL) or set MEMABLE_DB")
    schema = getattr(args, "schema", None)
    if schema is not None and not _is_url(args.db or ""):
        return _fail("--schema is for a postgresql:// database")
    args.schema = schema or os.environ.get("MEMABLE_SCHEMA") or "memable"
    from ._exceptions import MemableError

    try:
        return COMMANDS[args.command][2](args)
    except CliError as exc:
        return _fail(str(exc), exc.status)
    except MemableError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # pragma: no cover - `memable list | head`
        return 0


def _fail(message: str, status: int = 2) -> int:
    print(f"memable: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
