"""The first turns a runtime's own client hands over: ``Client.start_orchestration`` on a provider with
``ProviderCapabilities.start_fetches_turn`` stores the start and locks the new instance's first turn in
the same round trip, for a free turn slot of this runtime reserved beforehand (never waited for); the
batch runs on the dispatchers' one turn path (``start_turn``), and no dispatcher fetches it."""

from __future__ import annotations

from ..providers.base import OrchestrationItem, TurnRequest
from ._activities import TurnHandoff
from ._env import WorkerEnv
from ._orchestrations import give_back_turn, start_turn

__all__ = ["FirstTurns"]


class FirstTurns:
    """The runtime's side of its client's start handover (``client.FirstTurnHandoff``). Active between
    :meth:`open` and :meth:`close` (while the dispatchers' task group runs); ``reserve`` returns
    ``None`` otherwise, and the client only stores the start."""

    def __init__(self) -> None:
        self._env: WorkerEnv | None = None
        self._turns: TurnHandoff | None = None

    def open(self, env: WorkerEnv, turns: TurnHandoff) -> None:
        """Hand first turns to ``turns`` (the turn slots and the dispatchers' task group) from now on."""
        self._env, self._turns = env, turns

    def close(self) -> None:
        """Stop reserving (the dispatchers' task group ended)."""
        self._turns = None

    def reserve(self) -> _Reserved | None:
        """A free turn slot for the first turn of a start about to be stored, or ``None`` (none free,
        stopping, or not running)."""
        env, turns = self._env, self._turns
        if env is None or turns is None or env.stopping or turns.slots.value == 0:
            return None
        turns.slots.acquire_nowait()
        options = env.options
        versions = options.supported_replay_versions
        request = TurnRequest(options.orchestrator_lock_timeout, 1, None if versions.is_any else versions)
        return _Reserved(self, env, turns, request)


class _Reserved:
    """One reserved turn slot; :meth:`hand_over` runs the locked batch in it, or releases it."""

    __slots__ = ("_owner", "_env", "_turns", "request")

    def __init__(self, owner: FirstTurns, env: WorkerEnv, turns: TurnHandoff, request: TurnRequest) -> None:
        self._owner, self._env, self._turns, self.request = owner, env, turns, request

    async def hand_over(self, item: OrchestrationItem | None) -> None:
        """Run ``item`` (the batch the start locked) in the reserved slot; with none, free the slot. A
        batch that arrives after the dispatchers stopped is given back at once (attempt uncounted)."""
        env, turns = self._env, self._turns
        if item is None:
            turns.slots.release()
            return
        if self._owner._turns is turns and not env.stopping:
            env.stats.starts_handed_over += 1
            start_turn(env, item, turns.slots, turns.task_group, turns.eager)
            return
        turns.slots.release()
        await give_back_turn(env, item)
