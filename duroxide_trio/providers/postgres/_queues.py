"""The orchestrator and worker queues of the PostgreSQL provider: one function call per operation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc

from ...history import (
    ActivityExecute,
    HistoryDecodeError,
    StartOrchestration,
    WorkItem,
    encode_work_item,
)
from .._kernel import (
    TurnCommitted,
    TurnToCommit,
    acked_targets,
    decode_activity,
    decode_batch,
    ms,
)
from ..base import (
    AckedWithTurns,
    InstanceInfo,
    OrchestrationItem,
    ProviderError,
    ProviderErrorKind,
    TurnRequest,
    VersionRange,
    WorkerRouting,
    WorkItemLease,
)
from ._arrays import BigintArray, BoolArray, TextArray
from ._base import PgBase

logger = logging.getLogger("duroxide_trio.providers.postgres")


class QueuesJob(PgBase):
    """The two peek-lock queues."""

    async def fetch_orchestration_item(
        self, lock_timeout: float, poll_timeout: float = 0.0, *, versions: VersionRange | None = None
    ) -> OrchestrationItem | None:
        token = self._new_token()
        params: tuple[Any, ...] = (self.clock.now_ms(), ms(lock_timeout), token)
        query = self._q.fetch_orch
        if versions is not None and not versions.is_any:
            query, params = self._q.fetch_orch_versions, (*params, *versions.key_bounds())
        async with self._releasing_unseen_claim("orchestrator", token):
            row = await self._one("fetch_orchestration_item", query, params)
        if row[0] is None:
            next_visible = row[8]
            if next_visible is not None:
                self.notifier.notify_at("orchestrator", next_visible)
            return None
        return _batch_from_row(row, token)

    async def _commit_turn(self, commit: TurnToCommit) -> TurnCommitted:
        lock_token, execution_id, turn = commit.lock_token, commit.execution_id, commit.turn
        metadata, cancelled_activities = commit.metadata, commit.cancelled_activities
        now = turn.now
        orch_visible = [o.visible(now) for o in turn.orchestrator]
        salt = self._new_token() + commit.eager_suffix() if commit.eager else ""
        workers = turn.workers  # the arrays are typed: psycopg dumps them without scanning (see _arrays)
        params = (
            lock_token,
            now,
            execution_id,
            BigintArray(turn.event_ids),
            TextArray(turn.event_types),
            TextArray(turn.event_texts),
            TextArray([w.text for w in workers]),
            TextArray([w.instance for w in workers]),
            BigintArray([w.execution_id for w in workers]),
            BigintArray([w.activity_id for w in workers]),
            TextArray([w.session_id for w in workers]),
            TextArray([w.tag for w in workers]),
            TextArray([o.target for o in turn.orchestrator]),
            TextArray([o.text for o in turn.orchestrator]),
            BoolArray([o.start for o in turn.orchestrator]),
            BigintArray(orch_visible),
            TextArray([c.instance_id for c in cancelled_activities]),
            BigintArray([c.execution_id for c in cancelled_activities]),
            BigintArray([c.activity_id for c in cancelled_activities]),
            metadata.orchestration_name,
            metadata.orchestration_version,
            metadata.parent_instance_id,
            metadata.status,
            metadata.output,
            turn.custom_status_changed,
            turn.custom_status,
            turn.kv.clear_all,
            TextArray(turn.kv.deleted),
            TextArray(turn.kv.keys),
            TextArray(turn.kv.values),
            BoolArray([k in commit.eager for k in range(len(workers))] if commit.eager else []),
            commit.eager_lock_ms if commit.eager else 0,
            salt,
        )
        if commit.eager:
            # An ack that failed with a transient error may have committed unseen: release its eager locks.
            async with self._releasing_unseen_claim("worker", salt):
                row = await self._one("ack_orchestration_item", self._q.ack_orch, params)
        else:
            row = await self._one("ack_orchestration_item", self._q.ack_orch, params)
        instance_id, wake, e_inst, e_exec, e_act, e_tok = row[:6]
        # A turn that ends its instance gets the instance's row back (migration 11), for its waiters.
        final = InstanceInfo(instance_id, *row[6:]) if row[6] is not None else None
        eager: list[tuple[int, str]] = []
        if e_tok:
            position = {(w.instance, w.execution_id, w.activity_id): k for k, w in enumerate(turn.workers)}
            eager = [(position[(i, x, a)], tok) for i, x, a, tok in zip(e_inst, e_exec, e_act, e_tok, strict=True)]
        return TurnCommitted(instance_id, bool(wake), [at for at in orch_visible if at > now], final, eager)

    async def release_eager(self, claim: str) -> int:
        """Give back what an eager ack locked under ``claim`` (its answer was lost), attempts uncounted."""
        if not claim:
            return 0
        s = self._quoted_schema()
        released = await self._exec(
            "release_eager",
            f"UPDATE {s}.worker_queue SET lock_token = NULL, locked_until = NULL, visible_at = %s, "
            "attempt_count = GREATEST(attempt_count - 1, 0) WHERE lock_token LIKE %s",
            (self.clock.now_ms(), "%~" + claim),
            "rowcount",
            idempotent=True,
        )
        if released:
            self.notifier.notify("worker")
        return int(released)

    async def abandon_orchestration_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        row = await self._one(
            "abandon_orchestration_item",
            self._q.abandon_orch,
            (lock_token, self.clock.now_ms(), ms(delay), ignore_attempt),
        )
        if row[0] is not None:
            self.notifier.notify_at("orchestrator", row[0])
        else:
            self.notifier.notify("orchestrator")

    async def renew_orchestration_item_lock(self, lock_token: str, extend_for: float) -> None:
        now = self.clock.now_ms()
        count = await self._exec(
            "renew_orchestration_item_lock",
            self._q.renew_orch,
            (now + ms(extend_for), lock_token, now),
            "rowcount",
            idempotent=True,
        )
        if count == 0:
            raise ProviderError.permanent(
                "renew_orchestration_item_lock", "lock token invalid or lock already expired", kind=ProviderErrorKind.LOCK_LOST
            )

    async def _insert_orchestrator_message(self, target: str, text: str, start: bool, visible: int, now: int) -> None:
        await self._exec(
            "enqueue_for_orchestrator", self._q.enqueue_orch, (target, text, start, visible, now), "none"
        )

    async def enqueue_start(self, item: StartOrchestration) -> None:
        await self._exec(
            "enqueue_start", self._q.enqueue_start, (item.instance, encode_work_item(item), self.clock.now_ms()), "none"
        )
        self.notifier.notify("orchestrator")

    async def enqueue_start_and_fetch(self, item: StartOrchestration, turn: TurnRequest) -> OrchestrationItem | None:
        """``enqueue_start`` and, in the same server function call (one transaction), lock for the caller
        the new instance's first turn, or, when a claimable message has waited longer than
        ``START_OVERTAKE_LIMIT``, the batch a fetch would take next (see ``StartFetchesTurn``; migration
        16)."""
        token = self._new_token() if turn.max_items >= 1 else ""
        versions = turn.versions
        lo, hi = versions.key_bounds() if versions is not None and not versions.is_any else (None, None)
        params = (item.instance, encode_work_item(item), self.clock.now_ms(), ms(turn.lock_timeout), token, lo, hi)
        async with self._releasing_unseen_claim("orchestrator", *([token] if token else [])):
            rows = await self._all("enqueue_start", self._q.enqueue_start_fetch, params)
        if not rows:
            self.notifier.notify("orchestrator")
            return None
        batch = _batch_from_row(rows[0], token)
        if batch.instance_id != item.instance:  # the start waits for a dispatcher
            self.notifier.notify("orchestrator")
        return batch

    async def enqueue_for_worker(self, item: ActivityExecute) -> None:
        await self._exec(
            "enqueue_for_worker",
            self._q.enqueue_worker,
            (
                encode_work_item(item),
                item.instance,
                item.execution_id,
                item.id,
                item.session_id,
                item.tag,
                self.clock.now_ms(),
            ),
            "none",
        )
        self.notifier.notify("worker")

    async def fetch_work_items(
        self, lock_timeout: float, max_items: int, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """Lock up to ``max_items`` visible work items in one round trip (each gets its own token)."""
        salt = self._new_token()
        async with self._releasing_unseen_claim("worker", salt):
            rows = await self._all(
                "fetch_work_item",
                self._q.fetch_work,
                (self.clock.now_ms(), ms(lock_timeout), max(1, int(max_items)), salt),
            )
        return await self._leases(rows)

    async def fetch_routed_work_items(
        self, lock_timeout: float, max_items: int, routing: WorkerRouting, poll_timeout: float = 0.0
    ) -> list[WorkItemLease]:
        """``fetch_work_items`` of what ``routing`` accepts (tags in the query; session items one at a time
        per session, in order, claimed for ``routing.owner``), in one round trip."""
        salt = self._new_token()
        untagged, all_tags, tags = routing.tag_params()
        async with self._releasing_unseen_claim("worker", salt):
            rows = await self._all(
                "fetch_work_item",
                self._q.fetch_routed,
                (self.clock.now_ms(), ms(lock_timeout), max(1, int(max_items)), salt, untagged, all_tags, tags,
                 routing.owner, ms(routing.session_lock_timeout), routing.max_sessions),
            )
        return await self._leases(rows)

    async def renew_sessions(self, owner: str, lock_timeout: float, idle_timeout: float) -> int:
        """Extend ``owner``'s busy or recently active sessions, release its idle ones; how many it owns."""
        now = self.clock.now_ms()
        row = await self._one(
            "renew_sessions", self._q.renew_sessions, (owner, now, now + ms(lock_timeout), now - ms(idle_timeout))
        )
        return int(row[0])

    async def _leases(self, rows: list[Any]) -> list[WorkItemLease]:
        found: list[tuple[int, WorkItemLease]] = []
        bad: list[tuple[int, str]] = []
        for row_id, token, text, attempts, next_visible in rows:
            if row_id is None:
                if next_visible is not None:
                    self.notifier.notify_at("worker", next_visible)
                continue
            try:
                item = decode_activity(text)
            except HistoryDecodeError as exc:
                bad.append((row_id, str(exc)))
                continue
            found.append((row_id, WorkItemLease(item=item, lock_token=token, attempt_count=attempts)))
        if bad:
            # An undecodable row can never run: drop it rather than loop on it forever.
            logger.error("dropping undecodable work items: %s", [m for _, m in bad])
            with contextlib.suppress(ProviderError):
                await self._exec("fetch_work_item", self._q.drop_work, ([i for i, _ in bad],), "none")
        found.sort(key=lambda pair: pair[0])
        return [lease for _, lease in found]

    async def ack_work_items(
        self, entries: Sequence[tuple[str, WorkItem | None]]
    ) -> list[ProviderError | None]:
        """Ack several work items in one round trip; one result per entry (``None`` = acked)."""
        ack = _WorkAck(entries)
        if not ack.ids:
            return ack.results
        row = await self._one("ack_work_item", self._q.ack_work, (self.clock.now_ms(), *ack.params()))
        if ack.apply(row[0]):
            self.notifier.notify("orchestrator")
        return ack.results

    async def ack_work_items_and_fetch(
        self, entries: Sequence[tuple[str, WorkItem | None]], turns: TurnRequest
    ) -> AckedWithTurns:
        """``ack_work_items`` and, in the same server function call (one transaction), lock up to
        ``turns.max_items`` next turns of the instances the committed completions were sent to (see
        ``AckFetchesTurns``)."""
        ack = _WorkAck(entries)
        if not ack.ids:
            return AckedWithTurns(ack.results, [])
        tokens = [self._new_token() for _ in range(max(0, turns.max_items))]
        versions = turns.versions
        lo, hi = versions.key_bounds() if versions is not None and not versions.is_any else (None, None)
        async with self._releasing_unseen_claim("orchestrator", *tokens):
            rows = await self._all(
                "ack_work_item",
                self._q.ack_work_fetch,
                (self.clock.now_ms(), *ack.params(), ms(turns.lock_timeout), TextArray(tokens), lo, hi),
            )
        enqueued = ack.apply(rows[0][0])
        # The ack's own row first, then one per locked turn, tokens in order.
        items = [_batch_from_row(row[1:], token) for row, token in zip(rows[1:], tokens, strict=False)]
        taken = {item.instance_id for item in items}
        if enqueued and any(t not in taken for t in acked_targets(entries, ack.results)):
            self.notifier.notify("orchestrator")
        return AckedWithTurns(ack.results, items)

    async def renew_work_item_lock(self, lock_token: str, extend_for: float) -> None:
        row_id = _row_id(lock_token)
        count = 0
        if row_id is not None:
            now = self.clock.now_ms()
            until = now + ms(extend_for)
            count = await self._exec(
                "renew_work_item_lock",
                self._q.renew_work,
                (until, until, row_id, lock_token, now),
                "rowcount",
                idempotent=True,
            )
        if count == 0:
            raise ProviderError.permanent(
                "renew_work_item_lock", "lock token invalid or expired", kind=ProviderErrorKind.LOCK_LOST
            )

    async def abandon_work_item(
        self, lock_token: str, delay: float | None = None, ignore_attempt: bool = False
    ) -> None:
        row_id = _row_id(lock_token)
        if row_id is None:
            raise ProviderError.permanent(
                "abandon_work_item", f"invalid lock token {lock_token!r}", kind=ProviderErrorKind.LOCK_LOST
            )
        now = self.clock.now_ms()
        row = await self._one(
            "abandon_work_item", self._q.abandon_work, (row_id, lock_token, now, ms(delay), ignore_attempt)
        )
        if row[0] > now:
            self.notifier.notify_at("worker", row[0])
        else:
            self.notifier.notify("worker")

    @contextlib.asynccontextmanager
    async def _releasing_unseen_claim(self, queue: str, *tokens: str) -> AsyncIterator[None]:
        """A fetch that failed with a transient error (the connection dropped, a timeout) may have
        committed its claim without the caller ever seeing it: the locks would strand their work until
        they expire (a full worker lock timeout) although this process is alive. Release exactly that
        fetch's locks (found by its tokens), best effort for a few seconds, then re-raise."""
        try:
            yield
        except ProviderError as exc:
            if exc.retryable and not self._closed and tokens:
                token = tokens[0]
                s = self._quoted_schema()
                if queue == "worker":
                    query = (f"UPDATE {s}.worker_queue SET lock_token = NULL, locked_until = NULL, visible_at = %s "
                             "WHERE lock_token LIKE %s")  # fmt: skip
                    params: tuple[Any, ...] = (self.clock.now_ms(), "%." + token)
                else:
                    query = f"DELETE FROM {s}.instance_locks WHERE lock_token = ANY(%s)"
                    params = (list(tokens),)
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    while True:
                        try:
                            await self._exec("release_unseen_claim", query, params, "none", idempotent=True)
                            self.notifier.notify(queue)  # what they held (or an ack enqueued) is fetchable
                            break
                        except ProviderError:
                            await anyio.sleep(0.25)
            raise

