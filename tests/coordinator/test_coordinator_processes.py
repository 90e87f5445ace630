"""The coordinator as real processes (LocalCluster: 1 metaroot, 2 coordinators, 1 store).

Covers, against `nokv ... serve` processes on loopback:
  1. PauseCatchUp: a paused coordinator goes LAGGING as root events (grant renewals) pile up,
     refuses BOUNDED max_root_lag=0 with root_lag_exceeded, and comes back FRESH through an
     ADVANCE catch-up step after resume;
  2. bad input: an unknown freshness, a negative max_root_lag and a publish fenced by a stale
     expected_cluster_epoch get clear errors, change nothing and the coordinator keeps serving;
  3. STRONG only from the region_lookup grant holder (standby: not_grant_holder); kill -9 of the
     holder hands every duty to the other coordinator at a higher era, and AllocId values never
     repeat across the failover;
  4. metaroot kill -9: BEST_EFFORT still served, labelled DEGRADED / ROOT_UNAVAILABLE; BOUNDED
     and STRONG refused; everything recovers once metaroot is restarted.
A second module-level test repeats the lag / STRONG checks over a 3-peer metaroot group.

Every process is stopped in a `finally` (stop_all, then SIGKILL of any pid still alive).
Conditions are polled with deadlines.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import trio

from nokvpy.client.admin import identity_for, wait_cluster_ready
from nokvpy.cluster.local import LocalCluster, pid_alive
from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import (
    AllocIdRequest,
    DiagnosticsRequest,
    GetRegionByKeyRequest,
    PauseCatchUpRequest,
    PublishRootEventRequest,
)
from nokvpy.protocol.enums import EventKind, ServingClass, SyncHealth
from nokvpy.protocol.records import PeerMeta, RangeSplit, RegionDescriptor, RegionEpoch, RootEvent
from nokvpy.rpc import RemoteError, RpcClient

pytestmark = pytest.mark.cluster

GRANT_TTL = "2"


def _start_cluster(root, metaroots: int, metaroot_args: tuple[str, ...] = ()):
    lc = LocalCluster(root)
    spec = lc.create(metaroots=metaroots, coordinators=2, stores=1, replication=1)
    if metaroot_args:
        for p in spec.of_kind("metaroot"):
            p.extra_args = list(metaroot_args)
    for p in spec.of_kind("coordinator"):
        p.extra_args = ["--grant-ttl", GRANT_TTL]
    lc.save(spec)
    for p in spec.processes:
        lc.start(spec, p)
    return lc, spec


def _teardown(lc: LocalCluster, spec) -> None:
    pids = {p.name: lc.pid(p.name) for p in spec.processes}
    try:
        lc.stop_all(spec, grace=3.0)
    finally:
        for pid in pids.values():
            if pid is not None and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lc, spec = _start_cluster(tmp_path_factory.mktemp("coordproc") / "c", 1)
    try:
        wait_cluster_ready(spec, 45)
        yield lc, spec
    finally:
        _teardown(lc, spec)


async def poll(pred, timeout: float, what: str):
    """Await `pred()` (async) until truthy; the last value or exception is in the failure."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = await pred()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - still converging
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout}s) waiting for {what}: last={last!r}")
        await trio.sleep(0.05)


class Calls:
    def __init__(self, spec):
        self.spec = spec
        self.rpc = RpcClient(identity_for(spec))
        self.addr = {p.name: p.address for p in spec.processes}

    async def call(self, name: str, req, timeout: float = 3.0):
        return await self.rpc.call(self.addr[name], req, timeout=timeout)

    async def diag(self, name: str) -> dict:
        return (await self.call(name, DiagnosticsRequest())).body

    async def route(self, name: str, freshness, max_root_lag=None, key=b"k", timeout=3.0):
        return await self.call(name, GetRegionByKeyRequest(key, freshness, None, max_root_lag),
                               timeout)

    async def rejected(self, name: str, freshness, max_root_lag=None) -> RemoteError:
        with pytest.raises(RemoteError) as err:
            await self.route(name, freshness, max_root_lag)
        return err.value

    async def holder(self, duty: str = "region_lookup") -> str:
        """The coordinator holding `duty` (waits for one). Duties are granted one by one, so
        two coordinators may split them (e.g. alloc_id on one, tso + region_lookup on the
        other)."""
        async def find():
            held = {}
            for p in self.spec.of_kind("coordinator"):
                try:
                    d = await self.diag(p.name)
                except Exception as exc:  # noqa: BLE001 - dead or starting
                    held[p.name] = repr(exc)
                    continue
                if duty in d["grants_held"]:
                    return p.name
                held[p.name] = (d["grants_held"], d["catch_up_state"], {
                    k: (v["holder"], v["era"], v["last_result"], v["last_error"])
                    for k, v in d["grants"]["duties"].items()})
            raise AssertionError(held)
        return await poll(find, 20, f"a coordinator holding {duty}")


