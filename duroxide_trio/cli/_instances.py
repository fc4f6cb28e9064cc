"""``duroxide-trio instances``: look at and manage orchestration instances in a database.

Every command opens the database without creating anything: a missing SQLite file, a file that is not a
duroxide-trio database or a missing PostgreSQL schema is an error that names it. An unknown instance id or
an impossible action (cancelling a finished instance, deleting a running one without ``--force``) is a
clear message on stderr and exit code 1. Readable output by default, ``--json`` for machines.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from ..history import Status
from ..providers.base import version_key
from . import app
from ._provider import CannotOpen, DbOption, SchemaOption, UrlOption, masked, open_provider

if TYPE_CHECKING:
    from ..client import Client, OrchestrationState
    from ..providers.base import InstanceInfo

__all__ = ["CliError", "instances_app", "parse_status", "parse_when"]

instances_app = typer.Typer(
    help="List, inspect, signal, cancel, prune and delete orchestration instances "
    "(--db PATH for SQLite, --database-url URL / $DATABASE_URL for PostgreSQL).",
    no_args_is_help=True,
)
app.add_typer(instances_app, name="instances")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

#: The values ``--status`` accepts (any case) and the stored status each means.
STATUS_VALUES = {
    "running": Status.RUNNING,
    "completed": Status.COMPLETED,
    "failed": Status.FAILED,
    "continuedasnew": Status.CONTINUED_AS_NEW,
}


class CliError(Exception):
    """A problem the operator can fix (unknown id, impossible action, bad option): printed as one line on
    stderr, exit code 1."""


def parse_status(value: str | None) -> str | None:
    """``--status`` in any case (``completed``, ``FAILED``, ``continued-as-new``) -> the stored status.

    Raises:
        CliError: not a status; the message lists the accepted values.
    """
    if value is None:
        return None
    key = re.sub(r"[\s_-]", "", value).lower()
    if key not in STATUS_VALUES:
        raise CliError(f"unknown status {value!r}; use one of: running, completed, failed, continued-as-new")
    return STATUS_VALUES[key]


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str, *, now: datetime | None = None) -> datetime:
    """``--completed-before``: an ISO date/time (``2026-11-30``, ``2026-11-30T12:00``, UTC unless it has an
    offset) or an age (``30m``, ``12h``, ``7d``, ``2w``: that long before now).

    Raises:
        CliError: neither form.
    """
    match = _RELATIVE.match(value)
    if match:
        delta = timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(
            f"cannot read {value!r} as a time: give an ISO date/time (2026-11-30, 2026-11-30T12:00Z) "
            "or an age (30m, 12h, 7d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _console() -> Console:
    # A pipe (grep, less) gets long lines rather than ids folded at 80 columns.
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, soft_wrap=False, width=200 if piped else None)


def _run(db: str | None, url: str | None, schema: str, action: Callable[[Client], Awaitable[int]]) -> None:
    """Open the provider without creating anything, run ``action`` with a client, exit with its code;
    a ``CliError`` or a provider error is one line on stderr and exit code 1."""
    from ..providers.base import ProviderError

    async def main() -> int:
        import duroxide_trio as dt

        async with open_provider(db, url, schema) as provider:
            return await action(dt.Client(provider))

    try:
        code = anyio.run(main)
    except (CliError, CannotOpen, typer.BadParameter) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except ProviderError as exc:
        typer.echo(f"error: {masked(exc.message)}", err=True)
        raise typer.Exit(1) from None
    except (ValueError, TypeError) as exc:  # bad input the API refused: a schema name, an id, a payload
        typer.echo(f"error: {masked(str(exc))}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


Action = Callable[["Client"], Awaitable[int]]
"""What an instances command does once the database is open: given a client, returns the exit code."""


def _command(name: str) -> Callable[[Callable[..., Action]], Callable[..., Action]]:
    """Register ``build`` as ``duroxide-trio instances NAME`` with ``--db``, ``--database-url`` and
    ``--schema`` added to its options: the command calls ``build`` with its own options (which checks
    them and returns the action) and runs the action on the database (:func:`_run`)."""

    def register(build: Callable[..., Action]) -> Callable[..., Action]:
        own = inspect.signature(build, eval_str=True)
        database = [
            inspect.Parameter("db", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DbOption),
            inspect.Parameter("database_url_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=UrlOption),
            inspect.Parameter("schema", inspect.Parameter.KEYWORD_ONLY, default="duroxide", annotation=SchemaOption),
        ]  # fmt: skip

        @functools.wraps(build, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def command(**options: Any) -> None:
            db, url, schema = options.pop("db"), options.pop("database_url_"), options.pop("schema")
            _run(db, url, schema, build(**options))

        command.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[*own.parameters.values(), *database], return_annotation=None
        )
        instances_app.command(name)(command)
        return build

    return register


# ---------------------------------------------------------------------------------------------------------
# formatting


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).isoformat(timespec="milliseconds")


def _when(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


_STATUS_STYLE: dict[str, str] = {
    Status.RUNNING: "yellow",
    Status.COMPLETED: "green",
    Status.FAILED: "red",
    Status.CONTINUED_AS_NEW: "cyan",
}


def _styled_status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def _state_dict(state: OrchestrationState) -> dict[str, Any]:
    return {
        "instance_id": state.instance_id,
        "status": state.status.value,
        "name": state.name,
        "version": state.version,
        "execution_id": state.execution_id,
        "output": state.output,
        "error": None
        if state.error is None
        else {"category": state.error.category, "kind": state.error.kind, "message": state.error.message},
        "custom_status": state.custom_status,
        "created_at": state.created_at.isoformat() if state.created_at else None,
        "updated_at": state.updated_at.isoformat() if state.updated_at else None,
        "parent_instance_id": state.parent_instance_id,
    }


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


async def _require(client: Client, instance_id: str) -> InstanceInfo:
    info = await client.get_instance_info(instance_id)
    if info is None:
        raise CliError(f"no instance {instance_id!r} in this database")
    return info


# ---------------------------------------------------------------------------------------------------------
# read-only commands


@_command("list")
def list_instances(
    status: Annotated[
        str | None,
        typer.Option(help="Only instances with this status: running, completed, failed (any case)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only instances of this orchestration name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows (newest first); 0 for all.", min=0)] = 100,
    as_json: JsonOption = False,
) -> Action:
    """List instances, newest first: id, name, version, status, created and updated (UTC)."""

    async def action(client: Client) -> int:
        wanted = parse_status(status)
        rows: list[InstanceInfo] = []
        for instance_id in await client.list_instances(wanted):
            info = await client.get_instance_info(instance_id)
            if info is None or (name is not None and info.name != name):
                continue
            rows.append(info)
            if limit and len(rows) >= limit:
                break
        if as_json:
            typer.echo(
                json.dumps(
                    [
                        {
                            "instance_id": i.instance_id,
                            "name": i.name,
                            "version": i.version,
                            "status": i.status,
                            "execution_id": i.current_execution_id,
                            "created_at": _iso(i.created_at_ms),
                            "updated_at": _iso(i.updated_at_ms),
                            "parent_instance_id": i.parent_instance_id,
                        }
                        for i in rows
                    ],
                    indent=2,
                )
            )
            return 0
        console = _console()
        if not rows:
            console.print("no instances" + (f" with status {wanted}" if wanted else "") + (
                f" named {name!r}" if name else ""))  # fmt: skip
            return 0
        table = Table(header_style="bold", box=None, pad_edge=False)
        table.add_column("Instance", overflow="fold")
        table.add_column("Name", no_wrap=True)
        table.add_column("Version", no_wrap=True)
        table.add_column("Status", no_wrap=True)
        table.add_column("Created (UTC)", no_wrap=True)
        table.add_column("Updated (UTC)", no_wrap=True)
        for i in rows:
            table.add_row(
                escape(i.instance_id), escape(i.name), i.version or "—", _styled_status(i.status),
                _when(i.created_at_ms), _when(i.updated_at_ms),
            )  # fmt: skip
        console.print(table)
        if limit and len(rows) >= limit:
            console.print(f"[dim](first {limit}; --limit 0 for all)[/]")
        return 0

    return action


@_command("show")
def show(
    instance_id: str,
    as_json: JsonOption = False,
) -> Action:
    """Show an instance: status, name, version, execution, times, output or error, custom status."""

    async def action(client: Client) -> int:
        await _require(client, instance_id)
        state = await client.get_status(instance_id)
        executions = await client.list_executions(instance_id)
        data = _state_dict(state) | {"executions": executions}
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
            return 0
        console = _console()
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("Instance", escape(state.instance_id))
        table.add_row("Status", _styled_status(state.status.value))
        table.add_row("Name", escape(state.name or "—"))
        table.add_row("Version", state.version or "—")
        table.add_row("Execution", f"{state.execution_id} (of {len(executions)})")
        table.add_row("Created", data["created_at"] or "—")
        table.add_row("Updated", data["updated_at"] or "—")
        if state.parent_instance_id:
            table.add_row("Parent", escape(state.parent_instance_id))
        if state.error is not None:
            table.add_row("Error", escape(f"{state.error.category}/{state.error.kind}: {state.error.message}"))
        elif state.status is Status.COMPLETED:
            table.add_row("Output", escape(json.dumps(state.output, indent=2, default=str)))
        if state.custom_status is not None:
            table.add_row("Custom status", escape(json.dumps(state.custom_status, default=str)))
        console.print(table)
        return 0

    return action


def _event_detail(kind: Any) -> str:
    import attrs

    parts = []
    for field in attrs.fields(type(kind)):
        value = getattr(kind, field.name)
        if value is None or value == [] or field.name in ("carry_forward",):
            continue
        parts.append(f"{field.name}={_short(value, 48)}")
    return ", ".join(parts)


@_command("history")
def history(
    instance_id: str,
    execution: Annotated[int | None, typer.Option(help="Execution id (default: the current one).")] = None,
    as_json: JsonOption = False,
) -> Action:
    """Print an execution's history: one event per row (id, time, type, details); --json for all fields."""
    from ..history import event_to_dict

    async def action(client: Client) -> int:
        info = await _require(client, instance_id)
        executions = await client.list_executions(instance_id)
        chosen = execution if execution is not None else info.current_execution_id
        if chosen not in executions:
            listed = ", ".join(str(e) for e in executions) or "none"
            raise CliError(f"instance {instance_id!r} has no execution {chosen} (executions: {listed})")
        events = await client.get_history(instance_id, chosen)
        if as_json:
            typer.echo(json.dumps([event_to_dict(e) for e in events], indent=2, default=str))
            return 0
        console = _console()
        console.print(f"[bold]{escape(instance_id)}[/] execution {chosen}: {len(events)} events")
        table = Table(header_style="bold", box=None, pad_edge=False)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("Time (UTC)", no_wrap=True)
        table.add_column("Event", no_wrap=True)
        table.add_column("Details", overflow="fold")
        for e in events:
            stamp = (
                datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
                if e.timestamp_ms
                else "—"
            )
            detail = _event_detail(e.kind)
            if e.source_event_id is not None:
                detail = f"for #{e.source_event_id}" + (f", {detail}" if detail else "")
            table.add_row(str(e.event_id), stamp, e.type_name, escape(detail))
        console.print(table)
        return 0

    return action


