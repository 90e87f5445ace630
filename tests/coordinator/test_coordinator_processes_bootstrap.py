"""The coordinator as real processes: retained-tail bootstrap and Tso across a failover.

LocalCluster with 2 coordinators (grant TTL 2 s), 1 store and a metaroot group (1 peer, and 3
peers for the bootstrap check) started with `--retained-tail 8`, so a handful of root events
compacts metaroot's tail. Covers, against `nokv ... serve` processes on loopback:
  1. BOOTSTRAP_REQUIRED -> FRESH through BOOTSTRAP: the region_lookup holder's catch-up is
     paused (PauseCatchUp) while RECOVERY_RECORDED events are appended to metaroot until its
     retained tail starts after the paused served token. The coordinator reports
     BOOTSTRAP_REQUIRED / VIEW_ONLY with its served token unchanged; BOUNDED is refused with
     bootstrap_required even with a huge max_root_lag, STRONG is refused with
     bootstrap_required, BEST_EFFORT is served labelled DEGRADED / BOOTSTRAP_REQUIRED
     (DESIGN 4.3, 4.4), while the other coordinator keeps serving BOUNDED max_root_lag=0.
     After resume the first catch-up action is BOOTSTRAP (a checkpoint install from the paused
     token, no snapshot reload), the state is FRESH again, the served token equals metaroot's
     current token, and the served token observed in every Diagnostics reply never moved
     backward. Run over 1 and 3 metaroot peers.
  2. Tso never repeats across a kill -9 of the tso grant holder: 3,000 Tso calls (1-3 values
     each) retried against whichever coordinator holds the duty; per coordinator the values
     strictly increase in issue order, no value is ever issued twice, every value of the
     successor exceeds every value issued before the failover, the successor serves at a
     higher era, and metaroot's rooted tso fence covers every value issued.

Every process is stopped in a `finally` (stop_all, then SIGKILL of any pid still alive).
Conditions are polled with deadlines.
"""

from __future__ import annotations

import time

import pytest
import trio
from test_coordinator_processes import Calls, _diag_if, _other, _teardown, duty_call, poll
from test_coordinator_processes import _start_cluster as _start_processes_cluster

from nokvpy.client.admin import identity_for, wait_cluster_ready
from nokvpy.client.meta import MetaClient
from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import PauseCatchUpRequest, TsoRequest
from nokvpy.protocol.enums import CatchUpState, EventKind, ServingClass, SyncHealth
from nokvpy.protocol.metaroot_rpc import AppendRequest, MetarootStatusRequest
from nokvpy.protocol.records import RecoveryRecord, RootEvent
from nokvpy.rpc import RpcClient

pytestmark = pytest.mark.cluster

RETAINED_TAIL = "8"  # metaroot compacts once more than 8 + 16 events are retained
HUGE_LAG = 1_000_000


def _start_cluster(root, metaroots: int):
    return _start_processes_cluster(root, metaroots, ("--retained-tail", RETAINED_TAIL))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lc, spec = _start_cluster(tmp_path_factory.mktemp("coordboot") / "c", 1)
    try:
        wait_cluster_ready(spec, 45)
        yield lc, spec
    finally:
        _teardown(lc, spec)


async def _leader_status(c: Calls, spec):
    """The metaroot leader's status (raises while there is none)."""
    seen = []
    for p in spec.of_kind("metaroot"):
        try:
            st = await c.call(p.name, MetarootStatusRequest(), 2.0)
        except Exception as exc:  # noqa: BLE001 - a peer starting or unreachable
            seen.append(repr(exc))
            continue
        if st.is_leader:
            return st
        seen.append((p.name, st.leader_id))
    raise AssertionError(f"no metaroot leader: {seen}")


class Served:
    """Every served token a coordinator reported, in observation order."""

    def __init__(self, c: Calls, name: str):
        self.c, self.name, self.seen = c, name, []

    async def diag(self) -> dict:
        d = await self.c.diag(self.name)
        self.seen.append((d["served_token"]["index"], d["catch_up_state"]))
        return d

    async def when(self, cond) -> dict:
        d = await self.diag()
        if cond(d):
            return d
        raise AssertionError({k: d.get(k) for k in (
            "catch_up_state", "degraded_mode", "served_token", "current_token", "root_lag",
            "paused", "heard_within_window")})

    def assert_monotone(self) -> None:
        idx = [i for i, _ in self.seen]
        back = [(a, b) for a, b in zip(idx, idx[1:], strict=False) if b < a]
        assert not back, (back, self.seen)


