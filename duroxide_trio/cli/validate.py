"""``duroxide-trio validate``: run the provider validation suite against a built-in provider."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from . import app
from .common import database_url, mask_url


class ProviderKind(enum.StrEnum):
    """``--provider`` values."""
    sqlite = "sqlite"
    sqlite_memory = "sqlite-memory"
    postgres = "postgres"


class Backend(enum.StrEnum):
    """``--backend`` values (anyio backends)."""
    trio = "trio"
    asyncio = "asyncio"


def _factory(kind: ProviderKind, url: str | None, lock_timeout: float | None) -> Any:
    extra: dict[str, Any] = {} if lock_timeout is None else {"lock_timeout": lock_timeout}
    if kind is ProviderKind.postgres:
        if not url:
            raise typer.BadParameter(
                "--provider postgres needs --database-url or the DATABASE_URL environment variable",
                param_hint="--database-url",
            )
        try:
            from ..providers.postgres import PostgresFactory
        except ImportError as exc:
            typer.secho(f"The PostgreSQL provider is not available: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from exc
        return PostgresFactory(url, schema=None, **extra)
    from ..providers.sqlite import SqliteFactory

    return SqliteFactory(":memory:" if kind is ProviderKind.sqlite_memory else None, **extra)


@app.command()
def validate(
    provider: Annotated[
        ProviderKind, typer.Option("--provider", "-p", help="Provider to validate.", case_sensitive=False)
    ] = ProviderKind.sqlite,
    database_url_option: Annotated[
        str | None,
        typer.Option("--database-url", help="PostgreSQL URL (default: $DATABASE_URL).", show_default=False),
    ] = None,
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
    backend: Annotated[Backend, typer.Option("--backend", help="anyio backend to run on.")] = Backend.trio,
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
        bool, typer.Option("--list", help="List categories and tests, run nothing.")
    ] = False,
) -> None:
    """Run the provider validation suite and print a pass/fail line per category; exit 1 on any failure."""
    from ..testing.validation import CATEGORIES, CaseResult, run_validation

    if list_only:
        for name, tests in CATEGORIES.items():
            typer.echo(f"{name} ({len(tests)})")
            for test in tests:
                typer.echo(f"  {test.__name__}")
        return
    unknown = [c for c in category or [] if c not in CATEGORIES]
    if unknown:
        raise typer.BadParameter(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"known: {', '.join(CATEGORIES)}",
            param_hint="--category",
        )
    url = database_url(database_url_option) if provider is ProviderKind.postgres else None
    factory = _factory(provider, url, lock_timeout)
    target = provider.value + (f" at {mask_url(url)}" if url else "")
    typer.echo(f"Validating {target} on {backend.value}")

    def on_result(result: CaseResult) -> None:
        if result.outcome == "failed":
            typer.secho(f"  FAIL {result.category}/{result.name}: {result.message}", fg=typer.colors.RED)
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
        typer.secho(f"Cannot create a {provider.value} provider: {report}", fg=typer.colors.RED, err=True)
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