@_command("tree")
def tree(
    instance_id: str,
    as_json: JsonOption = False,
) -> Action:
    """Show an instance and its sub-orchestrations as a tree, with each one's status."""

    async def action(client: Client) -> int:
        root = await _require(client, instance_id)
        infos: dict[str, InstanceInfo] = {root.instance_id: root}
        for member in await client.get_instance_tree(instance_id):
            if member not in infos:
                got = await client.get_instance_info(member)
                if got is not None:
                    infos[member] = got
        children: dict[str, list[str]] = {}
        for member, info in infos.items():
            if member != instance_id and info.parent_instance_id is not None:
                children.setdefault(info.parent_instance_id, []).append(member)
        if as_json:

            def node(member: str) -> dict[str, Any]:
                i = infos[member]
                return {"instance_id": member, "name": i.name, "status": i.status,
                        "children": [node(c) for c in children.get(member, [])]}  # fmt: skip

            typer.echo(json.dumps(node(instance_id), indent=2))
            return 0

        def label(member: str) -> str:
            i = infos[member]
            return f"{escape(member)} [dim]{escape(i.name)}[/] {_styled_status(i.status)}"

        view = Tree(label(instance_id))

        def grow(branch: Tree, member: str) -> None:
            for child in children.get(member, []):
                grow(branch.add(label(child)), child)

        grow(view, instance_id)
        _console().print(view)
        return 0

    return action


