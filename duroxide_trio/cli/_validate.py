"""``duroxide-trio validate``: run the provider validation suite against a built-in provider."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from . import _provider, app
from ._provider import Backend, ProviderKind


@app.command()
def validate(
    provider: Annotated[ProviderKind, _provider.provider_option("Provider to validate.", short=True)] = ProviderKind.sqlite,
    database_url_option: Annotated[str | None, _provider.url_option("PostgreSQL URL (default: $DATABASE_URL).")] = None,
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", help="Run only this category (repeatable).", show_default=False),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write the results as JSON to this file.", dir_okay=False, show_default=False
        ),
    ] = None,
    backend: Annotated[Backend, _provider.backend_option()] = Backend.trio,
    lock_timeout: Annotated[
        float | None,
        typer.Option(
            "--lock-timeout", help="Short lock timeout (s) for lock-expiry tests.", show_default=False
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every test, not only failures.")
    ] = False,
    list_only: Annotated[
        bool, typer.Option("--list", help="List categories and tests with a one-line description each, run nothing.")
    ] = False,
) -> None:
    """Run the provider validation suite and print a pass/fail line per category; exit 1 on any failure."""
    from ..testing.validation import CATEGORIES

    if list_only:
        for name, tests in CATEGORIES.items():
            typer.echo(f"{name} ({len(tests)})")
            for test in tests:
                typer.echo(f"  {test.__name__}  {_summary(test)}".rstrip())
        return
    unknown = [c for c in category or [] if c not in CATEGORIES]
    if unknown:
        raise typer.BadParameter(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"known: {', '.join(CATEGORIES)}",
            param_hint="--category",
        )
    choice = _provider.choose_provider(provider, database_url_option)
    factory = choice.factory(lock_timeout=lock_timeout)
    target = provider.value + (f" at {choice.shown}" if choice.url else "")
    run_and_report(factory, target, category=category, json_path=json_path, backend=backend, verbose=verbose)


def _summary(test: Any) -> str:
    """The one-line description of a validation test: its docstring's first paragraph, on one line."""
    paragraph = (test.__doc__ or "").strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def run_and_report(
    factory: Any, target: str, *, category: list[str] | None, json_path: Path | None, backend: Backend,
    verbose: bool,
) -> None:  # fmt: skip
    """Run the validation suite on ``factory`` (``target`` names it, masked) and print a line per category;
    raises ``typer.Exit`` 1 on any failure, 2 when no provider can be created."""
    from ..testing.validation import CaseResult, run_validation

    typer.echo(f"Validating {target} on {backend.value}")

    def on_result(result: CaseResult) -> None:
        if result.outcome == "failed":
            typer.secho(f"  FAIL {result.category}/{result.name}: {result.message}", fg=typer.colors.RED)
        elif result.outcome == "skipped":
            typer.echo(f"  SKIP {result.category}/{result.name}: {result.message or 'no reason given'}")
        elif verbose:
            typer.echo(f"  {result.outcome:<7} {result.category}/{result.name} ({result.duration:.2f}s)")

    async def _run() -> Any:
        # One provider first: an unreachable database is one clear error, not a failure per test.
        try:
            probe = await factory.create_provider()
        except Exception as exc:
            return exc
        cleanup = getattr(factory, "cleanup", None)
        await (cleanup(probe) if cleanup is not None else probe.close())
        return await run_validation(factory, category or None, on_result)

    report = anyio.run(_run, backend=backend.value)
    if isinstance(report, Exception):
        typer.secho(f"Cannot create a {target.split()[0]} provider: {_provider.masked(report)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)

    width = max(len(name) for name in report.categories) if report.categories else 0
    for name, c in report.categories.items():
        status = "PASS" if c.failed == 0 else "FAIL"
        line = f"{status} {name:<{width}}  {c.passed} passed, {c.failed} failed, {c.skipped} skipped ({c.duration:.1f}s)"
        typer.secho(line, fg=typer.colors.GREEN if c.failed == 0 else typer.colors.RED)
    typer.echo(
        f"Total: {report.passed} passed, {report.failed} failed, {report.skipped} skipped in {report.duration:.1f}s"
    )
    if json_path is not None:
        data = report.to_json()
        data["provider"] = target
        data["backend"] = backend.value
        json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if not report.ok:
        sys.stdout.flush()
        raise typer.Exit(code=1)
