"""Capability filtering: ``fetch_orchestration_item(..., versions=VersionRange)`` skips instances whose
version is outside the range, in the same round trip, without touching their messages. The version an
instance's next turn runs at is its recorded one; for a new instance, the one its start asks for; while a
continue-as-new is pending, the one that asks for. A start or continue-as-new that asks for no version is
fetched by any range. ``get_queue_depths().orchestrator_by_version`` shows the waiting work per version."""

from __future__ import annotations

from ...history import ContinueAsNew
from ...providers.base import OrchestrationItem, Provider, ProviderFactory, VersionRange
from ._support import (
    LONG,
    ORCH,
    ack,
    admin_of,
    create_instance,
    describe,
    expect,
    expect_eq,
    external,
    external_event,
    fail,
    fresh_provider,
    meta,
    must_fetch_orch,
    ok,
    skip,
    start_item,
)


async def _fetch(p: Provider, versions: VersionRange | None) -> OrchestrationItem | None:
    try:
        call = p.fetch_orchestration_item(LONG, 0.0, versions=versions)
    except TypeError:
        skip("the provider's fetch_orchestration_item takes no versions= (capability filtering)")
    return await ok(call, f"fetch_orchestration_item(versions={versions})")


async def _expect_none(p: Provider, versions: VersionRange, what: str) -> None:
    item = await _fetch(p, versions)
    if item is not None:
        fail(f"{what}: a fetch with versions {versions} returned {describe(item)}")


async def _expect_item(p: Provider, versions: VersionRange | None, instance: str, what: str) -> OrchestrationItem:
    item = await _fetch(p, versions)
    if item is None or item.instance_id != instance:
        fail(f"{what}: a fetch with versions {versions} should return {instance!r}, got {describe(item)}")
    return item


async def _instance_at(p: Provider, instance: str, version: str) -> None:
    """``instance`` created at ``version``, with one visible message waiting."""
    await create_instance(p, instance, version=version)
    await ok(p.enqueue_for_orchestrator(external(instance, "Poke")), "enqueue_for_orchestrator")


async def test_filter_skips_instances_outside_the_range(factory: ProviderFactory) -> None:
    """An instance recorded at 1.0.0 is not fetched with versions 2.x; it is with 1.x."""
    async with fresh_provider(factory) as p:
        await _instance_at(p, "inst-v1", "1.0.0")
        await _expect_none(p, VersionRange.major(2), "instance at 1.0.0")
        await _expect_item(p, VersionRange.major(1), "inst-v1", "instance at 1.0.0")


async def test_filter_bounds_are_inclusive_then_exclusive(factory: ProviderFactory) -> None:
    """``at_least`` is included and ``below`` excluded: 1.5.0 is in [1.5.0, 2) and not in [1.0, 1.5.0)."""
    async with fresh_provider(factory) as p:
        await _instance_at(p, "inst", "1.5.0")
        await _expect_none(p, VersionRange("1.0", "1.5.0"), "instance at 1.5.0")
        await _expect_item(p, VersionRange("1.5.0", "2"), "inst", "instance at 1.5.0")


async def test_filter_compares_versions_numerically(factory: ProviderFactory) -> None:
    """1.10.0 is above 1.9.0 (not a text comparison), and ``"2"`` means 2.0.0."""
    async with fresh_provider(factory) as p:
        await _instance_at(p, "inst-110", "1.10.0")
        await _expect_none(p, VersionRange("1.0.0", "1.10.0"), "instance at 1.10.0")
        await _expect_item(p, VersionRange("1.9.1", "1.11"), "inst-110", "instance at 1.10.0")
    async with fresh_provider(factory) as p:
        await _instance_at(p, "inst-2", "2")
        await _expect_item(p, VersionRange.exactly("2.0.0"), "inst-2", "instance at '2'")


async def test_start_outside_the_range_is_not_fetched(factory: ProviderFactory) -> None:
    """A start that asks for 9.0.0 is not fetched (nor locked, nor counted) with versions 1.x; it is with 9.x,
    at attempt 1."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("fresh", version="9.0.0")), "enqueue_start")
        for _ in range(3):
            await _expect_none(p, VersionRange.major(1), "a start asking for 9.0.0")
        item = await _expect_item(p, VersionRange.major(9), "fresh", "a start asking for 9.0.0")
        expect_eq(item.attempt_count, 1, "attempt count after filtered fetches")


async def test_start_bounds_are_inclusive_then_exclusive(factory: ProviderFactory) -> None:
    """A start's requested version is compared like a recorded one: 1.10.0 is in [1.10.0, 1.11) and not in
    [1.9.0, 1.10.0)."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("fresh", version="1.10.0")), "enqueue_start")
        await _expect_none(p, VersionRange("1.9.0", "1.10.0"), "a start asking for 1.10.0")
        await _expect_item(p, VersionRange("1.10.0", "1.11"), "fresh", "a start asking for 1.10.0")