async def _check_bootstrap_cycle(c: Calls, spec) -> None:
    # appends to metaroot come from coordinators only: the test appends as one
    meta = MetaClient(RpcClient(identity_for(spec, "coordinator")), spec.metaroot_addrs())
    name = await c.holder("region_lookup")  # STRONG then meets the catch-up state gate
    other = _other(spec, name)
    served = Served(c, name)
    await poll(lambda: served.when(lambda d: d["catch_up_state"] == "FRESH"), 15,
               f"{name} FRESH before the pause")
    paused = (await c.call(name, PauseCatchUpRequest(True))).body
    try:
        assert paused["paused"] is True
        await served.diag()
        at = paused["served_token"]["index"]
        # append until metaroot's retained tail starts after the paused served token
        appended = 0
        while True:
            st = await _leader_status(c, spec)
            if st.retained_from > at + 1:
                break
            assert appended < 400, (appended, at, st.retained_from)
            await meta.call(AppendRequest([RootEvent(
                EventKind.RECOVERY_RECORDED, RecoveryRecord(f"boot-{at}-{appended + i}",
                                                            "noted", "test"))
                for i in range(8)]))
            appended += 8
        d = await poll(lambda: served.when(
            lambda x: x["catch_up_state"] == "BOOTSTRAP_REQUIRED"), 20,
            f"{name} BOOTSTRAP_REQUIRED while paused behind the retained tail")
        assert d["paused"] is True and d["degraded_mode"] == "VIEW_ONLY", d["degraded_mode"]
        assert d["served_token"]["index"] == at, (d["served_token"], at)
        assert d["root_lag"] >= appended, (d["root_lag"], appended)

        # BOUNDED: refused in BOOTSTRAP_REQUIRED whatever the lag bound (DESIGN 4.4)
        for bound in (None, HUGE_LAG):
            err = await c.rejected(name, Freshness.BOUNDED, bound)
            assert err.kind == "rejected" and err.reason == "bootstrap_required", (bound, err)
            assert err.details["try_another_coordinator"] is True
            w = err.details["witness"]
            assert w.catch_up_state == CatchUpState.BOOTSTRAP_REQUIRED
            assert w.sync_health == SyncHealth.BOOTSTRAP_REQUIRED
            assert w.serving_class == ServingClass.DEGRADED
            assert w.served_root_token.index == at
        # STRONG: the grant holder refuses it at the same gate
        assert "region_lookup" in (await served.diag())["grants_held"]
        err = await c.rejected(name, Freshness.STRONG)
        assert err.reason == "bootstrap_required", err
        # BEST_EFFORT: served from the old catalog, labelled as such
        best = await c.route(name, Freshness.BEST_EFFORT)
        assert best.descriptor is not None
        assert best.witness.serving_class == ServingClass.DEGRADED
        assert best.witness.sync_health == SyncHealth.BOOTSTRAP_REQUIRED
        assert best.witness.served_root_token.index == at
        # the other coordinator is unaffected
        ok = await poll(lambda: c.route(other, Freshness.BOUNDED, 0), 10,
                        f"{other} BOUNDED max_root_lag=0")
        assert ok.witness.sync_health == SyncHealth.HEALTHY
        assert (await served.diag())["served_token"]["index"] == at
    finally:
        await c.call(name, PauseCatchUpRequest(False))

    fresh = await poll(lambda: served.when(
        lambda x: x["catch_up_state"] == "FRESH" and x["root_lag"] == 0 and not x["paused"]),
        20, f"{name} FRESH after resume")
    steps = fresh["catch_up_steps"]
    # the repair of the paused view: its first catalog-changing step is a checkpoint install
    # from the paused token (not an incremental ADVANCE, not a snapshot RELOAD)
    repairs = [s for s in steps if s["action"] != "NONE" and s["before"]["index"] == at
               and s["after"]["index"] > at]
    assert repairs and repairs[0]["action"] == "BOOTSTRAP", steps
    assert repairs[0]["after"]["index"] >= st.retained_from - 1, (repairs[0], st.retained_from)
    assert all(s["after"]["index"] >= s["before"]["index"] for s in steps), steps
    assert fresh["counters"]["root.checkpoint_installs"] >= 1

    # the materialized catalog token equals metaroot's current token (polled: grant renewals
    # keep appending events, so compare within one quiet moment)
    async def caught_up():
        before = (await _leader_status(c, spec)).committed_token
        d = await served.diag()
        after = (await _leader_status(c, spec)).committed_token
        tok = d["served_token"]
        if before == after and (tok["term"], tok["index"]) == (after.term, after.index) \
                and d["catch_up_state"] == "FRESH":
            return d
        raise AssertionError((before, tok, after, d["catch_up_state"]))
    await poll(caught_up, 20, f"{name} served token == metaroot's current token")
    served.assert_monotone()
    ok = await c.route(name, Freshness.BOUNDED, 0)
    assert ok.witness.root_lag == 0 and ok.witness.served_root_token.index > at
    strong = await poll(lambda: c.route(name, Freshness.STRONG), 10, "STRONG after recovery")
    assert strong.witness.serving_class == ServingClass.AUTHORITATIVE


