"""``duroxide-trio instances``: look at and manage orchestration instances in a database."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
import typer

from . import app
from .common import database_url, mask_url

instances_app = typer.Typer(
    help="List, inspect, signal, cancel and delete orchestration instances.", no_args_is_help=True
)
app.add_typer(instances_app, name="instances")

DbOption = Annotated[str | None, typer.Option("--db", help="SQLite database file.")]
UrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="PostgreSQL URL (default: $DATABASE_URL when --db is not given)."),
]
SchemaOption = Annotated[str, typer.Option("--schema", help="PostgreSQL schema.")]


def _run(db: str | None, url: str | None, schema: str, action: Callable[[Any], Awaitable[int]]) -> None:
    async def main() -> int:
        import duroxide_trio as dt

        if db:
            provider: Any = await dt.SqliteProvider.open(db)
        else:
            target = database_url(url)
            if not target:
                raise typer.BadParameter(
                    "give --db PATH (SQLite) or --database-url URL / $DATABASE_URL (PostgreSQL)"
                )
            from ..providers.postgres import PostgresProvider

            try:
                provider = await PostgresProvider.connect(target, schema=schema, pool_max=2)
            except Exception as exc:
                typer.echo(f"cannot connect to {mask_url(target)}: {mask_url(str(exc))}", err=True)
                return 2
        async with provider:
            return await action(dt.Client(provider))

    raise typer.Exit(anyio.run(main))


def _state_dict(state: Any) -> dict[str, Any]:
    return {
        "instance_id": state.instance_id,
        "status": state.status.value,
        "name": state.name,
        "version": state.version,
        "execution_id": state.execution_id,
        "output": state.output,
        "error": None
        if state.error is None
        else {"category": state.error.category, "message": state.error.message},
        "custom_status": state.custom_status,
        "created_at": state.created_at.isoformat() if state.created_at else None,
        "updated_at": state.updated_at.isoformat() if state.updated_at else None,
        "parent_instance_id": state.parent_instance_id,
    }


@instances_app.command("list")
def list_instances(
    status: Annotated[str | None, typer.Option(help="Running, Completed, Failed or ContinuedAsNew.")] = None,
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
) -> None:
    """List instance ids, newest first."""

    async def action(client: Any) -> int:
        for instance_id in await client.list_instances(status):
            typer.echo(instance_id)
        return 0

    _run(db, database_url_, schema, action)


@instances_app.command("show")
def show(
    instance_id: str, db: DbOption = None, database_url_: UrlOption = None, schema: SchemaOption = "duroxide"
) -> None:
    """Print an instance's status as JSON (exit code 1 if it does not exist)."""

    async def action(client: Any) -> int:
        state = await client.get_status(instance_id)
        typer.echo(json.dumps(_state_dict(state), indent=2, default=str))
        return 1 if state.status.value == "NotFound" else 0

    _run(db, database_url_, schema, action)


@instances_app.command("history")
def history(
    instance_id: str,
    execution: Annotated[int | None, typer.Option(help="Execution id (default: the current one).")] = None,
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
) -> None:
    """Print an execution's history, one event per line."""
    from ..history import encode_event

    async def action(client: Any) -> int:
        for event in await client.get_history(instance_id, execution):
            typer.echo(encode_event(event))
        return 0

    _run(db, database_url_, schema, action)


@instances_app.command("raise-event")
def raise_event(
    instance_id: str,
    name: str,
    data: Annotated[str | None, typer.Argument(help="JSON data.")] = None,
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
) -> None:
    """Raise an external event on an instance."""
    try:
        value = None if data is None else json.loads(data)
    except ValueError as exc:
        raise typer.BadParameter(f"DATA must be JSON: {exc}") from exc

    async def action(client: Any) -> int:
        await client.raise_event(instance_id, name, value)
        return 0

    _run(db, database_url_, schema, action)


@instances_app.command("cancel")
def cancel(
    instance_id: str,
    reason: Annotated[str, typer.Option(help="Recorded as 'canceled: <reason>'.")] = "",
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
) -> None:
    """Cancel a running instance (and its children)."""

    async def action(client: Any) -> int:
        await client.cancel_instance(instance_id, reason)
        return 0

    _run(db, database_url_, schema, action)


@instances_app.command("delete")
def delete(
    instance_id: str,
    force: Annotated[bool, typer.Option(help="Also delete a running instance.")] = False,
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
) -> None:
    """Delete a root instance and its sub-orchestrations."""
    from ..providers.base import ProviderError

    async def action(client: Any) -> int:
        try:
            result = await client.delete_instance(instance_id, force)
        except ProviderError as exc:
            typer.echo(str(exc), err=True)
            return 1
        typer.echo(f"deleted {result.instances_deleted} instance(s), {result.events_deleted} event(s)")
        return 0

    _run(db, database_url_, schema, action)