class _WorkAck:
    """An activity ack's entries as the arrays the server functions take (tokens that cannot be this
    provider's, and repeated rows, are refused here as lost locks)."""

    def __init__(self, entries: Sequence[tuple[str, WorkItem | None]]) -> None:
        self.results: list[ProviderError | None] = [None] * len(entries)
        self.positions: list[int] = []
        self.ids: list[int] = []
        self.tokens: list[str] = []
        self.items: list[str | None] = []
        self.targets: list[str | None] = []
        seen: set[int] = set()
        for k, (token, completion) in enumerate(entries):
            row_id = _row_id(token) if isinstance(token, str) else None
            if row_id is None or row_id in seen:
                self.results[k] = _lost()
                continue
            seen.add(row_id)
            self.positions.append(k)
            self.ids.append(row_id)
            self.tokens.append(token)
            self.items.append(encode_work_item(completion) if completion is not None else None)
            self.targets.append(completion.target_instance if completion is not None else None)

    def params(self) -> tuple[Any, ...]:
        """``(ids, tokens, items, targets)``."""
        return BigintArray(self.ids), TextArray(self.tokens), TextArray(self.items), TextArray(self.targets)

    def apply(self, acked: Sequence[bool]) -> bool:
        """Record the server's per-row answer; whether any completion was enqueued."""
        enqueued = False
        for k, ok, item in zip(self.positions, acked, self.items, strict=True):
            if ok:
                enqueued = enqueued or item is not None
            else:
                self.results[k] = _lost()
        return enqueued


def _lost() -> ProviderError:
    return ProviderError.permanent(
        "ack_work_item",
        "lock token invalid or expired (the activity was cancelled or its lock lost)",
        kind=ProviderErrorKind.LOCK_LOST,
    )


def _row_id(token: str) -> int | None:
    """Work-item tokens are ``'<row id>.<random>'``; None for anything else."""
    head, dot, _ = token.partition(".")
    if not dot or not head.isdigit() or len(head) > 18:
        return None
    return int(head)


def _batch_from_row(row: Sequence[Any], token: str) -> OrchestrationItem:
    """A locked batch from the row shape both server functions return: instance, name, version,
    execution, has_instance, message texts, attempt count, history texts (then anything else)."""
    instance_id, name, version, execution_id, has_instance, texts, attempt, history = row[:8]
    return decode_batch(
        instance_id=instance_id,
        lock_token=token,
        attempt_count=attempt,
        message_texts=texts,
        has_instance=bool(has_instance),
        name=name,
        version=version,
        execution_id=execution_id,
        history_texts=history or (),
    )