async def test_behind_retained_tail_bootstrap_required_then_fresh_via_bootstrap(cluster):
    lc, spec = cluster
    c = Calls(spec)
    try:
        await _check_bootstrap_cycle(c, spec)
    finally:
        await c.rpc.aclose()


async def test_three_peer_metaroot_bootstrap_required_then_fresh(tmp_path):
    lc, spec = _start_cluster(tmp_path / "c3", 3)
    c = Calls(spec)
    try:
        await trio.to_thread.run_sync(wait_cluster_ready, spec, 45)
        await _check_bootstrap_cycle(c, spec)
    finally:
        await c.rpc.aclose()
        _teardown(lc, spec)


async def _tso(c: Calls, names: list[str], count: int, deadline: float):
    return await duty_call(c, names, TsoRequest(count), deadline)


async def test_tso_never_repeats_across_holder_failover(cluster):
    """Last in this module: it kills a coordinator of the shared cluster."""
    lc, spec = cluster
    c = Calls(spec)
    try:
        holder = await c.holder("tso")  # the victim
        standby = _other(spec, holder)
        era0 = (await c.diag(holder))["grants"]["duties"]["tso"]["era"]
        names = [holder, standby]
        issued: list[tuple[str, int, int, int]] = []  # (who, era, first, last) in issue order
        deadline = time.monotonic() + 40
        for i in range(3000):
            if i == 1500:
                lc.kill(holder)  # kill -9 mid-stream
                killed_after = len(issued)
            first, count, era, who = await _tso(c, names, 1 + i % 3, deadline)
            assert count == 1 + i % 3
            issued.append((who, era, first, first + count - 1))
        before, after = issued[:killed_after], issued[killed_after:]
        assert {w for w, *_ in before} == {holder}, {w for w, *_ in before}
        assert {w for w, *_ in after} == {standby}, {w for w, *_ in after}

        # strictly increasing in issue order, per coordinator
        for who in names:
            mine = [(f, la) for w, _, f, la in issued if w == who]
            bad = [(a, b) for a, b in zip(mine, mine[1:], strict=False) if b[0] <= a[1]]
            assert not bad, (who, bad[:10])
        # never repeated overall
        values = [v for _, _, f, la in issued for v in range(f, la + 1)]
        assert len(values) == len(set(values)) == sum(1 + i % 3 for i in range(3000))
        # the successor's values exceed everything issued before the failover, at a higher era
        assert min(f for *_, f, _ in after) > max(la for *_, la in before)
        assert min(e for _, e, _, _ in after) > max(e for _, e, _, _ in before) >= era0

        d = await poll(lambda: _diag_if(c, standby, lambda x: "tso" in x["grants_held"]),
                       15, f"{standby} holding tso")
        assert d["grants"]["duties"]["tso"]["era"] > era0
        st = await poll(lambda: _leader_status(c, spec), 10, "metaroot leader")
        assert st.tso_fence >= max(values), (st.tso_fence, max(values))
    finally:
        await c.rpc.aclose()