def _other(spec, name: str) -> str:
    return next(p.name for p in spec.of_kind("coordinator") if p.name != name)


async def _check_pause_lag_resume(c: Calls, name: str) -> None:
    before = await c.diag(name)
    assert before["catch_up_state"] == "FRESH", before["catch_up_state"]
    await c.call(name, PauseCatchUpRequest(True))
    try:
        # grant renewals append root events every ~second: lag grows on its own
        lagging = await poll(lambda: _diag_if(c, name, lambda d: d["root_lag"] > 0
                                              and d["catch_up_state"] == "LAGGING"),
                             15, f"{name} LAGGING while paused")
        assert lagging["paused"] is True
        err = await c.rejected(name, Freshness.BOUNDED, 0)
        assert err.kind == "rejected" and err.reason == "root_lag_exceeded", err
        witness = err.details["witness"]
        assert witness.root_lag > 0 and witness.sync_health == SyncHealth.LAGGING
        # BEST_EFFORT is still served, labelled stale
        best = await c.route(name, Freshness.BEST_EFFORT)
        assert best.descriptor is not None
        assert best.witness.serving_class != ServingClass.AUTHORITATIVE
    finally:
        await c.call(name, PauseCatchUpRequest(False))
    fresh = await poll(lambda: _diag_if(c, name, lambda d: d["catch_up_state"] == "FRESH"
                                        and d["root_lag"] == 0 and not d["paused"]),
                       15, f"{name} FRESH after resume")
    lag_at_pause = lagging["root_lag"]
    advances = [s for s in fresh["catch_up_steps"] if s["action"] == "ADVANCE"
                and s["after"]["index"] > s["before"]["index"]
                and s["before"]["index"] <= lagging["served_token"]["index"]]
    assert advances, (lag_at_pause, fresh["catch_up_steps"])
    ok = await c.route(name, Freshness.BOUNDED, 0)
    assert ok.descriptor is not None and ok.witness.root_lag == 0


async def _diag_if(c: Calls, name: str, cond):
    d = await c.diag(name)
    if cond(d):
        return d
    raise AssertionError({k: d.get(k) for k in (
        "catch_up_state", "degraded_mode", "degraded_reasons", "root_lag", "paused",
        "heard_within_window", "last_heard_ago_ms", "grants_held")})


async def _check_strong_only_on_holder(c: Calls, spec) -> str:
    holder = await c.holder()
    standby = _other(spec, holder)
    strong = await poll(lambda: c.route(holder, Freshness.STRONG), 10, "STRONG on the holder")
    assert strong.witness.serving_class == ServingClass.AUTHORITATIVE
    assert strong.witness.served_by_leader
    err = await c.rejected(standby, Freshness.STRONG)
    assert err.reason == "not_grant_holder", err
    assert err.details["try_another_coordinator"]
    return holder


async def test_paused_coordinator_lags_rejects_bounded_and_catches_up(cluster):
    lc, spec = cluster
    c = Calls(spec)
    try:
        for p in spec.of_kind("coordinator"):  # holder and standby alike
            await _check_pause_lag_resume(c, p.name)
    finally:
        await c.rpc.aclose()


