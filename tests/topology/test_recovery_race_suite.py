"""The recovery race suite (issue 22 item 8, slow tier): every failure signal against every
executor step of a split, on one real cluster (metaroot, coordinator, three stores).

Executor held at (failpoints):
  before_propose              `store.before_propose` = 1*sleep(5000) on the region leader
  after_propose_before_apply  `store.before_apply` = 1*sleep(3000) on the region leader (the
                              whole leader process stalls with the split committed or about
                              to be, unapplied there: a leader change may follow)
  after_apply_before_publish  `store.publish_terminal` = raise on every store (applied,
                              terminal held)
Signals sent while it is held:
  compensate                  admin `compensate` to the region leader
  raw_cancel                  `Append([SPLIT_CANCELLED])` straight to metaroot
  replayed_compensate         the same `compensate` twice, the second after the first answer
  spoofed_report              `compensate` with a forged reason sent to a follower (forwarded)
4 signals x 3 points = 12 interleavings. Each must end with: no key unreadable, exactly one
outcome of the TransitionID in ListTransitions' history, the region layout matching that
outcome, and a recovery record for every compensation that acted ("compensated" naming the
fence, or "compensation_refused_applied").
"""

from __future__ import annotations

import pytest
import trio
from recovery_helpers import heartbeat_rounds, outcomes, put_keys, unreadable
from topo_harness import wait_until

from nokvpy.protocol import EventKind, Freshness, RangeSplit, RootEvent
from nokvpy.protocol.metaroot_rpc import AppendRequest
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcError

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TOPO_OPTIONS = {"stores": 3}

POINTS = {
    "before_propose": ("leader", "store.before_propose", "1*sleep(5000)"),
    "after_propose_before_apply": ("leader", "store.before_apply", "1*sleep(3000)"),
    "after_apply_before_publish": ("all", "store.publish_terminal", "raise"),
}
SIGNALS = ("compensate", "raw_cancel", "replayed_compensate", "spoofed_report")
_prefixes = iter(range(100, 1000))


async def _send(c, client, signal, rid, tid, leader, cancel) -> list[object]:
    """Send `signal`; returns every answer (a reply or the error)."""
    answers: list[object] = []

    async def call(addr_store: int, req) -> None:
        try:
            answers.append(await c.admin(client, req, addr_store, timeout=60.0))
        except (RemoteError, RpcError) as exc:
            answers.append(exc)

    report = AdminRequest("compensate", rid, transition_id=tid,
                          reason="race suite: failure reported while the executor is held")
    if signal == "compensate":
        await call(leader, report)
    elif signal == "replayed_compensate":
        await call(leader, report)
        await call(leader, report)
    elif signal == "spoofed_report":
        follower = next(s for s in (1, 2, 3) if s != leader)
        forged = AdminRequest("compensate", rid, transition_id=tid,
                              reason="spoofed: the split failed (it did not)")
        await call(follower, forged)
    else:
        try:  # with the coordinator credential: root's own guard must refuse it
            async with c.rpc_as("coordinator") as rpc:
                answers.append(await rpc.call(c.addr("metaroot-1"), AppendRequest([cancel]),
                                              timeout=10.0))
        except RemoteError as exc:
            answers.append(exc)
    return answers


async def _set(c, client, where, leader, fp, spec) -> None:
    names = [f"store-{leader}"] if where == "leader" else c.store_names()
    for n in names:
        await c.failpoint(client, n, fp, spec)


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("point", sorted(POINTS))
async def test_signal_races_executor_step(module_topo, point, signal):
    c = module_topo
    where, fp, spec = POINTS[point]
    prefix = b"race%d" % next(_prefixes)
    key = prefix + b"/5"
    async with c.client(timeout=10.0) as client:
        data = await put_keys(client, prefix)
        base = (await client.route(key, Freshness.STRONG)).descriptor
        rid, tid = base.region_id, f"split:{base.region_id}:{key.hex()}"
        leader = await c.leader_store(client, key)
        split_answer: list[object] = []

        async def split() -> None:
            try:
                split_answer.append(await c.admin(client, AdminRequest(
                    "split", rid, split_key=key, wait=True), leader, timeout=60.0))
            except (RemoteError, RpcError) as exc:
                split_answer.append(exc)

        answers: list[object] = []
        what = f"{point} x {signal} ({tid}, leader store {leader})"
        try:
            await _set(c, client, where, leader, fp, spec)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(split)
                # the plan in root (normally still ADMITTED; a plan that already settled,
                # e.g. compensated by its own executor after a leader change, still races)
                entry = await wait_until(lambda: _planned(c, client, tid), 30,
                                         what=f"the planned split in root: {what}")
                if point == "after_apply_before_publish":
                    await wait_until(lambda: _applied_somewhere(c, client, tid), 20,
                                     what=f"the split applied: {what}")
                left, right = sorted(entry.targets, key=lambda d: d.start_key)
                cancel = RootEvent(EventKind.SPLIT_CANCELLED, RangeSplit(
                    rid, right.start_key, left, right, entry.bases[0]))
                answers = await _send(c, client, signal, rid, tid, leader, cancel)
        finally:
            await _set(c, client, "all", leader, fp, None)

        story = f"{what}: answers {answers!r}, split {split_answer!r}"
        # settle: held publishes retry, a stuck plan is compensated by the scheduler
        final = await wait_until(lambda: _settled(c, client, tid), 90, 0.25,
                                 f"the transition to settle: {story}")
        await heartbeat_rounds(c, client)
        assert await unreadable(client, data) == [], story
        assert await outcomes(c, client, tid) == [final], story
        route = await client.route(prefix + b"/8", Freshness.STRONG)
        assert (route.descriptor.start_key == key) == (final == "COMPLETED"), story
        actions = [r.action for r in await c.recovery_records(client, tid)]
        for a in answers:
            detail = getattr(a, "detail", "")
            if detail.startswith("compensated"):
                assert "compensated" in actions and "fenced" in actions, (story, actions)
                assert final == "CANCELLED", story
            elif detail.startswith("not compensated"):
                assert "compensation_refused_applied" in actions, (story, actions)
        if signal == "raw_cancel":
            (a,) = answers
            assert isinstance(a, RemoteError) and a.reason in (
                "cancel_not_fenced", "can_no_longer_be_cancelled", "cancel_after_apply"), story
        if final == "CANCELLED":
            records = [r for r in await c.recovery_records(client, tid)
                       if r.action == "compensated"]
            assert records and "fenced at index" in records[-1].undone, (story, records)


async def _planned(c, client, tid):
    for e in (await c.transitions(client)).entries:  # pending first, then the history
        if e.transition_id == tid:
            return e
    return None


async def _applied_somewhere(c, client, tid):
    for n in c.store_names():
        t = await c.tracked(client, n, tid)
        if t and t["outcome"] == "APPLIED":
            return True
    return False


async def _settled(c, client, tid):
    phase = await c.phase(client, tid)
    if phase == "CANCELLED":  # the compensator records "compensated" after the cancel lands
        actions = [r.action for r in await c.recovery_records(client, tid)]
        return phase if "compensated" in actions else None
    return phase if phase == "COMPLETED" else None
