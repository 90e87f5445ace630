"""Compensation and recovery records (DESIGN 7): a transition planned in root whose leader dies
before proposing is found stuck by the coordinator's scheduler and compensated by the new
leader (cancel event, base descriptors restored, a RECOVERY_RECORDED event with the failure
evidence); a false failure report for a transition that applied cancels nothing."""

from __future__ import annotations

import pytest
from topo_harness import wait_until

from nokvpy.protocol import EventKind, Freshness, RangeSplit, RootEvent
from nokvpy.protocol.coordinator_rpc import PublishRootEventRequest
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcError

pytestmark = pytest.mark.cluster

TOPO_OPTIONS = {"stores": 3, "scheduler": "stuck_after=3"}


async def test_leader_killed_before_proposing_is_compensated(module_topo):
    c = module_topo
    async with c.client() as client:
        for i in range(10):
            await client.put(b"m/%02d" % i, b"v%d" % i)
        base = (await client.route(b"m/05", Freshness.STRONG)).descriptor
        leader = await c.leader_store(client, b"m/05")
        name = f"store-{leader}"
        await c.failpoint(client, name, "store.before_propose", "exit")
        tid = f"split:{base.region_id}:{b'm/05'.hex()}"
        try:
            await c.admin(client, AdminRequest("split", base.region_id, split_key=b"m/05",
                                               wait=False), leader)
        except RpcError:
            pass  # the executor exits after publishing the plan, before proposing
        await wait_until(lambda: _dead(c, name), 15, what=f"{name} to exit")
        try:
            # planned in root: the scheduler finds it stuck and has the new leader compensate
            assert await c.phase(client, tid) in ("ADMITTED", "CANCELLED")
            await wait_until(lambda: _phase_is(c, client, tid, "CANCELLED"), 45,
                             what="the plan to be cancelled")
            # the "fenced" witness is recorded before the cancel, "compensated" after it
            records = await wait_until(lambda: _with_action(c, client, tid, "compensated"), 15,
                                       what="a compensated recovery record")
            rec = records[-1]
            assert rec.action == "compensated", rec
            witness = [r.action for r in await c.recovery_records(client, tid)]
            assert witness.index("fenced") < witness.index("compensated"), witness
            assert "pending since root index" in rec.failure_evidence, rec
            assert "not applied" in rec.failure_evidence, rec
            assert "restored" in rec.undone and "keeps serving" in rec.remained, rec
            assert rec.observed_epoch == base.epoch
            # the region keeps serving with its base descriptor
            route = await client.route(b"m/05", Freshness.STRONG)
            assert route.descriptor.same_truth(base), route.descriptor
            assert await client.get(b"m/07") == b"v7"
            await client.put(b"m/08", b"after")
            assert await client.get(b"m/08") == b"after"
            # the compensating leader tracked it as COMPENSATED
            tracked = [await c.tracked(client, n, tid) for n in c.store_names() if n != name]
            assert any(t and t["stage"] == "COMPENSATED" for t in tracked), tracked
        finally:
            c.start_process(name)
        await c.wait_store(client, name)
        assert await client.get(b"m/09") == b"v9"


async def _with_action(c, client, tid, action):
    return [r for r in await c.recovery_records(client, tid) if r.action == action]


async def _dead(c, name):
    return not c.alive(name)


async def _phase_is(c, client, tid, phase):
    return await c.phase(client, tid) == phase


async def test_false_failure_report_does_not_cancel_an_applied_transition(module_topo):
    c = module_topo
    async with c.client() as client:
        for name in c.store_names():  # the module's cluster whole again, whatever ran before
            await c.wait_store(client, name)
        await client.put(b"n/1", b"x")
        for name in c.store_names():
            await c.failpoint(client, name, "store.publish_terminal", "raise")
        try:
            reply = await c.split(client, b"n/5")
            tid = reply.transition_id
            assert reply.outcome == "APPLIED", reply
            assert await c.phase(client, tid) == "ADMITTED"
            region = int(tid.split(":")[1])
            # a false failure report to a replica: forwarded to the leader, which fences its
            # log, finds the split applied and refuses to cancel
            follower = next(d for d in await c.regions(client) if d.region_id == region)
            answer = await c.admin(client, AdminRequest(
                "compensate", region, transition_id=tid, reason="false report by the test"),
                follower.voters()[-1].store_id)
            assert "not compensated" in answer.detail, answer
            # a spoofed cancel straight to the coordinator is refused too: a store reports the
            # target epoch
            entry = next(e for e in (await c.transitions(client)).entries
                         if e.transition_id == tid)
            left, right = sorted(entry.targets, key=lambda d: d.start_key)
            cancel = RootEvent(EventKind.SPLIT_CANCELLED, RangeSplit(
                region, right.start_key, left, right, entry.bases[0]))
            with pytest.raises(RemoteError) as refused:
                await client.call_coordinator(PublishRootEventRequest(cancel, None))
            # root's own guards (no fence witness for the plan; or the leader reported it
            # applied), or the coordinator's convenience check (a store reports the target
            # epoch), whichever sees it first
            assert refused.value.reason in ("cancel_not_fenced", "cancel_after_apply",
                                            "applied_on_store"), refused.value
            # the scheduler sees it stuck, but the leader reports the target: drive forward
            await wait_until(lambda: _has_action(c, client, tid, "reconciled_forward"), 20,
                             what="the scheduler to drive it forward")
            assert await c.phase(client, tid) == "ADMITTED"
        finally:
            for name in c.store_names():
                await c.failpoint(client, name, "store.publish_terminal", None)
        await wait_until(lambda: _phase_is(c, client, tid, "COMPLETED"), 20, what="COMPLETED")
        actions = [r.action for r in await c.recovery_records(client, tid)]
        assert "compensation_refused_applied" in actions, actions
        assert "compensated" not in actions, actions
        report = next(r for r in await c.recovery_records(client, tid)
                      if r.action == "compensation_refused_applied")
        assert "false report by the test" in report.failure_evidence
        route = await client.route(b"n/7", Freshness.STRONG)
        assert route.descriptor.start_key == b"n/5"


async def _has_action(c, client, tid, action):
    return any(r.action == action for r in await c.recovery_records(client, tid))
