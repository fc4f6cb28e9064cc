"""History and status reads of the PostgreSQL provider."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...history import (
    Event,
    HistoryDecodeError,
    decode_event,
    encode_event,
)
from ..base import (
    InstanceInfo,
    ProviderError,
    ProviderErrorKind,
)
from ._base import PgBase


class HistoryJob(PgBase):
    """History and status: ``read``, ``append_with_execution``, ``get_instance_info``..."""

    async def read(self, instance_id: str) -> list[Event]:
        rows = await self._all("read", self._q.read, {"id": instance_id}, idempotent=True)
        return self._decode_history("read", rows)

    async def read_with_execution(self, instance_id: str, execution_id: int) -> list[Event]:
        rows = await self._all(
            "read_with_execution", self._q.read_execution, (instance_id, execution_id), idempotent=True
        )
        return self._decode_history("read_with_execution", rows)

    def _decode_history(self, op: str, rows: list[Any]) -> list[Event]:
        try:
            return [decode_event(r[0]) for r in rows]
        except HistoryDecodeError as exc:
            raise ProviderError.permanent(op, str(exc), kind=ProviderErrorKind.CORRUPT) from None

    async def append_with_execution(
        self, instance_id: str, execution_id: int, events: Sequence[Event]
    ) -> None:
        await self._exec(
            "append_with_execution",
            self._q.append,
            (
                instance_id,
                execution_id,
                [e.event_id for e in events],
                [e.type_name for e in events],
                [encode_event(e) for e in events],
            ),
            "none",
        )

    async def get_instance_info(self, instance_id: str) -> InstanceInfo | None:
        row = await self._one("get_instance_info", self._q.instance_info, (instance_id,), idempotent=True)
        if row is None:
            return None
        return InstanceInfo(instance_id, *row)

    async def instance_exists(self, instance_id: str) -> bool:
        """True if ``instance_id`` has an instance or a pending start."""
        row = await self._one("instance_exists", self._q.instance_exists, (instance_id, instance_id), idempotent=True)
        return row is not None

    async def get_kv_values(self, instance_id: str) -> dict[str, str]:
        """The key-value table of ``instance_id`` (key to JSON text)."""
        rows = await self._all("get_kv_values", self._q.kv_values, (instance_id,), idempotent=True)
        return {str(k): str(v) for k, v in rows if v is not None}

    async def get_custom_status(
        self, instance_id: str, last_seen_version: int
    ) -> tuple[str | None, int] | None:
        row = await self._one("get_custom_status", self._q.custom_status, (instance_id,), idempotent=True)
        if row is None or row[1] <= last_seen_version:
            return None
        return row[0], int(row[1])
