"""Bulk deletion (``delete_instance_bulk``): roots only, terminal only (running ones are skipped
silently), filters by ids and completion time, honours the limit, cascades to children."""

from __future__ import annotations

import anyio

from ...providers.base import InstanceFilter, ProviderAdmin, ProviderFactory
from ._support import (
    admin_of,
    create_instance,
    expect,
    expect_eq,
    fresh_provider,
    ok,
    present,
)


async def _completed_at(admin: ProviderAdmin, instance: str) -> int:
    info = present(await ok(admin.get_execution_info(instance, 1), "get_execution_info"), instance)
    return present(info.completed_at_ms, f"completed_at of {instance}")


async def _remaining(admin: ProviderAdmin) -> list[str]:
    return sorted(await ok(admin.list_instances(), "list_instances"))


async def test_delete_instance_bulk_filter_combinations(factory: ProviderFactory) -> None:
    """By ids, by completed_before, their intersection, unknown ids (0), and an empty filter (all terminal)."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        for iid in ("a", "b", "c", "d"):
            await create_instance(p, iid, status="Completed")
        r = await ok(admin.delete_instance_bulk(InstanceFilter(instance_ids=["a"])), "bulk by ids")
        expect_eq((r.instances_deleted, r.executions_deleted, r.events_deleted), (1, 1, 1), "bulk by ids")
        expect_eq(await _remaining(admin), ["b", "c", "d"], "instances after bulk by ids")
        r = await ok(
            admin.delete_instance_bulk(InstanceFilter(instance_ids=["zz", "yy"])), "bulk by unknown ids"
        )
        expect_eq(r.instances_deleted, 0, "instances deleted by unknown ids")
        cutoff = max([await _completed_at(admin, iid) for iid in ("b", "c", "d")]) + 1
        r = await ok(
            admin.delete_instance_bulk(InstanceFilter(instance_ids=["b"], completed_before_ms=cutoff)),
            "bulk by ids and completed_before",
        )
        expect_eq(r.instances_deleted, 1, "instances deleted by ids AND completed_before")
        r = await ok(
            admin.delete_instance_bulk(InstanceFilter(instance_ids=["c"], completed_before_ms=1)),
            "bulk by ids and an old cutoff",
        )
        expect_eq(r.instances_deleted, 0, "instances deleted by ids AND a cutoff before everything")
        await create_instance(p, "running")
        r = await ok(admin.delete_instance_bulk(InstanceFilter()), "bulk with an empty filter")
        expect_eq(r.instances_deleted, 2, "instances deleted by an empty filter (all terminal)")
        expect_eq(await _remaining(admin), ["running"], "instances after an empty filter")


async def test_delete_instance_bulk_safety_and_limits(factory: ProviderFactory) -> None:
    """Running instances are skipped silently (also when named); the limit caps each call; repeated calls
    drain the terminal ones."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "running")
        for i in range(5):
            await create_instance(p, f"done-{i}", status="Completed" if i % 2 else "Failed")
        r = await ok(
            admin.delete_instance_bulk(InstanceFilter(instance_ids=["running"])), "bulk naming a running one"
        )
        expect_eq(r.instances_deleted, 0, "running instance named in the filter")
        deleted = []
        for _ in range(3):
            r = await ok(admin.delete_instance_bulk(InstanceFilter(limit=2)), "bulk with limit=2")
            deleted.append(r.instances_deleted)
        expect_eq(deleted, [2, 2, 1], "instances deleted by successive limit=2 calls")
        expect_eq(await _remaining(admin), ["running"], "instances after draining")


async def test_delete_instance_bulk_completed_before_filter(factory: ProviderFactory) -> None:
    """The completion cutoff splits deleted from kept, alone and combined with ids."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "old-1", status="Completed")
        await create_instance(p, "old-2", status="Completed")
        old = max(await _completed_at(admin, "old-1"), await _completed_at(admin, "old-2"))
        await anyio.sleep(0.02)  # the cutoff lies strictly between the two groups' completion times
        await create_instance(p, "new-1", status="Completed")
        await create_instance(p, "new-2", status="Failed")
        cutoff = old + 1
        expect(await _completed_at(admin, "new-1") >= cutoff, "new-1 must have completed after the cutoff")
        r = await ok(
            admin.delete_instance_bulk(
                InstanceFilter(instance_ids=["old-1", "new-1"], completed_before_ms=cutoff)
            ),
            "cutoff combined with ids",
        )
        expect_eq(r.instances_deleted, 1, "deleted by ids AND cutoff")
        expect_eq(await _remaining(admin), ["new-1", "new-2", "old-2"], "instances after ids AND cutoff")
        r = await ok(admin.delete_instance_bulk(InstanceFilter(completed_before_ms=cutoff)), "cutoff alone")
        expect_eq(r.instances_deleted, 1, "deleted by the cutoff alone")
        expect_eq(await _remaining(admin), ["new-1", "new-2"], "instances completed after the cutoff")


async def test_delete_instance_bulk_cascades_to_children(factory: ProviderFactory) -> None:
    """Selected roots take their children (one or many levels) with them; children are never selected as
    roots themselves; standalone instances and several roots work in one call."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_instance(p, "root-1", status="Completed")
        await create_instance(p, "root-1-kid", status="Completed", parent="root-1")
        await create_instance(p, "root-2", status="Completed")
        await create_instance(p, "root-2-kid-a", status="Completed", parent="root-2")
        await create_instance(p, "root-2-kid-b", status="Completed", parent="root-2")
        await create_instance(p, "root-2-kid-a-grandkid", status="Completed", parent="root-2-kid-a")
        await create_instance(p, "standalone", status="Completed")
        r = await ok(
            admin.delete_instance_bulk(InstanceFilter(instance_ids=["root-1-kid"])), "bulk naming a child"
        )
        expect_eq(r.instances_deleted, 0, "a child is not a root")
        r = await ok(admin.delete_instance_bulk(InstanceFilter(instance_ids=["root-1"])), "bulk of one root")
        expect_eq((r.instances_deleted, r.executions_deleted), (2, 2), "root-1 with its child")
        r = await ok(
            admin.delete_instance_bulk(InstanceFilter(instance_ids=["root-2", "standalone"])),
            "bulk of two roots",
        )
        expect_eq((r.instances_deleted, r.events_deleted), (5, 5), "root-2's tree plus the standalone one")
        expect_eq(await _remaining(admin), [], "instances left")