async def test_start_without_a_version_is_fetched_by_any_range(factory: ProviderFactory) -> None:
    """A start that asks for no version runs at the fetching runtime's latest registered version, which
    storage cannot know: any range fetches it."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("fresh", version=None)), "enqueue_start")
        await _expect_item(p, VersionRange.major(1), "fresh", "a start asking for no version")


async def test_start_outside_the_range_does_not_block_others(factory: ProviderFactory) -> None:
    """An older start for another version does not hide a newer start this range can run."""
    async with fresh_provider(factory) as p:
        await ok(p.enqueue_start(start_item("for-v3", version="3.0.0")), "enqueue_start")
        await ok(p.enqueue_start(start_item("for-v1", version="1.2.0")), "enqueue_start")
        await _expect_item(p, VersionRange.major(1), "for-v1", "the newer start asking for 1.2.0")
        await _expect_none(p, VersionRange.major(1), "the start asking for 3.0.0")
        await _expect_item(p, VersionRange.major(3), "for-v3", "the start asking for 3.0.0")


async def test_continue_as_new_to_another_version_moves_the_instance(factory: ProviderFactory) -> None:
    """A 1.0.0 instance that continued as new to 2.0.0: its successor (and the events waiting with it) is
    fetched with versions 2.x, never with 1.x, which would have to give it back."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst", version="1.0.0")
        await ok(p.enqueue_for_orchestrator(external("inst", "Next")), "enqueue")
        item = await _expect_item(p, VersionRange.major(1), "inst", "instance at 1.0.0")
        successor = ContinueAsNew(instance="inst", name=ORCH, input="{}", version="2.0.0", execution_id=2)
        await ack(p, item, [external_event(len(item.history) + 1, "Next")], orchestrator_items=[successor],
                  metadata=meta("ContinuedAsNew"))
        await ok(p.enqueue_for_orchestrator(external("inst", "ForTheSuccessor")), "enqueue")
        await _expect_none(p, VersionRange.major(1), "a successor asking for 2.0.0")
        got = await _expect_item(p, VersionRange.major(2), "inst", "a successor asking for 2.0.0")
        expect_eq(sorted(type(m).__name__ for m in got.messages), ["ContinueAsNew", "ExternalRaised"],
                  "messages of the successor batch")


async def test_queue_depths_count_waiting_instances_by_version(factory: ProviderFactory) -> None:
    """``get_queue_depths().orchestrator_by_version`` counts instances with ready orchestration work per the
    version their next turn runs at (a start's requested one; ``None``: none asked); locked instances and
    messages not yet visible are not counted."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        instances = (("a1", "1.0.0"), ("b1", "1.0.0"), ("c2", "2.0.0"), ("later", "1.0.0"))
        for instance, version in instances:
            await create_instance(p, instance, version=version)
        for instance, _ in instances[:3]:
            await ok(p.enqueue_for_orchestrator(external(instance, "Poke")), "enqueue")
        await ok(p.enqueue_for_orchestrator(external("later", "Later"), delay=LONG), "enqueue (delayed)")
        await ok(p.enqueue_start(start_item("new-3", version="3.1.0")), "enqueue_start")
        await ok(p.enqueue_start(start_item("new-any", version=None)), "enqueue_start")
        depths = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq(depths.orchestrator_by_version, {"1.0.0": 2, "2.0.0": 1, "3.1.0": 1, None: 1},
                  "orchestrator_by_version with everything unlocked")
        await _expect_item(p, VersionRange.exactly("1.0.0"), "a1", "the oldest 1.0.0 instance")
        depths = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq(depths.orchestrator_by_version, {"1.0.0": 1, "2.0.0": 1, "3.1.0": 1, None: 1},
                  "orchestrator_by_version with a1 locked")


async def test_queue_depths_show_work_no_range_takes(factory: ProviderFactory) -> None:
    """Work a runtime's range refuses waits and is visible: after a 1.x fetch finds nothing, the 5.0.0
    start and the successor asking for 2.0.0 are still counted under their versions."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "inst", version="1.0.0")
        await ok(p.enqueue_for_orchestrator(external("inst", "Next")), "enqueue")
        item = await must_fetch_orch(p, "inst")
        successor = ContinueAsNew(instance="inst", name=ORCH, input="{}", version="2.0.0", execution_id=2)
        await ack(p, item, [external_event(len(item.history) + 1, "Next")], orchestrator_items=[successor],
                  metadata=meta("ContinuedAsNew"))
        await ok(p.enqueue_start(start_item("new-5", version="5.0.0")), "enqueue_start")
        await _expect_none(p, VersionRange.major(1), "work at 5.0.0 and 2.0.0")
        depths = await ok(admin.get_queue_depths(), "get_queue_depths")
        expect_eq(depths.orchestrator_by_version, {"5.0.0": 1, "2.0.0": 1}, "orchestrator_by_version")


