"""``duroxide-trio instances export ID``: write an instance's histories (every execution) as a JSON file,
the input of ``duroxide-trio replay FILES...`` and of ``duroxide_trio.testing.Replayer``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from ._instances import instances_app
from ._provider import CannotOpen, DbOption, SchemaOption, UrlOption, open_provider


def _default_path(instance_id: str) -> Path:
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", instance_id) + ".history.json")


@instances_app.command("export")
def export(
    instance_id: str,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="File to write ('-' for stdout; default: ID.history.json).",
                     show_default=False),
    ] = None,
    db: DbOption = None,
    database_url_: UrlOption = None,
    schema: SchemaOption = "duroxide",
) -> None:
    """Write an instance's histories (all executions) as JSON, for `duroxide-trio replay`."""
    from ..testing.replay import export_instance

    async def main() -> int:
        try:
            async with open_provider(db, database_url_, schema) as provider:
                try:
                    data = await export_instance(provider, instance_id)
                except KeyError:
                    typer.echo(f"error: instance {instance_id!r} not found", err=True)
                    return 1
                except ValueError as exc:
                    typer.echo(f"error: cannot export {instance_id!r}: {exc}", err=True)
                    return 1
        except CannotOpen as exc:
            typer.echo(f"error: {exc}", err=True)
            return 1
        text = json.dumps(data, indent=1) + "\n"
        if output == "-":
            sys.stdout.write(text)
            return 0
        path = Path(output) if output else _default_path(instance_id)
        path.write_text(text, encoding="utf-8")
        events = sum(len(ex["events"]) for ex in data["executions"])
        typer.echo(f"wrote {path}: {len(data['executions'])} execution(s), {events} event(s)")
        return 0

    raise typer.Exit(anyio.run(main))
