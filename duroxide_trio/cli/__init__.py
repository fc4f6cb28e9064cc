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


def package_version() -> str:
    """The installed version of duroxide-trio (``0+unknown`` when run from a tree that is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("duroxide-trio")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        import platform

        typer.echo(f"duroxide-trio {package_version()} (Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Durable orchestrations on Trio/anyio: stress tests, provider validation and instance management."""


# Each sub-module registers its commands on ``app`` when imported.
for _module in ("stress", "validate", "instances", "instances_export", "replay"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != f"{__name__}.{_module}":
            raise


def main() -> None:
    """Run the ``duroxide-trio`` command line (the console script and ``python -m duroxide_trio``)."""
    app()