async def test_bad_input_gets_clear_errors_and_changes_nothing(cluster):
    lc, spec = cluster
    c = Calls(spec)
    try:
        holder = await c.holder()
        # unknown freshness: the server's codec refuses the request body; the caller gets a
        # clear invalid_argument error for that request, and the coordinator keeps going
        with pytest.raises(RemoteError) as err:
            await c.call(holder, GetRegionByKeyRequest(b"k", 99))
        assert (err.value.kind, err.value.reason) == ("invalid_argument", "decode_error")
        assert "bad enum value 99 for Freshness" in err.value.message
        ok = await c.route(holder, Freshness.BOUNDED)
        assert ok.descriptor is not None

        # negative max_root_lag: invalid_request, for every class
        for f in (Freshness.BOUNDED, Freshness.BEST_EFFORT):
            e = await c.rejected(holder, f, -1)
            assert e.reason == "invalid_request" and "max_root_lag" in e.message, e

        # a publish fenced by a stale cluster epoch is refused and nothing changes
        d = (await c.route(holder, Freshness.STRONG, key=b"")).descriptor
        before = await c.diag(holder)
        epoch = before["subscription"]["cluster_epoch"]
        assert epoch >= 1
        names = [p.name for p in spec.of_kind("coordinator")]
        rid = (await _alloc(c, names, 1 + len(d.peers), time.monotonic() + 10))[0]
        ver = RegionEpoch(d.epoch.version + 1, d.epoch.conf_ver)
        left = RegionDescriptor(d.region_id, d.start_key, b"m", ver, d.peers)
        right = RegionDescriptor(rid, b"m", d.end_key, ver,
                                 tuple(PeerMeta(p.store_id, rid + 1 + i)
                                       for i, p in enumerate(d.peers)))
        plan = RootEvent(EventKind.SPLIT_PLANNED, RangeSplit(d.region_id, b"m", left, right, d))
        with pytest.raises(RemoteError) as perr:
            await c.call(holder, PublishRootEventRequest(plan, expected_cluster_epoch=epoch - 1),
                         5.0)
        assert perr.value.reason == "cluster_epoch_mismatch", perr.value
        assert str(epoch) in perr.value.message or perr.value.details.get("cluster_epoch") == epoch
        after = await c.diag(holder)
        assert after["subscription"]["cluster_epoch"] == epoch
        assert after["region_count"] == before["region_count"] == 1
        same = await c.route(holder, Freshness.STRONG, key=b"z")
        assert same.descriptor.region_id == d.region_id  # no split planned or applied
    finally:
        await c.rpc.aclose()


async def duty_call(c: Calls, names: list[str], request, deadline: float):
    """One allocation (AllocId / Tso) tried on the coordinators in turn (not_leader or an
    unreachable coordinator moves on); returns (first, count, era, name)."""
    last = None
    while time.monotonic() < deadline:
        for name in names:
            try:
                r = await c.call(name, request, 2.0)
                return r.first, r.count, r.era, name
            except RemoteError as exc:
                last = exc
                if exc.kind != "not_leader":
                    raise
            except Exception as exc:  # noqa: BLE001 - killed / unreachable coordinator
                last = exc
        await trio.sleep(0.02)
    raise AssertionError(f"{type(request).__name__} not served before the deadline: {last!r}")


async def _alloc(c: Calls, names: list[str], count: int, deadline: float):
    return await duty_call(c, names, AllocIdRequest(count), deadline)


