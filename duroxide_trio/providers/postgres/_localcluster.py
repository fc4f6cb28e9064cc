"""Start a throwaway PostgreSQL cluster from the local binaries (``initdb``/``pg_ctl``), for tests, the
``stress-postgres`` nox session and ``ops/`` scripts.

    with throwaway_cluster() as url:        # postgresql://postgres@127.0.0.1:<port>/postgres
        ...

The cluster lives in a fresh temporary directory, listens on 127.0.0.1 only (a free port) with its unix
socket inside that directory, uses trust authentication for the ``postgres`` role, and is stopped and
deleted when the block exits. PostgreSQL refuses to run as root: when this process is root, the
binaries run as the unprivileged user ``duroxide-pg`` (created with ``useradd`` when missing).

``ClusterUnavailable`` means a prerequisite is missing (no binaries, cannot get a non-root user): callers
may skip. ``ClusterStartError`` means the binaries are there but the cluster did not start: a real
failure, its message ends with the server log.

If the process is killed without running the ``finally`` (SIGKILL), the postmaster survives; its data
directory is under the system temp directory with the prefix ``duroxide-pg-``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ...errors import DuroxideError

__all__ = [
    "ClusterStartError",
    "ClusterUnavailable",
    "DEFAULT_OS_USER",
    "LocalCluster",
    "find_bindir",
    "local_cluster",
    "throwaway_cluster",
]

#: The unprivileged OS user the server runs as when we are root.
DEFAULT_OS_USER = "duroxide-pg"
#: Environment variable naming the directory holding ``initdb`` and ``pg_ctl`` (overrides the search).
BINDIR_ENV = "DUROXIDE_PG_BINDIR"

#: Settings for a disposable cluster: more connections than the default 100 (one pool per provider, see
#: duroxide-pg-and-python.md §1.9). Durability settings are left alone unless the caller passes some.
_BASE_SETTINGS = {"max_connections": "300"}


class ClusterUnavailable(DuroxideError, RuntimeError):
    """A throwaway cluster cannot be started here: no PostgreSQL binaries, or no non-root user."""


class ClusterStartError(DuroxideError, RuntimeError):
    """The PostgreSQL binaries failed to initialise or start a cluster."""


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_bindir() -> Path | None:
    """The directory with ``initdb`` and ``pg_ctl``: ``$DUROXIDE_PG_BINDIR``, the newest
    ``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``, or ``PATH``; None if none has both."""
    candidates: list[str] = []
    if env := os.environ.get(BINDIR_ENV):
        candidates.append(env)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), key=_version_key, reverse=True)  # RHEL/PGDG layout
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for cand in candidates:
        path = Path(cand)
        if cand and (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _os_user(name: str) -> pwd.struct_passwd:
    """The unprivileged user to run the server as (we are root); created if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise ClusterUnavailable(f"running as root, user {name!r} does not exist and useradd is missing")
    shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
    proc = subprocess.run(
        [useradd, "--system", "--no-create-home", "--user-group", "--shell", shell, name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return pwd.getpwnam(name)  # may also have been created concurrently by another process
    except KeyError:
        raise ClusterUnavailable(
            f"running as root and could not create user {name!r}: {proc.stderr.strip() or proc.returncode}"
        ) from None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def throwaway_cluster(
    *,
    settings: Mapping[str, str] | None = None,
    os_user: str = DEFAULT_OS_USER,
    start_timeout: float = 60.0,
    bindir: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Run a disposable PostgreSQL server for the duration of the block; yield its URL
    (``postgresql://postgres@127.0.0.1:<port>/postgres``, trust auth).

    ``settings`` are extra server settings (``{"fsync": "off"}`` makes a test cluster faster).
    """
    with local_cluster(settings=settings, os_user=os_user, start_timeout=start_timeout, bindir=bindir) as c:
        yield c.url


class LocalCluster:
    """A running throwaway cluster (from :func:`local_cluster`): its ``url``, and :meth:`restart` for
    chaos tests (only ever a cluster this process started)."""

    def __init__(self, url: str, restart: Callable[[str], None]) -> None:
        self.url = url
        self._restart = restart
        self.restarts = 0

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast|immediate`` and wait until the server accepts connections again
        (blocking; run it in a thread from async code). ``immediate`` is a crash: recovery runs."""
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError(f"restart mode must be fast, immediate or smart, not {mode!r}")
        self._restart(mode)
        self.restarts += 1


@contextlib.contextmanager
def local_cluster(
    *,
    settings: Mapping[str, str] | None = None,
    os_user: str = DEFAULT_OS_USER,
    start_timeout: float = 60.0,
    bindir: str | os.PathLike[str] | None = None,
) -> Iterator[LocalCluster]:
    """Like :func:`throwaway_cluster`, yielding a :class:`LocalCluster` that can also be restarted."""
    bin_path = Path(bindir) if bindir is not None else find_bindir()
    if bin_path is None:
        raise ClusterUnavailable(
            f"no PostgreSQL binaries (initdb, pg_ctl) found: install the server package or set {BINDIR_ENV}"
        )
    owner: pwd.struct_passwd | None = _os_user(os_user) if os.geteuid() == 0 else None

    base = Path(tempfile.mkdtemp(prefix="duroxide-pg-"))
    data, sockdir, log = base / "data", base / "sock", base / "server.log"
    env = {**os.environ, "HOME": str(base), "LC_ALL": "C", "TZ": "UTC"}
    for var in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGOPTIONS"):
        env.pop(var, None)

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        if owner is None:
            return subprocess.run(
                list(args), cwd=base, env=env, capture_output=True, text=True, timeout=timeout
            )
        return subprocess.run(
            list(args),
            cwd=base,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=owner.pw_uid,
            group=owner.pw_gid,
            extra_groups=[],
        )

    started = False
    try:
        sockdir.mkdir()
        if owner is not None:
            for path in (base, sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        proc = run(
            str(bin_path / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            timeout=start_timeout,
        )
        if proc.returncode != 0:
            raise ClusterStartError(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

        for attempt in range(3):  # the free port can be taken between probing and binding
            port = _free_loopback_port()
            conf = {
                **_BASE_SETTINGS,
                **(settings or {}),
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{sockdir}'",
            }
            (data / "postgresql.auto.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
            proc = run(
                str(bin_path / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(int(start_timeout)),
                "start",
                timeout=start_timeout + 10,
            )
            if proc.returncode == 0:
                started = True
                break
            if attempt == 2 or "already in use" not in _tail(log):
                raise ClusterStartError(
                    f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()}\n"
                    f"--- server log ({log}) ---\n{_tail(log)}"
                )

        def restart(mode: str) -> None:
            proc = run(
                str(bin_path / "pg_ctl"), "-D", str(data), "-l", str(log), "-m", mode, "-w",
                "-t", str(int(start_timeout)), "restart",
                timeout=start_timeout + 40,
            )  # fmt: skip
            if proc.returncode != 0:
                raise ClusterStartError(
                    f"pg_ctl restart failed ({proc.returncode}): {proc.stderr.strip()}\n"
                    f"--- server log ({log}) ---\n{_tail(log)}"
                )

        yield LocalCluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", restart)
    finally:
        if started:
            _stop(run, bin_path, data)
        shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still running (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass  # no /proc: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stop(run: Callable[..., subprocess.CompletedProcess[str]], bin_path: Path, data: Path) -> None:
    """``pg_ctl stop -m fast`` and wait for the postmaster to exit; if it does not, SIGKILL the postmaster
    we started (by the pid in its pid file)."""
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    with contextlib.suppress(subprocess.TimeoutExpired):
        run(str(bin_path / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)
    if pid is not None and not _wait_gone(pid, 10):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


# ---------------------------------------------------------------------------------------------------------
# python -m duroxide_trio.providers.postgres._localcluster [--fast] [--set name=value ...]


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway cluster, print its URL on stdout, and stop and remove it on Ctrl-C or SIGTERM."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m duroxide_trio.providers.postgres._localcluster",
        description="Run a throwaway PostgreSQL cluster from the local binaries until Ctrl-C; print its URL.",
    )
    parser.add_argument(
        "--fast", action="store_true", help="fsync/synchronous_commit/full_page_writes off (tests only)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="extra server setting (repeatable)"
    )
    args = parser.parse_args(argv)
    settings: dict[str, str] = {}
    if args.fast:
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        settings[name.strip()] = value.strip()

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        with throwaway_cluster(settings=settings) as url:
            print(url, flush=True)
            print(
                "PostgreSQL is running; press Ctrl-C to stop it and remove its data.",
                file=sys.stderr,
                flush=True,
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("stopping PostgreSQL and removing its data...", file=sys.stderr, flush=True)
    except ClusterUnavailable as ex:
        print(f"cannot start a throwaway PostgreSQL: {ex}", file=sys.stderr)
        return 2
    except ClusterStartError as ex:
        print(f"PostgreSQL failed to start: {ex}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while starting: the cluster was removed on the way out
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
