"""Custom status: the last ``CustomStatusUpdated`` of an ack's delta sets (or clears) the instance's custom
status and bumps its version by one; ``get_custom_status`` answers only when the version moved."""

from __future__ import annotations

from ...history import CustomStatusUpdated
from ...providers.base import ExecutionMetadata, Provider, ProviderFactory
from ._support import (
    create_instance,
    event,
    expect_eq,
    external_event,
    fresh_provider,
    new_turn,
    ok,
    present,
)


async def _turn(p: Provider, instance: str, *updates: str | None, with_update: bool = True) -> None:
    """One turn of ``instance`` appending an external event plus one CustomStatusUpdated per update."""
    item = await new_turn(p, instance)
    n = len(item.history)
    delta = [external_event(n + 1, "Poke")]
    if with_update:
        delta += [event(n + 2 + k, CustomStatusUpdated(status=u)) for k, u in enumerate(updates)]
    await ok(p.ack_orchestration_item(item.lock_token, 1, delta, [], [], ExecutionMetadata()), "ack")


async def _status(p: Provider, instance: str) -> tuple[str | None, int]:
    info = present(await ok(p.get_instance_info(instance), "get_instance_info"), instance)
    return info.custom_status, info.custom_status_version


async def test_custom_status_set(factory: ProviderFactory) -> None:
    """A set stores the value and bumps the version; get_custom_status reports it."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await _turn(p, "inst-A", "step-1")
        expect_eq(await _status(p, "inst-A"), ("step-1", 1), "custom status and version after a set")
        expect_eq(
            await ok(p.get_custom_status("inst-A", 0), "get_custom_status"), ("step-1", 1), "polled status"
        )


async def test_custom_status_clear(factory: ProviderFactory) -> None:
    """A None update clears the value and bumps the version."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await _turn(p, "inst-A", "step-1")
        await _turn(p, "inst-A", None)
        expect_eq(await _status(p, "inst-A"), (None, 2), "custom status and version after a clear")
        expect_eq(await ok(p.get_custom_status("inst-A", 1), "get_custom_status"), (None, 2), "polled clear")


async def test_custom_status_none_preserves(factory: ProviderFactory) -> None:
    """A delta without updates leaves value and version alone."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await _turn(p, "inst-A", "keep-me")
        await _turn(p, "inst-A", with_update=False)
        expect_eq(await _status(p, "inst-A"), ("keep-me", 1), "custom status after a turn without updates")


async def test_custom_status_version_increments(factory: ProviderFactory) -> None:
    """Each turn with updates increments the version by exactly one (several updates in one delta: the
    last one wins, one increment)."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        versions = []
        for updates in (["a"], [None], ["b"], ["c", "d", "e"]):
            await _turn(p, "inst-A", *updates)
            versions.append(await _status(p, "inst-A"))
        expect_eq(
            versions, [("a", 1), (None, 2), ("b", 3), ("e", 4)], "custom status and version after each turn"
        )


async def test_custom_status_polling_no_change(factory: ProviderFactory) -> None:
    """Polling with the current version returns None; a newer version is reported once it exists."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        await _turn(p, "inst-A", "v1")
        expect_eq(
            await ok(p.get_custom_status("inst-A", 1), "get_custom_status"),
            None,
            "poll at the current version",
        )
        expect_eq(
            await ok(p.get_custom_status("inst-A", 5), "get_custom_status"), None, "poll past the version"
        )
        await _turn(p, "inst-A", "v2")
        expect_eq(
            await ok(p.get_custom_status("inst-A", 1), "get_custom_status"), ("v2", 2), "poll after a change"
        )


async def test_custom_status_nonexistent_instance(factory: ProviderFactory) -> None:
    """An unknown instance has no custom status."""
    async with fresh_provider(factory) as p:
        expect_eq(
            await ok(p.get_custom_status("nope", 0), "get_custom_status"),
            None,
            "custom status of an unknown id",
        )


async def test_custom_status_default_on_new_instance(factory: ProviderFactory) -> None:
    """A new instance has no custom status, version 0, and polling from 0 reports nothing."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst-A")
        expect_eq(await _status(p, "inst-A"), (None, 0), "custom status of a new instance")
        expect_eq(
            await ok(p.get_custom_status("inst-A", 0), "get_custom_status"), None, "poll of a new instance"
        )