async def test_no_filter_fetches_every_version(factory: ProviderFactory) -> None:
    """Without ``versions`` (or with the any range) every instance is fetched."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "a", version="1.0.0")
        await create_instance(p, "b", version="7.3.1")
        for instance in ("a", "b"):
            await ok(p.enqueue_for_orchestrator(external(instance, "Poke")), "enqueue")
        got = set()
        for versions in (None, VersionRange.any()):
            item = await _fetch(p, versions)
            if item is None:
                fail(f"a fetch with versions {versions} returned None; instances 'a' and 'b' wait")
            got.add(item.instance_id)
        expect_eq(got, {"a", "b"}, "instances fetched without a filter")


async def test_skipped_instance_does_not_block_others(factory: ProviderFactory) -> None:
    """An older message of an instance out of range does not hide a newer one of an instance in range."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "old", version="1.0.0")
        await create_instance(p, "new", version="2.1.0")
        await ok(p.enqueue_for_orchestrator(external("old", "First")), "enqueue")
        await ok(p.enqueue_for_orchestrator(external("new", "Second")), "enqueue")
        await _expect_item(p, VersionRange.major(2), "new", "the newer message of the 2.x instance")


async def test_skipped_messages_are_untouched(factory: ProviderFactory) -> None:
    """A filtered fetch neither locks nor counts the skipped instance's messages: a later matching fetch
    gets all of them with attempt count 1."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst", version="1.0.0")
        for name in ("A", "B"):
            await ok(p.enqueue_for_orchestrator(external("inst", name)), "enqueue")
        for _ in range(3):
            await _expect_none(p, VersionRange.major(2), "instance at 1.0.0")
        item = await _expect_item(p, VersionRange.major(1), "inst", "instance at 1.0.0")
        expect_eq(len(item.messages), 2, "messages of the batch")
        expect_eq(item.attempt_count, 1, "attempt count after filtered fetches")


async def test_recorded_version_change_moves_the_instance(factory: ProviderFactory) -> None:
    """When a turn records another version (continue-as-new to new code), the filter follows it."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst", version="1.0.0")
        await ok(p.enqueue_for_orchestrator(external("inst", "Poke")), "enqueue")
        item = await _expect_item(p, VersionRange.major(1), "inst", "instance at 1.0.0")
        await ack(p, item, [external_event(len(item.history) + 1, "Poke")], metadata=meta(version="2.0.0"))
        await ok(p.enqueue_for_orchestrator(external("inst", "Again")), "enqueue")
        await _expect_none(p, VersionRange.major(1), "instance now at 2.0.0")
        await _expect_item(p, VersionRange.major(2), "inst", "instance now at 2.0.0")


async def test_duplicate_start_of_filtered_instance_is_not_fetched(factory: ProviderFactory) -> None:
    """A start message for an existing instance out of range does not let a runtime take that instance."""
    async with fresh_provider(factory) as p:
        await create_instance(p, "inst", version="1.0.0")
        # A detached start from another orchestration lands in the queue as a start message.
        await create_instance(p, "starter")
        await ok(p.enqueue_for_orchestrator(external("starter", "Go")), "enqueue")
        item = await must_fetch_orch(p, "starter")
        await ack(p, item, [external_event(len(item.history) + 1, "Go")],
                  orchestrator_items=[start_item("inst", version="3.0.0")])
        await _expect_none(p, VersionRange.major(3), "an existing 1.0.0 instance with a start message")
        got = await _expect_item(p, VersionRange.major(1), "inst", "the 1.0.0 instance")
        expect(any(type(m).__name__ == "StartOrchestration" for m in got.messages),
               f"the start message should be in the batch, got {describe(got)}")
