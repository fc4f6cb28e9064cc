"""The ``duroxide-trio`` command: ``stress``, ``validate``, ``instances`` and ``replay``."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="duroxide-trio",
    help="Durable orchestrations on Trio/anyio: stress tests, provider validation and instance management.",
    no_args_is_help=True,
    add_completion=False,
)



@app.callback()
def _root() -> None:
    """Durable orchestrations on Trio/anyio: stress tests, provider validation and instance management."""


# Each sub-module registers its commands on ``app`` when imported.
for _module in ("stress", "validate", "instances", "instances_export", "replay"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != f"{__name__}.{_module}":
            raise


def main() -> None:
    app()