@_command("metrics")
def metrics(
    as_json: JsonOption = False,
) -> Action:
    """System metrics (instances by status, executions, events) and queue depths."""

    async def action(client: Client) -> int:
        m = await client.get_system_metrics()
        q = await client.get_queue_depths()
        rows = [
            ("Instances", m.total_instances),
            ("  running", m.running_instances),
            ("  completed", m.completed_instances),
            ("  failed", m.failed_instances),
            ("Executions", m.total_executions),
            ("History events", m.total_events),
            ("Orchestrator queue", q.orchestrator_queue),
            # instances waiting per the version their next turn runs at (work no runtime's
            # supported_replay_versions contains stays here)
            *((f"  instances at {escape(version)}" if version is not None else "  instances at the latest version", n)
              for version, n in sorted(q.orchestrator_by_version.items(),
                                       key=lambda kv: (kv[0] is None, version_key(kv[0]) or 0, kv[0] or ""))),
            ("Worker queue", q.worker_queue),
            *((f"  tag {tag}" if tag is not None else "  untagged", n)
              for tag, n in sorted(q.worker_by_tag.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
              if any(t is not None for t in q.worker_by_tag)),
            ("Timer queue", q.timer_queue),
        ]
        if as_json:
            import attrs

            typer.echo(json.dumps({"system": attrs.asdict(m), "queues": attrs.asdict(q)}, indent=2))
            return 0
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        for key, value in rows:
            table.add_row(key, str(value))
        _console().print(table)
        return 0

    return action


# ---------------------------------------------------------------------------------------------------------
# commands that change something


def _json_arg(data: str | None) -> Any:
    try:
        return None if data is None else json.loads(data)
    except RecursionError:
        raise typer.BadParameter("DATA is JSON nested too deeply to decode") from None
    except ValueError as exc:
        raise typer.BadParameter(f"DATA must be JSON: {exc}") from exc


def _on_running(
    instance_id: str, what: str, send: Callable[[Client], Awaitable[None]], done: str
) -> Action:
    """The action of a command that sends something to a running instance: check it runs (else a
    ``CliError`` saying ``cannot WHAT``), ``send``, print ``done``."""

    async def action(client: Client) -> int:
        info = await _require(client, instance_id)
        if info.status != Status.RUNNING:
            raise CliError(f"cannot {what}: instance {instance_id!r} is already {info.status}")
        await send(client)
        typer.echo(done)
        return 0

    return action


@_command("raise-event")
def raise_event(
    instance_id: str,
    name: str,
    data: Annotated[str | None, typer.Argument(help="JSON data.")] = None,
) -> Action:
    """Raise the external event NAME on a running instance (ctx.wait_for_event)."""
    value = _json_arg(data)
    return _on_running(instance_id, f"raise event {name!r}", lambda c: c.raise_event(instance_id, name, value),
                       f"raised event {name!r} on {instance_id}")  # fmt: skip


@_command("enqueue")
def enqueue(
    instance_id: str,
    queue: str,
    data: Annotated[str | None, typer.Argument(help="JSON data.")] = None,
) -> Action:
    """Put a message on a running instance's QUEUE mailbox (ctx.dequeue_event)."""
    value = _json_arg(data)
    return _on_running(instance_id, f"enqueue on {queue!r}", lambda c: c.enqueue_event(instance_id, queue, value),
                       f"enqueued a message on {instance_id} queue {queue!r}")  # fmt: skip


@_command("cancel")
def cancel(
    instance_id: str,
    reason: Annotated[str, typer.Option(help="Recorded as 'canceled: <reason>'.")] = "",
) -> Action:
    """Cancel a running instance (and its children); it ends Failed with 'canceled: <reason>'."""
    return _on_running(instance_id, "cancel", lambda c: c.cancel_instance(instance_id, reason),
                       f"cancellation of {instance_id} requested")  # fmt: skip


def _deleted(result: Any) -> str:
    return (
        f"deleted {result.instances_deleted} instance(s), {result.executions_deleted} execution(s), "
        f"{result.events_deleted} event(s)"
    )


@_command("delete")
def delete(
    instance_id: Annotated[str | None, typer.Argument(help="The root instance to delete.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Also delete a running instance.")] = False,
    completed_before: Annotated[
        str | None,
        typer.Option(
            "--completed-before",
            help="Bulk: delete finished root instances last updated before this time "
            "(ISO date/time or an age such as 7d, 12h).",
        ),
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="Bulk: only finished instances with this status (completed, failed).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Bulk: at most this many instances.", min=1)] = 1000,
) -> Action:
    """Delete one root instance and its sub-orchestrations, or (with --completed-before and/or --status)
    finished root instances in bulk; running instances are never bulk-deleted."""
    bulk = completed_before is not None or status is not None
    if bulk and instance_id is not None:
        raise typer.BadParameter("give an INSTANCE_ID or bulk filters (--completed-before/--status), not both")
    if not bulk and instance_id is None:
        raise typer.BadParameter("give an INSTANCE_ID, or --completed-before / --status for a bulk delete")

    async def action(client: Client) -> int:
        if instance_id is not None:
            info = await _require(client, instance_id)
            if info.parent_instance_id is not None:
                raise CliError(
                    f"{instance_id!r} is a sub-orchestration of {info.parent_instance_id!r}; delete the root"
                )
            if info.status == Status.RUNNING and not force:
                raise CliError(f"instance {instance_id!r} is Running; pass --force to delete it anyway")
            typer.echo(_deleted(await client.delete_instance(instance_id, force)))
            return 0
        wanted = parse_status(status)
        if wanted == Status.RUNNING:
            raise CliError("running instances are never bulk-deleted; delete them one by one with --force")
        before = parse_when(completed_before) if completed_before is not None else None
        ids: list[str] | None = None
        if wanted is not None:
            ids = []
            for candidate in await client.list_instances(wanted):
                found = await client.get_instance_info(candidate)
                if found is not None and found.parent_instance_id is None:
                    ids.append(candidate)
            if not ids:
                typer.echo("deleted 0 instance(s)")
                return 0
        result = await client.delete_instance_bulk(instance_ids=ids, completed_before=before, limit=limit)
        typer.echo(_deleted(result))
        return 0

    return action


@_command("prune")
def prune(
    instance_id: Annotated[
        str | None, typer.Argument(help="Prune this instance (default: every instance).")
    ] = None,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", help="Keep the newest N executions.", min=1)
    ] = None,
    completed_before: Annotated[
        str | None,
        typer.Option(
            "--completed-before", help="Only executions finished before this time (ISO or an age: 7d, 12h)."
        ),
    ] = None,
) -> Action:
    """Delete old executions (left by continue-as-new); the current execution is always kept."""
    if keep_last is None and completed_before is None:
        raise typer.BadParameter("give --keep-last N and/or --completed-before WHEN")

    async def action(client: Client) -> int:
        before = parse_when(completed_before) if completed_before is not None else None
        targets: Sequence[str]
        if instance_id is not None:
            await _require(client, instance_id)
            targets = [instance_id]
        else:
            targets = await client.list_instances()
        executions = events = 0
        for target in targets:
            result = await client.prune_executions(target, keep_last=keep_last, completed_before=before)
            executions += result.executions_deleted
            events += result.events_deleted
        typer.echo(f"pruned {executions} execution(s), {events} event(s) from {len(targets)} instance(s)")
        return 0

    return action
