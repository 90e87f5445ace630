"""metaroot over the wire, 3 real peers: bad input is refused with a reason and changes nothing;
grant primacy and era silence hold end to end; ConfirmToken is linearizable (DESIGN 4.1, 4.4,
6). One cluster serves every test of this module (each test uses its own store ids, request
ids and duty, so the order does not matter)."""

from __future__ import annotations

import itertools

import pytest
import trio
from metaroot_procs import MetarootProcs, joined

from nokvpy.protocol import (
    AllocatorFence,
    AllocatorKind,
    Duty,
    EventKind,
    RegionRemoval,
    RootEvent,
    StoreMembership,
)
from nokvpy.protocol.grants import DutyGrant, GrantCommand, GrantCommandKind, GrantStatus
from nokvpy.protocol.metaroot_rpc import (
    AppendRequest,
    ConfirmTokenRequest,
    FenceAllocatorRequest,
    GrantRequest,
    MetarootStatus,
    SnapshotRequest,
)
from nokvpy.rpc import RemoteError

pytestmark = pytest.mark.cluster

_ids = itertools.count(5000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs = MetarootProcs(tmp_path_factory.mktemp("metaroot-wire"), 3)
    try:
        procs.start_all()
        yield procs
    finally:
        procs.kill_all()


async def leader_status(cluster: MetarootProcs, rpc) -> MetarootStatus:
    leader = await cluster.wait_leader(rpc)
    st = await cluster.status(rpc, leader, timeout=2.0)
    assert st is not None
    return st


async def refused(meta, request) -> RemoteError:
    try:
        reply = await meta.call(request)
    except RemoteError as exc:
        return exc
    raise AssertionError(f"{request!r} was accepted: {reply!r}")


async def test_bad_events_are_refused_with_a_reason_and_change_nothing(cluster):
    # init
    rpc = cluster.rpc(901)
    meta = cluster.meta(rpc)
    sid = next(_ids)
    await meta.call(AppendRequest([RootEvent(EventKind.ID_ALLOCATOR_FENCED,
                                             AllocatorFence(AllocatorKind.ID, 1000))]))
    before = (await meta.call(SnapshotRequest(), leader=True)).checkpoint
    # act / check: each refusal names its reason
    cases = [
        (RootEvent(EventKind.STORE_JOINED, RegionRemoval(7), "bad-payload"), "payload_type"),
        (RootEvent(EventKind.STORE_JOINED, {"store_id": sid}, "dict-payload"), "payload_type"),
        (RootEvent(EventKind.STORE_JOINED, StoreMembership(0, "a:1"), "zero-store"),
         "invalid_store"),
        (RootEvent(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 500),
                   "fence-down"), "fence_regression"),
    ]
    for event, reason in cases:
        exc = await refused(meta, AppendRequest([event]))
        assert exc.reason == reason, (event, exc)
        assert exc.kind in ("invalid_argument", "rejected"), exc
        assert exc.details.get("retry_class"), exc
    # a batch with one bad event is refused whole
    exc = await refused(meta, AppendRequest([joined(sid, f"ok-{sid}"),
                                             RootEvent(EventKind.ID_ALLOCATOR_FENCED,
                                                       AllocatorFence(AllocatorKind.ID, 1))]))
    assert exc.reason == "fence_regression"
    # empty append, malformed fence requests
    assert (await refused(meta, AppendRequest([]))).reason == "empty"
    assert (await refused(meta, FenceAllocatorRequest(AllocatorKind.ID, -1))).reason == \
        "invalid_fence"
    # An unknown enum value or a field of the wrong type does not even decode: the rpc server
    # answers that request with invalid_argument/decode_error naming the field (the
    # connection goes on); nothing is proposed.
    leader = cluster.addrs[(await leader_status(cluster, rpc)).node_id]
    for req, field in (
            (AppendRequest([RootEvent(999, StoreMembership(sid, "a:1"))]), "RootEvent.kind"),
            (AppendRequest([RootEvent(EventKind.STORE_JOINED, StoreMembership(None, "a:1"))]),
             "StoreMembership"),
            (FenceAllocatorRequest(AllocatorKind.ID, "lots"), "FenceAllocatorRequest"),
            (FenceAllocatorRequest(77, 10), "FenceAllocatorRequest")):
        with pytest.raises(RemoteError) as err:
            await rpc.call(leader, req, timeout=2.0)
        assert (err.value.kind, err.value.reason) == ("invalid_argument", "decode_error")
        assert field in err.value.message, (field, err.value.message)
    # nothing changed: same token, same checkpoint
    after = (await meta.call(SnapshotRequest(), leader=True)).checkpoint
    assert after == before
    # the fence request path does not lower it either (it answers the current fence)
    reply = await meta.call(FenceAllocatorRequest(AllocatorKind.ID, 10))
    assert reply.fence == 1000
    await rpc.aclose()


