"""The process liveness lease: fast recovery of a dead process's work without shortening lock timeouts.

Locks (instance leases, activity locks) are long on purpose: an activity may run for minutes while its
lock is renewed. When a process dies, its locks used to stay until they expired (30 s for activities by
default). With a liveness lease each runtime process registers itself with the provider and holds a
lease that dies with it; lock tokens carry the process id; every ``interval`` a survivor heartbeats its
own lease and releases the locks of any process whose lease is gone, so that work moves in about
``grace + interval`` seconds (≈ 1.5 s by default) after a SIGKILL.

- PostgreSQL: a session-level advisory lock (keyed by schema and process id) on a connection of the
  process's own: it dies with the connection. Heartbeats use the database's clock.
- SQLite: an exclusive ``flock`` on ``<database>.processes/<id>.lock``: the OS drops it when the process
  dies.
- A process that is alive but frozen (SIGSTOP, a VM pause) keeps its lease lock but stops its
  heartbeat: after ``stale_after`` seconds survivors reclaim it too. Its late writes are then rejected
  (its tokens are gone), and it re-registers when it wakes up.

This is an optional provider capability: a provider that declares ``ProviderCapabilities(process_leases=True)``
and implements ``providers.base.ProcessLeases`` (``register_process`` returning False when no lease is
needed, e.g. an in-memory database, ``renew_process_lease``, ``unregister_process``, ``process_id``) gets
it; others keep lock expiry only.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import anyio
import anyio.abc
import attrs

from ..providers.base import as_process_leases

__all__ = ["LivenessOptions", "run_liveness", "supports_liveness"]

log = logging.getLogger("duroxide_trio.runtime.liveness")


@attrs.frozen
class LivenessOptions:
    """``interval``: heartbeat and reclaim period. ``grace``: a process whose lease lock is free is
    reclaimed once its last heartbeat is this old (covers a reconnect after a database restart).
    ``stale_after``: a process with no heartbeat for this long is reclaimed even though its lease lock
    is held (frozen). ``enabled=False`` turns the lease off (lock expiry only).

    Environment overrides (read by :meth:`from_env`): ``DUROXIDE_LIVENESS=0``,
    ``DUROXIDE_LIVENESS_INTERVAL``, ``DUROXIDE_LIVENESS_GRACE``, ``DUROXIDE_LIVENESS_STALE_AFTER``."""

    interval: float = 0.5
    grace: float = 1.0
    stale_after: float = 10.0
    enabled: bool = True

    @classmethod
    def from_env(cls) -> LivenessOptions:
        """The defaults, overridden by the environment variables above."""
        env = os.environ
        base = cls()
        return cls(
            interval=float(env.get("DUROXIDE_LIVENESS_INTERVAL", base.interval)),
            grace=float(env.get("DUROXIDE_LIVENESS_GRACE", base.grace)),
            stale_after=float(env.get("DUROXIDE_LIVENESS_STALE_AFTER", base.stale_after)),
            enabled=env.get("DUROXIDE_LIVENESS", "1").lower() not in ("0", "false", "off", "no"),
        )


def supports_liveness(provider: Any) -> bool:
    """Whether ``provider`` declares the process-lease capability (``ProviderCapabilities.process_leases``)."""
    return as_process_leases(provider) is not None


async def run_liveness(
    provider: Any,
    options: LivenessOptions | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold this process's lease on ``provider`` until cancelled (run it with ``await tg.start(...)``:
    it reports started once registered, or after the first failed attempt). A no-op if the provider
    lacks the capability, the lease is disabled, or a lease is already held on this provider."""
    options = options or LivenessOptions.from_env()
    leases = as_process_leases(provider)
    if not options.enabled or leases is None or leases.process_id:
        task_status.started()
        return
    process_id = uuid.uuid4().hex[:16]
    registered = False
    started = False
    try:
        while True:
            try:
                if not registered:
                    # The first attempt delays the runtime's start: keep it short (locks taken before
                    # the lease is registered only lack the fast recovery).
                    with anyio.fail_after(3 if not started else 10):
                        needed = await leases.register_process(process_id)
                    if needed is False:  # e.g. an in-memory database: no other process can share it
                        task_status.started()
                        return
                    registered = True
                    log.debug("process lease %s taken", process_id)
                else:
                    reclaimed = await leases.renew_process_lease(
                        process_id, options.stale_after, options.grace
                    )
                    if reclaimed:
                        log.info("reclaimed the locks of dead process(es) %s", ", ".join(reclaimed))
            except Exception as exc:  # noqa: BLE001 - retried on the next beat (e.g. the database restarts)
                log.debug("process lease %s: %s", process_id, exc)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(options.interval)
    finally:
        if registered:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await leases.unregister_process(process_id)
                except Exception as exc:  # noqa: BLE001 - the lease dies with the process anyway
                    log.debug("process lease %s: unregister failed: %s", process_id, exc)