async def test_strong_only_on_holder_failover_raises_era_and_ids_never_repeat(cluster):
    lc, spec = cluster
    c = Calls(spec)
    try:
        await _check_strong_only_on_holder(c, spec)
        holder = await c.holder("alloc_id")  # the victim: the alloc_id holder
        standby = _other(spec, holder)
        d0 = (await c.diag(holder))["grants"]["duties"]
        eras0 = {k: v["era"] for k, v in d0.items()}
        victim_held = {k for k, v in d0.items() if v["held_by_self"]}
        assert "alloc_id" in victim_held
        names = [holder, standby]
        seen: set[int] = set()
        dupes: list[int] = []
        served_by: dict[str, int] = {}
        eras: set[int] = set()
        deadline = time.monotonic() + 30
        allocations = 0
        for i in range(3000):
            if i == 1500:
                lc.kill(holder)  # kill -9 mid-stream
            first, count, era, who = await _alloc(c, names, 1 + i % 3, deadline)
            allocations += 1
            served_by[who] = served_by.get(who, 0) + 1
            eras.add(era)
            for v in range(first, first + count):
                if v in seen:
                    dupes.append(v)
                seen.add(v)
        assert not dupes, dupes[:20]
        assert served_by.get(standby, 0) > 0 and served_by.get(holder, 0) > 0, served_by
        assert max(eras) > min(eras), eras

        d = await poll(lambda: _diag_if(c, standby, lambda x: len(x["grants_held"]) == 3),
                       15, f"{standby} holding every duty")
        for duty, g in d["grants"]["duties"].items():
            assert g["held_by_self"], (duty, g)
            if duty in victim_held:  # taken over: a strictly higher era
                assert g["era"] > eras0[duty], (duty, g, eras0)
        strong = await poll(lambda: c.route(standby, Freshness.STRONG), 10, "STRONG on new holder")
        assert strong.witness.served_by_leader

        # the killed coordinator comes back as a standby
        lc.start(spec, spec.get(holder))
        await poll(lambda: _diag_if(c, holder, lambda x: x["catch_up_state"] == "FRESH"),
                   20, f"{holder} FRESH after restart")
        err = await c.rejected(holder, Freshness.STRONG)
        assert err.reason == "not_grant_holder", err
    finally:
        await c.rpc.aclose()


async def test_metaroot_down_best_effort_degraded_then_recovers(cluster):
    lc, spec = cluster
    c = Calls(spec)
    try:
        coords = [p.name for p in spec.of_kind("coordinator")]
        await c.holder()
        lc.kill("metaroot-1")
        try:
            for name in coords:
                # after the staleness window (3 s): ROOT_UNAVAILABLE, or VIEW_ONLY once the
                # grants have expired too (nothing can be renewed without root)
                d = await poll(lambda n=name: _diag_if(
                    c, n, lambda x: not x["heard_within_window"]
                    and x["degraded_mode"] in ("ROOT_UNAVAILABLE", "VIEW_ONLY")), 15,
                    f"{name} root unavailable")
                assert not d["root_reachable"]
                best = await c.route(name, Freshness.BEST_EFFORT)
                assert best.descriptor is not None
                assert best.witness.serving_class == ServingClass.DEGRADED
                assert best.witness.sync_health == SyncHealth.ROOT_UNAVAILABLE
                bounded = await c.rejected(name, Freshness.BOUNDED)
                assert bounded.reason == "root_unavailable", bounded
                assert bounded.details["witness"].sync_health == SyncHealth.ROOT_UNAVAILABLE
                strong = await c.rejected(name, Freshness.STRONG)
                assert strong.reason in ("root_unavailable", "not_grant_holder",
                                         "strong_not_confirmed"), strong
        finally:
            lc.start(spec, spec.get("metaroot-1"))
        holder = await c.holder()
        for name in coords:
            ok = await poll(lambda n=name: c.route(n, Freshness.BOUNDED, 0), 20,
                            f"{name} BOUNDED after metaroot restart")
            assert ok.witness.sync_health == SyncHealth.HEALTHY
        # (a rooted event landing between the two reads leaves it BOUNDED_STALE for a moment)
        async def best_authoritative():
            best = await c.route(holder, Freshness.BEST_EFFORT)
            return best if best.witness.serving_class == ServingClass.AUTHORITATIVE else None

        await poll(best_authoritative, 10, "BEST_EFFORT AUTHORITATIVE after restart")

        async def strong_from_the_holder():
            # the grant may move to another coordinator after the restart (the one read above
            # then answers not_grant_holder): ask whichever holds it now
            return await c.route(await c.holder(), Freshness.STRONG)

        strong = await poll(strong_from_the_holder, 20, "STRONG after restart")
        assert strong.witness.serving_class == ServingClass.AUTHORITATIVE
    finally:
        await c.rpc.aclose()


async def test_three_peer_metaroot_lag_and_strong(tmp_path):
    lc, spec = _start_cluster(tmp_path / "c3", 3)
    c = Calls(spec)
    try:
        await trio.to_thread.run_sync(wait_cluster_ready, spec, 45)
        holder = await _check_strong_only_on_holder(c, spec)
        await _check_pause_lag_resume(c, _other(spec, holder))
    finally:
        await c.rpc.aclose()
        _teardown(lc, spec)