async def test_request_id_reuse_is_refused_and_does_not_poison_the_log(cluster):
    rpc = cluster.rpc(902)
    meta = cluster.meta(rpc)
    sid = next(_ids)
    first = await meta.call(AppendRequest([joined(sid, f"reuse-{sid}")]))
    # the same id with another event: refused at apply on every peer, no crash
    exc = await refused(meta, AppendRequest([joined(sid + 1, f"reuse-{sid}")]))
    assert exc.reason == "request_id_mismatch"
    # a batch mixing an applied request with a new one is refused whole
    exc = await refused(meta, AppendRequest([joined(sid, f"reuse-{sid}"),
                                             joined(sid + 2, f"new-{sid}")]))
    assert exc.reason == "partial_duplicate"
    # the identical retry is answered with the original token
    again = await meta.call(AppendRequest([joined(sid, f"reuse-{sid}")]))
    assert again.duplicate and again.first_token == first.first_token
    # every peer is still alive and agrees
    st = await leader_status(cluster, rpc)
    for node_id in cluster.addrs:
        peer = await cluster.wait_token(rpc, node_id, st.applied_token.index)
        assert peer.applied_token.index >= st.applied_token.index
    await rpc.aclose()


def _issue(holder: str, now: int, duty: Duty, bound: int, ttl: int = 600_000) -> GrantRequest:
    return GrantRequest(GrantCommand(GrantCommandKind.ISSUE, holder, now_ms=now,
                                     expires_at_ms=now + ttl,
                                     duties=(DutyGrant(duty, bound),)))


async def test_grant_primacy_and_retired_era_silence(cluster):
    rpc = cluster.rpc(903)
    meta = cluster.meta(rpc)
    now = 1_000
    # a holds tso
    ga = await meta.call(_issue("coord-a", now, Duty.TSO, 1_000))
    assert ga.result.status == GrantStatus.GRANTED
    grant_a = ga.result.grant
    # b's ISSUE while a's grant is live: HELD, primacy
    token_before = (await leader_status(cluster, rpc)).applied_token
    gb = await meta.call(_issue("coord-b", now + 10, Duty.TSO, 2_000))
    assert gb.result.status == GrantStatus.HELD and gb.result.violation == "primacy"
    assert gb.result.grant.grant_id == grant_a.grant_id
    assert (await leader_status(cluster, rpc)).applied_token == token_before
    # a writes under its era
    fence = RootEvent(EventKind.TSO_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.TSO, 1_100))
    await meta.call(AppendRequest([fence], grant_era=grant_a.era, duty=Duty.TSO))
    # a seals; b takes over with a higher era covering a's usage
    sealed = await meta.call(GrantRequest(GrantCommand(
        GrantCommandKind.SEAL, "coord-a", grant_id=grant_a.grant_id, now_ms=now + 20,
        exact_usages=(DutyGrant(Duty.TSO, 1_000),))))
    assert sealed.result.status == GrantStatus.RETIRED
    gb = await meta.call(_issue("coord-b", now + 30, Duty.TSO, 5_000))
    assert gb.result.status == GrantStatus.GRANTED and gb.result.grant.era > grant_a.era
    # a write fenced by the retired era is refused (silence), nothing changes
    token_before = (await leader_status(cluster, rpc)).applied_token
    late = RootEvent(EventKind.TSO_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.TSO, 9_000))
    exc = await refused(meta, AppendRequest([late], grant_era=grant_a.era, duty=Duty.TSO))
    assert exc.reason == "grant_era_retired" and exc.details.get("violation") == "silence"
    exc = await refused(meta, FenceAllocatorRequest(AllocatorKind.TSO, 9_000, grant_era=grant_a.era))
    assert exc.reason == "grant_era_retired"
    st = await leader_status(cluster, rpc)
    assert st.applied_token == token_before and st.tso_fence < 9_000
    # the live era writes
    ok = await meta.call(FenceAllocatorRequest(AllocatorKind.TSO, 9_000,
                                               grant_era=gb.result.grant.era))
    assert ok.fence == 9_000
    await rpc.aclose()


