"""The ``duroxide-trio`` command: ``stress``, ``validate``, ``instances`` and ``replay``."""

from __future__ import annotations

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


# Each private module registers its commands on ``app`` when imported.
from . import _instances, _instances_export, _replay, _stress, _validate  # noqa: E402,F401


def main() -> None:
    """Run the ``duroxide-trio`` command line (the console script and ``python -m duroxide_trio``)."""
    app()
