"""``duroxide-trio replay``: replay recorded histories against the current code.

    duroxide-trio replay --registry myapp.workflows:registry --database-url $PROD_REPLICA --since 7d
    duroxide-trio replay --registry myapp.workflows:registry exported/*.json

Every instance is reported as deterministic or with its first nondeterministic step; the exit code is 1
when any instance does not replay (nondeterminism, a missing orchestration or version, a history this
engine cannot read), 2 on a usage error, 0 otherwise — so a CI job can replay recent production histories
against a pull request before it is deployed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from ..history import Status
from . import app
from ._provider import CannotOpen, DbOption, SchemaOption, UrlOption, open_provider

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date/datetime (UTC unless it says otherwise) or a span back from now: ``90m``, ``24h``, ``7d``."""
    m = _RELATIVE.match(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO date/time (2026-05-01, 2026-05-01T12:00) nor a span (24h, 7d)",
            param_hint="--since",
        ) from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def load_registry(spec: str) -> Any:
    """``module:attr`` (``attr`` may be dotted) naming a ``Registry`` or a function returning one."""
    from ..registry import Registry

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(f"expected module:attr, got {spec!r}", param_hint="--registry")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}",
                                 param_hint="--registry") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise typer.BadParameter(f"{module_name!r} has no attribute {attr!r}", param_hint="--registry") from exc
    if not isinstance(obj, (Registry, type)) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise typer.BadParameter(f"{spec}() raised {type(exc).__name__}: {exc}", param_hint="--registry") from exc
    if not isinstance(obj, Registry):
        raise typer.BadParameter(f"{spec} is a {type(obj).__name__}, not a duroxide_trio.Registry",
                                 param_hint="--registry")
    return obj


def _last_update_ms(instance: Any) -> int:
    return max((e.timestamp_ms for ex in instance.executions for e in ex.events), default=0)


@app.command()
def replay(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Exported history files or directories of them (instead of a database).",
                       show_default=False),
    ] = None,
    registry: Annotated[
        str, typer.Option("--registry", "-r", help="The code to check, as module:attr naming a Registry.")
    ] = "",
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
    name: Annotated[str | None, typer.Option(help="Only instances of this orchestration.", show_default=False)] = None,
    status: Annotated[
        str | None, typer.Option(help="Only instances with this status (Running, Completed, Failed).",
                                 show_default=False)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only instances updated since: an ISO date/time or a span such as 24h or 7d.",
                     show_default=False),
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option("--instance", "-i", help="Only this instance id (repeatable).",
                                       show_default=False)
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many instances.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per line.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only instances that fail to replay.")] = False,
) -> None:
    """Replay recorded histories against the current code; exit 1 if any instance is nondeterministic."""
    from ..testing.replay import Replayer

    if not registry:
        raise typer.BadParameter("--registry module:attr is required", param_hint="--registry")
    if files and (db or database_url_):
        raise typer.BadParameter("give history FILES or a database (--db / --database-url), not both")
    if status is not None and status not in (Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.CONTINUED_AS_NEW):
        raise typer.BadParameter(f"unknown status {status!r}", param_hint="--status")
    replayer = Replayer(load_registry(registry))
    since_at = parse_since(since) if since else None

    async def from_database() -> list[Any]:
        async with open_provider(db, database_url_, schema) as provider:
            if instance:
                return [await replayer.replay_from_provider(provider, i) for i in instance]
            return await replayer.replay_all(provider, name=name, status=status, since=since_at, limit=limit)

    if files:
        from ..testing.replay import load_histories

        reports = []
        since_ms = int(since_at.timestamp() * 1000) if since_at else None
        for path in files:
            targets = sorted(path.rglob("*.json")) if path.is_dir() else [path]
            for target in targets:
                try:
                    loaded = load_histories(target)
                except ValueError:
                    reports.extend(replayer.replay_file(target))  # reported as undecodable
                    continue
                for inst in loaded:
                    if name is not None and inst.name != name:
                        continue
                    if status is not None and inst.status != status:
                        continue
                    if instance and inst.instance_id not in instance:
                        continue
                    if since_ms is not None and _last_update_ms(inst) < since_ms:
                        continue
                    reports.append(replayer.replay_instance(inst))
        if limit is not None:
            reports = reports[:limit]
    else:
        try:
            reports = anyio.run(from_database)
        except CannotOpen as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    failed = [r for r in reports if not r.ok]
    for r in reports:
        if quiet and r.ok:
            continue
        if as_json:
            typer.echo(json.dumps(r.to_dict(), default=str))
        else:
            typer.echo(("ok    " if r.ok else "FAIL  ") + r.describe())
    if not as_json:
        counts: dict[str, int] = {}
        for r in reports:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no histories matched"
        typer.echo(f"replayed {len(reports)} instance(s): {summary}", err=bool(failed))
    raise typer.Exit(1 if failed else 0)