async def test_confirm_token_is_linearizable_and_followers_redirect(cluster):
    rpc = cluster.rpc(904)
    meta = cluster.meta(rpc)
    for _ in range(5):
        sid = next(_ids)
        ack = await meta.call(AppendRequest([joined(sid, f"confirm-{sid}")]))
        confirmed = await meta.call(ConfirmTokenRequest())
        assert confirmed.token.index >= ack.last_token.index
    st = await leader_status(cluster, rpc)
    follower = next(n for n in cluster.addrs if n != st.node_id)
    with pytest.raises(RemoteError) as info:
        await rpc.call(cluster.addrs[follower], ConfirmTokenRequest(), timeout=2.0)
    assert info.value.kind == "not_leader"
    assert info.value.details["leader_id"] == st.node_id
    assert info.value.details["leader_addr"] == cluster.addrs[st.node_id]
    # concurrent confirmations each cover every append acknowledged before they started
    acked: list[int] = []

    async def writer(k: int) -> None:
        for i in range(10):
            sid = next(_ids)
            r = await meta.call(AppendRequest([joined(sid, f"cw-{k}-{i}-{sid}")]))
            acked.append(r.last_token.index)

    async def confirmer() -> None:
        for _ in range(20):
            floor = max(acked, default=0)
            r = await meta.call(ConfirmTokenRequest())
            assert r.token.index >= floor
            await trio.sleep(0)

    async with trio.open_nursery() as n:
        for k in range(3):
            n.start_soon(writer, k)
        n.start_soon(confirmer)
    await rpc.aclose()


async def test_grants_are_judged_by_root_clock_not_the_callers(cluster):
    """A caller whose clock is an hour ahead cannot retire a live holder: root stamps every
    grant command with its own time. An ISSUE keeps the lifetime it asked for, at most
    MAX_GRANT_TTL_MS, counted from root time."""
    import time

    from metaroot.service import MAX_GRANT_TTL_MS

    rpc = cluster.rpc(905)
    meta = cluster.meta(rpc)
    wall = int(time.time() * 1000)
    ga = await meta.call(_issue("coord-c", wall, Duty.ALLOC_ID, 1_000, ttl=10 * 3_600_000))
    assert ga.result.status == GrantStatus.GRANTED
    g = ga.result.grant
    assert g.expires_at_ms - g.issued_at_ms == MAX_GRANT_TTL_MS  # 10 h asked, 60 s given
    assert abs(g.issued_at_ms - wall) < 30_000  # root time, not the caller's
    ahead = wall + 3_600_000
    gb = await meta.call(_issue("coord-d", ahead, Duty.ALLOC_ID, 2_000, ttl=5_000))
    assert gb.result.status == GrantStatus.HELD, gb.result
    assert gb.result.grant.grant_id == g.grant_id
    retire = await meta.call(GrantRequest(GrantCommand(
        GrantCommandKind.RETIRE_EXPIRED, "coord-d", grant_id=g.grant_id, now_ms=ahead)))
    assert retire.result.status != GrantStatus.RETIRED, retire.result
    await rpc.aclose()
