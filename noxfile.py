"""nox sessions: tests, lint, typecheck, stress-sqlite, stress-postgres, validate-postgres, chaos-sqlite,
chaos-postgres, compare.

PostgreSQL sessions use $DATABASE_URL, or start a throwaway local cluster (ops/with_postgres.py).
"""

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

#: Passed through to the tests explicitly: where PostgreSQL is, whether a missing one fails the run, CI.
PASSTHROUGH = ("DATABASE_URL", "DUROXIDE_REQUIRE_POSTGRES", "DUROXIDE_PG_POOL_MAX", "CI")


def _install(session: nox.Session) -> None:
    session.install("-q", "-e", ".[dev]")


def _env() -> dict[str, str]:
    return {name: os.environ[name] for name in PASSTHROUGH if name in os.environ}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite on both anyio backends (trio and asyncio). PostgreSQL tests use $DATABASE_URL
    or start a throwaway cluster from the local PostgreSQL binaries; the report test needs chromium."""
    _install(session)
    # Three pytest-xdist workers: most tests wait on locks and timers rather than the CPU, so the suite
    # takes under half the time of one worker even on two cores.
    session.run("python", "-m", "pytest", "-q", "-n", "3", *session.posargs, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-q", "ruff")
    session.run("ruff", "check", "duroxide_trio", "tests", "examples", "ops", "bench")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.run("mypy", "duroxide_trio")


@nox.session(name="stress-sqlite")
def stress_sqlite(session: nox.Session) -> None:
    """The seeds' standard configurations on SQLite (file and in-memory), 1:1, 2:2, 4:4."""
    _install(session)
    args = session.posargs or ["--duration", "30"]
    session.run("duroxide-trio", "stress", "--provider", "sqlite", "--suite", "--no-dashboard", *args)
    session.run("duroxide-trio", "stress", "--provider", "sqlite-memory", "--suite", "--no-dashboard", *args)


@nox.session(name="stress-postgres")
def stress_postgres(session: nox.Session) -> None:
    """Stress on PostgreSQL: $DATABASE_URL, or a throwaway local cluster started and removed here."""
    _install(session)
    args = session.posargs or ["--duration", "30"]
    session.run(
        "python", "ops/with_postgres.py",
        "duroxide-trio", "stress", "--provider", "postgres", "--suite", "--no-dashboard", *args,
    )


@nox.session(name="validate-postgres")
def validate_postgres(session: nox.Session) -> None:
    """The provider validation suite against PostgreSQL."""
    _install(session)
    session.run("python", "ops/with_postgres.py", "duroxide-trio", "validate", "--provider", "postgres",
                *session.posargs)


#: Chaos specs shared by both chaos sessions (README, "Chaos testing").
_CHAOS = ["--chaos", "kill:every=3s", "--chaos", "faults:rate=0.05"]


@nox.session(name="chaos-sqlite")
def chaos_sqlite(session: nox.Session) -> None:
    """Three runtime processes on one SQLite file, 1:1, 2:2, 4:4: SIGKILL every ~3 s, SIGSTOP for 2 s every
    ~10 s, 5 % injected provider faults; exits non-zero unless every chaos verdict is clean."""
    _install(session)
    args = session.posargs or ["--duration", "30"]
    session.run(
        "duroxide-trio", "stress", "--provider", "sqlite", "--suite", "--processes", "3", *_CHAOS,
        "--chaos", "stall:every=10s,for=2s", "--no-dashboard", *args,
    )


@nox.session(name="chaos-postgres")
def chaos_postgres(session: nox.Session) -> None:
    """Three runtime processes on PostgreSQL, 1:1, 2:2, 4:4: kills, 5 % faults, fast and immediate
    restarts of the server. restart-db makes the harness start its own throwaway cluster from the local
    binaries: a server in $DATABASE_URL is never touched."""
    _install(session)
    args = session.posargs or ["--duration", "30"]
    session.run(
        "duroxide-trio", "stress", "--provider", "postgres", "--suite", "--processes", "3", *_CHAOS,
        "--chaos", "restart-db:every=20s", "--chaos", "restart-db:every=25s,first=12s,mode=immediate",
        "--no-dashboard", *args,
    )


@nox.session
def compare(session: nox.Session) -> None:
    """The standard workload on duroxide-trio, Rust duroxide (PyPI duroxide) and DBOS against the same
    PostgreSQL ($DATABASE_URL, or a throwaway cluster) and SQLite; one table with our ratios (bench/README.md).
    Our side runs in this session's virtualenv, the peers in a second one next to it (.nox/compare-peers)
    with the versions of bench/peers/requirements.txt. Options go to bench/compare.py:
    `nox -s compare -- --duration 5 --providers postgres`."""
    session.install("-q", "-e", ".")
    peers = Path(session.virtualenv.location).parent / "compare-peers"
    peers_python = peers / "bin" / "python"
    if not peers_python.exists():
        session.run("python", "-m", "venv", str(peers))
    session.run(str(peers_python), "-m", "pip", "install", "-q", "-r", "bench/peers/requirements.txt",
                external=True)
    session.run("python", "bench/compare.py", "--peers-python", str(peers_python), *session.posargs,
                env=_env())
