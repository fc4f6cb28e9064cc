"""Pruning old executions: option combinations, safety (never the current or a running execution) and
bulk pruning (which includes running instances: their historical executions are prunable)."""

from __future__ import annotations

from ...providers.base import InstanceFilter, InstanceNotFound, ProviderAdmin, ProviderFactory, PruneOptions
from ._support import (
    admin_of,
    create_executions,
    expect,
    expect_eq,
    expect_error,
    fresh_provider,
    ok,
    present,
)


async def _completed_at(admin: ProviderAdmin, instance: str, execution_id: int) -> int:
    info = present(
        await ok(admin.get_execution_info(instance, execution_id), "get_execution_info"), "execution"
    )
    return present(info.completed_at_ms, f"completed_at of execution {execution_id} of {instance}")


async def test_prune_options_combinations(factory: ProviderFactory) -> None:
    """keep_last, completed_before, both together (AND), and empty options (all but the current)."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        # keep_last=2 on 4 executions keeps 3 and 4
        await create_executions(p, "keep-last", 4)
        r = await ok(admin.prune_executions("keep-last", PruneOptions(keep_last=2)), "prune keep_last=2")
        expect_eq((r.instances_processed, r.executions_deleted, r.events_deleted), (1, 2, 4), "prune result")
        expect_eq(await ok(admin.list_executions("keep-last"), "list_executions"), [3, 4], "executions kept")
        expect_eq(
            await ok(p.read_with_execution("keep-last", 1), "read_with_execution"),
            [],
            "history of a pruned one",
        )
        expect_eq(
            len(await ok(p.read_with_execution("keep-last", 3), "read_with_execution")), 2, "history kept"
        )

        # completed_before: executions finished before the cutoff go
        await create_executions(p, "before", 4, pause=0.02)
        cutoff = await _completed_at(admin, "before", 2) + 1
        expect(
            await _completed_at(admin, "before", 3) >= cutoff,
            "execution 3 must have completed after the cutoff",
        )
        r = await ok(
            admin.prune_executions("before", PruneOptions(completed_before_ms=cutoff)),
            "prune completed_before",
        )
        expect_eq(r.executions_deleted, 2, "executions pruned by completed_before")
        expect_eq(
            await ok(admin.list_executions("before"), "list_executions"),
            [3, 4],
            "executions after the cutoff",
        )

        # both: an execution goes only if it is outside keep_last AND completed before the cutoff
        await create_executions(p, "both", 4, pause=0.02)
        cutoff = await _completed_at(admin, "both", 3) + 1
        r = await ok(
            admin.prune_executions("both", PruneOptions(keep_last=3, completed_before_ms=cutoff)),
            "prune with both",
        )
        expect_eq(
            await ok(admin.list_executions("both"), "list_executions"), [2, 3, 4], "executions kept by both"
        )
        expect_eq(r.executions_deleted, 1, "executions pruned by both")

        # empty options: everything but the current execution
        await create_executions(p, "empty", 3)
        r = await ok(admin.prune_executions("empty", PruneOptions()), "prune with empty options")
        expect_eq(r.executions_deleted, 2, "executions pruned by empty options")
        expect_eq(await ok(admin.list_executions("empty"), "list_executions"), [3], "executions left")


async def test_prune_safety(factory: ProviderFactory) -> None:
    """The current and running executions are never pruned; an unknown instance is an error; keep_last
    None/0/1 are equivalent on a terminal instance."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_executions(p, "running", 3, last_status="Running")
        await ok(
            admin.prune_executions("running", PruneOptions(keep_last=0)),
            "prune keep_last=0 of a running chain",
        )
        expect_eq(
            await ok(admin.list_executions("running"), "list_executions"),
            [3],
            "executions of the running chain",
        )
        info = present(await ok(admin.get_instance_info("running"), "get_instance_info"), "running instance")
        expect_eq(
            (info.current_execution_id, info.status), (3, "Running"), "the running instance after pruning"
        )
        expect_eq(len(await ok(p.read("running"), "read")), 2, "current history after pruning")

        await expect_error(
            admin.prune_executions("does-not-exist", PruneOptions(keep_last=1)),
            "prune of an unknown id",
            InstanceNotFound,
        )

        for label, keep_last in (("none", None), ("zero", 0), ("one", 1)):
            iid = f"terminal-{label}"
            await create_executions(p, iid, 4, last_status="Completed")
            r = await ok(
                admin.prune_executions(iid, PruneOptions(keep_last=keep_last)), f"prune keep_last={keep_last}"
            )
            expect_eq(r.executions_deleted, 3, f"executions pruned with keep_last={keep_last}")
            expect_eq(
                await ok(admin.list_executions(iid), "list_executions"),
                [4],
                f"kept with keep_last={keep_last}",
            )
            info = present(await ok(admin.get_instance_info(iid), "get_instance_info"), iid)
            expect_eq((info.current_execution_id, info.status), (4, "Completed"), f"{iid} after pruning")


async def test_prune_bulk(factory: ProviderFactory) -> None:
    """Bulk prune by ids (unknown ids skipped), and with a limit on the number of instances."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        for i in range(3):
            await create_executions(p, f"bulk-{i}", 4)
        r = await ok(
            admin.prune_executions_bulk(
                InstanceFilter(instance_ids=["bulk-0", "bulk-1", "unknown"]), PruneOptions(keep_last=1)
            ),
            "bulk prune by ids",
        )
        expect_eq((r.instances_processed, r.executions_deleted), (2, 6), "bulk prune result")
        for iid, expected in (("bulk-0", [4]), ("bulk-1", [4]), ("bulk-2", [1, 2, 3, 4])):
            expect_eq(
                await ok(admin.list_executions(iid), "list_executions"), expected, f"executions of {iid}"
            )
        r = await ok(
            admin.prune_executions_bulk(InstanceFilter(limit=1), PruneOptions(keep_last=2)), "limited prune"
        )
        expect_eq(r.instances_processed, 1, "instances processed with limit=1")
        total = 0
        for i in range(3):
            total += len(await ok(admin.list_executions(f"bulk-{i}"), "list_executions"))
        expect(total in (1 + 1 + 4, 1 + 1 + 2), f"executions left after a limit=1 prune: {total}")


async def test_prune_bulk_includes_running_instances(factory: ProviderFactory) -> None:
    """Running (continue-as-new looping) instances get their historical executions pruned in bulk."""
    async with fresh_provider(factory) as p:
        admin = admin_of(p)
        await create_executions(p, "looping", 3, last_status="Running")
        r = await ok(
            admin.prune_executions_bulk(InstanceFilter(instance_ids=["looping"]), PruneOptions(keep_last=1)),
            "bulk prune of a running instance",
        )
        expect_eq((r.instances_processed, r.executions_deleted), (1, 2), "bulk prune result")
        expect_eq(await ok(admin.list_executions("looping"), "list_executions"), [3], "executions left")
        info = present(await ok(admin.get_instance_info("looping"), "get_instance_info"), "looping")
        expect_eq(info.status, "Running", "status after pruning")
        r = await ok(
            admin.prune_executions_bulk(InstanceFilter(), PruneOptions()), "bulk prune of everything"
        )
        expect_eq(r.executions_deleted, 0, "nothing more to prune")
