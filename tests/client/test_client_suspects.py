"""The client leaves peers that hang: the suspect list and target choice (pure), then the
async client and the metaroot client against a scripted in-memory network under
MockClock(autojump_threshold=0) (pytest-trio's `autojump_clock`): a hung peer costs one attempt, and the next goes elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio

from nokvpy.client import Client, DeadlineExceededError, OutcomeUnknownError
from nokvpy.client.failover import Suspects, next_voter, pick_store
from nokvpy.client.meta import MetaClient
from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.coordinator_rpc import (
    GetRegionByKeyRequest,
    PublishRootEventRequest,
    RouteReply,
)
from nokvpy.protocol.enums import AdmissionClass, AdmissionReason
from nokvpy.protocol.metaroot_rpc import MetarootStatusRequest
from nokvpy.protocol.records import Admission
from nokvpy.protocol.store_rpc import GetReply, GetRequest, PutRequest, WriteReply
from nokvpy.rpc import RemoteError, RpcTimeoutError, RpcUnavailableError

# ---- the suspect list (pure) ----------------------------------------------------------


def test_a_failure_makes_a_peer_suspect_for_base_seconds():
    s: Suspects[int] = Suspects(base=2.0, cap=16.0)
    assert s.mark(1, now=10.0) == 2.0
    assert s.is_suspect(1, 11.9) and not s.is_suspect(1, 12.0)
    assert not s.is_suspect(2, 10.0)
    assert s.current(11.0) == {1: 1.0}


def test_failures_after_the_suspicion_ended_double_it_up_to_the_cap_and_success_clears():
    s: Suspects[int] = Suspects(base=2.0, cap=8.0)
    now = 0.0
    periods = []
    for _ in range(5):
        periods.append(s.mark(1, now))
        now = s.until(1)  # retried as soon as the suspicion ended, failed again
    assert periods == [2.0, 4.0, 8.0, 8.0, 8.0]
    s.clear(1)
    assert not s.is_suspect(1, now) and s.mark(1, now) == 2.0


def test_failures_while_still_suspect_extend_without_doubling():
    s: Suspects[int] = Suspects(base=2.0, cap=16.0)
    s.mark(1, 0.0)
    assert s.mark(1, 1.5) == 2.0  # concurrent calls and fail-fast reconnects
    assert s.until(1) == 3.5
    assert s.mark(1, 3.5) == 4.0  # retried after it ended: doubled


def test_a_peer_quiet_for_cap_seconds_after_its_suspicion_starts_again_from_base():
    s: Suspects[int] = Suspects(base=2.0, cap=8.0)
    s.mark(1, 0.0)
    s.mark(1, 2.0)  # until 6
    assert s.mark(1, 6.0 + 8.0 + 0.5) == 2.0


def test_order_tries_suspects_last_earliest_recovery_first():
    s: Suspects[str] = Suspects(base=2.0)
    s.mark("a", 0.0)
    s.mark("c", 0.0)
    s.mark("c", 2.0)  # until 6
    s.mark("b", 1.0)  # until 3
    assert s.order(["a", "b", "c", "d"], 1.5) == ["d", "a", "b", "c"]
    assert s.order(["a", "b", "c", "d"], 2.5) == ["a", "d", "b", "c"]


def test_a_hint_naming_a_recent_failure_is_not_followed_an_older_one_is_forgiven():
    s: Suspects[int] = Suspects(base=2.0)
    s.mark(1, 0.0)
    s.mark(1, 1.0)  # still suspect, latest failure at 1.0
    assert not s.vouch(1, 2.5)
    assert s.is_suspect(1, 2.5)
    assert s.vouch(1, 3.0)  # the followers had time to notice, and still name it
    assert not s.is_suspect(1, 3.0)
    assert s.vouch(2, 0.0)  # never failed


# ---- choosing a store (pure) ----------------------------------------------------------


def test_pick_store_prefers_the_believed_leader_then_healthy_untried_voters():
    s: Suspects[int] = Suspects(base=2.0)
    voters = [1, 2, 3]
    assert pick_store(voters, 2, s, 0.0) == 2
    s.mark(2, 0.0)
    assert pick_store(voters, 2, s, 0.0) == 3  # the next voter after the suspect one
    assert pick_store(voters, 2, s, 0.0, tried={3}) == 1
    assert pick_store(voters, 2, s, 0.0, tried={1, 3}) is None  # round over
    assert pick_store(voters, 3, s, 0.0, tried={3}) == 1  # the believed leader refused
    assert pick_store(voters, 0, s, 0.0) == 1  # no leader known
    assert pick_store(voters, 2, s, 2.0, tried={1, 3}) == 2  # suspicion over


def test_pick_store_with_every_voter_suspect_takes_the_earliest_recovery():
    s: Suspects[int] = Suspects(base=2.0)
    s.mark(1, 0.5)
    s.mark(2, 0.0)
    s.mark(3, 1.0)
    assert pick_store([1, 2, 3], 1, s, 1.0) == 2
    assert pick_store([1, 2, 3], 1, s, 1.0, tried={1, 2, 3}) == 2


def test_next_voter_skips_suspects():
    s: Suspects[int] = Suspects(base=2.0)
    assert next_voter([1, 2, 3], 1, s, 0.0) == 2
    s.mark(2, 0.0)
    assert next_voter([1, 2, 3], 1, s, 0.0) == 3
    s.mark(3, 0.0)
    assert next_voter([1, 2, 3], 1, s, 0.0) == 2  # all others suspect: plain next
    assert next_voter([1], 1, s, 0.0) == 1


# ---- a scripted network ---------------------------------------------------------------

REGION = RegionDescriptor(1, b"", b"", RegionEpoch(1, 1), tuple(PeerMeta(s, 100 + s)
                                                                for s in (1, 2, 3)))
STORES = {1: "s1", 2: "s2", 3: "s3"}


class FakeNet:
    """Answers `rpc.call` from per-address handlers; a hung address never answers (the
    caller's deadline passes: RpcTimeoutError, sent). Counts calls per address."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], Any]] = {}
        self.hung: set[str] = set()
        self.delay: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []

    async def call(self, addr: str, request: Any, timeout: float) -> Any:
        self.calls[addr] += 1
        self.log.append((trio.current_time(), addr, type(request).__name__))
        with trio.move_on_after(timeout):
            if addr in self.hung:
                await trio.sleep_forever()
            await trio.sleep(self.delay.get(addr, 0.001))
            return self.handlers[addr](request)
        raise RpcTimeoutError(addr, type(request).__name__, timeout, sent=True)

    async def aclose(self) -> None:
        pass


class FakeRegion:
    """One region on stores 1..3: `leader` serves, the others refuse with NOT_LEADER naming
    whom they believe leads (`views`). The coordinator answers with `coord_leader`."""

    def __init__(self, net: FakeNet, leader: int = 1) -> None:
        self.net = net
        self.leader = leader
        self.views = {sid: leader for sid in STORES}
        self.coord_leader = leader
        self.data: dict[bytes, bytes] = {}
        for sid, addr in STORES.items():
            net.handlers[addr] = lambda req, sid=sid: self.on_store(sid, req)
        net.handlers["c1"] = self.on_coordinator

    def elect(self, sid: int) -> None:
        self.leader = self.coord_leader = sid
        self.views = {s: sid for s in STORES}

    def on_coordinator(self, req: Any) -> Any:
        assert isinstance(req, GetRegionByKeyRequest | PublishRootEventRequest)
        return RouteReply(REGION, None, self.coord_leader, dict(STORES))

    def on_store(self, sid: int, req: Any) -> Any:
        if sid != self.leader:
            hint = self.views[sid] if self.views[sid] != sid else 0
            adm = Admission(AdmissionClass.WRITE, AdmissionReason.NOT_LEADER,
                            leader_store_id=hint)
            raise RemoteError("rejected", "NOT_LEADER", "not leader", {"admission": adm})
        if isinstance(req, PutRequest):
            self.data[req.key] = req.value
            return WriteReply(len(self.data))
        assert isinstance(req, GetRequest)
        return GetReply(self.data.get(req.key))


def client_on(net: FakeNet, coordinators=("c1",), **kw) -> Client:
    return Client(list(coordinators), rpc=net, **kw)  # type: ignore[arg-type]


# ---- the KV client --------------------------------------------------------------------


async def test_timed_out_write_is_outcome_unknown_and_the_next_one_goes_elsewhere(autojump_clock):
    # init: store 1 leads and is cached; it hangs; stores 2, 3 elect store 2 after 1.5 s
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    client = client_on(net)
    await client.put(b"k", b"v0")
    assert client.cached_leader(b"k") == 1
    net.hung.add("s1")
    t0 = trio.current_time()

    async def election() -> None:
        await trio.sleep(1.5)
        region.elect(2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(election)
        # act + check: the put sent to the hung leader is not retried ...
        with pytest.raises(OutcomeUnknownError, match="timed out"):
            await client.put(b"k", b"v1", timeout=1.0)
        assert net.calls["s1"] == 2
        assert client.cached_leader(b"k") != 1
        assert client.store_suspects.is_suspect(1, trio.current_time())
        # ... and the next one never goes back to it: followers naming it are not followed
        await client.put(b"k", b"v2", timeout=5.0)
    assert net.calls["s1"] == 2
    assert trio.current_time() - t0 < 1.5 + 0.3
    assert region.data[b"k"] == b"v2"
    assert client.cached_leader(b"k") == 2
    assert client.stats["route_refreshes"] >= 2  # rounds ended by asking the coordinator


async def test_a_read_fails_over_within_one_operation(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    client = client_on(net, attempt_timeout=1.0)
    await client.put(b"k", b"v0")
    net.hung.add("s1")
    region.elect(3)  # the followers already moved on
    t0 = trio.current_time()
    assert await client.get(b"k", timeout=10.0) == b"v0"
    assert 1.0 <= trio.current_time() - t0 < 1.1
    assert net.calls["s1"] == 2 and client.cached_leader(b"k") == 3


async def test_a_read_whose_deadline_passes_raises_the_old_deadline_error(autojump_clock):
    net = FakeNet()
    FakeRegion(net, leader=1)
    client = client_on(net, attempt_timeout=1.0)
    await client.put(b"k", b"v0")
    for sid in STORES:
        net.hung.add(STORES[sid])
    with pytest.raises(DeadlineExceededError, match=r"request for b'k' timed out \(sent\)"):
        await client.get(b"k", timeout=2.5)


async def test_a_read_refused_as_timed_out_before_its_deadline_fails_over(autojump_clock):
    # store 1 was deposed but cannot learn it: its read index never confirms, and it
    # refuses each read attempt as TIMED_OUT when the attempt's deadline passes
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    client = client_on(net, attempt_timeout=1.0)
    await client.put(b"k", b"v0")
    region.elect(2)

    def deposed(req: Any) -> Any:
        adm = Admission(AdmissionClass.READ, AdmissionReason.TIMED_OUT)
        raise RemoteError("rejected", "TIMED_OUT", "read index timed out", {"admission": adm})

    net.handlers["s1"] = deposed
    assert await client.get(b"k", timeout=10.0) == b"v0"
    assert client.cached_leader(b"k") == 2


async def test_a_slow_but_live_leader_still_serves_reads(autojump_clock):
    # store 1 leads and answers every request after 1.5 s, longer than one attempt: the
    # followers keep naming it, and once its failure is old the client believes them
    net = FakeNet()
    FakeRegion(net, leader=1)
    client = client_on(net, attempt_timeout=1.0)
    await client.put(b"k", b"v0")
    net.delay["s1"] = 1.5
    t0 = trio.current_time()
    assert await client.get(b"k", timeout=10.0) == b"v0"
    assert trio.current_time() - t0 < 6.0
    assert not client.store_suspects.is_suspect(1, trio.current_time())
    assert client.cached_leader(b"k") == 1


async def test_a_region_with_one_voter_gives_a_read_the_whole_deadline(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    single = RegionDescriptor(1, b"", b"", RegionEpoch(1, 1), (PeerMeta(1, 101),))
    net.handlers["c1"] = lambda req: RouteReply(single, None, 1, dict(STORES))
    region.data[b"k"] = b"v"
    net.delay["s1"] = 2.5
    client = client_on(net, attempt_timeout=1.0)
    assert await client.get(b"k", timeout=5.0) == b"v"
    assert net.calls["s1"] == 1


async def test_a_write_attempt_keeps_the_operation_deadline(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    client = client_on(net, attempt_timeout=1.0)
    await client.put(b"k", b"v0")
    net.delay["s1"] = 2.5  # slow, not hung: cutting it at 1 s would make it unknown
    await client.put(b"k", b"v1", timeout=5.0)
    assert region.data[b"k"] == b"v1" and net.calls["s1"] == 2


# ---- coordinators ---------------------------------------------------------------------


async def test_a_hung_coordinator_costs_one_attempt_and_is_then_tried_last(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    net.handlers["c2"] = region.on_coordinator
    net.hung.add("c1")
    client = client_on(net, coordinators=("c1", "c2"), attempt_timeout=1.0)
    t0 = trio.current_time()
    await client.route(b"k")
    assert 1.0 <= trio.current_time() - t0 < 1.1
    await client.route(b"k")
    assert net.calls["c1"] == 1 and net.calls["c2"] == 2
    # even when the rotation points at the hung one again, it goes last
    client._coord_index = 0
    await client.route(b"k")
    assert net.calls["c1"] == 1


async def test_the_last_coordinator_gets_the_rest_of_the_deadline(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    net.delay["c1"] = 2.5  # slow but the only one
    client = client_on(net, attempt_timeout=1.0, timeout=5.0)
    reply = await client.route(b"k")
    assert reply.leader_store_id == region.leader and net.calls["c1"] == 1


async def test_a_coordinator_request_that_changes_state_keeps_a_whole_timeout_each(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    net.handlers["c2"] = region.on_coordinator
    net.hung.add("c1")
    client = client_on(net, coordinators=("c1", "c2"), attempt_timeout=1.0)
    t0 = trio.current_time()
    await client.call_coordinator(PublishRootEventRequest(None), timeout=3.0)
    assert 3.0 <= trio.current_time() - t0 < 3.1


# ---- metaroot peers -------------------------------------------------------------------


class FakeMetaroot:
    def __init__(self, net: FakeNet, leader: str) -> None:
        self.leader = leader
        self.views = {a: leader for a in ("m1", "m2", "m3")}
        for addr in self.views:
            net.handlers[addr] = lambda req, addr=addr: self.on_call(addr, req)

    def on_call(self, addr: str, req: Any) -> Any:
        if addr != self.leader:
            raise RemoteError("not_leader", "", "not leader", {"leader_addr": self.views[addr]})
        return f"status from {addr}"


async def test_metaroot_client_leaves_a_hung_leader(autojump_clock):
    net = FakeNet()
    meta_root = FakeMetaroot(net, leader="m1")
    meta = MetaClient(net, ["m1", "m2", "m3"], timeout=10.0,  # type: ignore[arg-type]
                      attempt_timeout=1.0)
    assert await meta.call(MetarootStatusRequest()) == "status from m1"
    net.hung.add("m1")

    async def election() -> None:
        await trio.sleep(1.5)
        meta_root.leader = "m2"
        meta_root.views = dict.fromkeys(meta_root.views, "m2")

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(election)
        assert await meta.call(MetarootStatusRequest()) == "status from m2"
    # one timed-out attempt on m1; the followers' hints naming m1 were not followed
    assert net.calls["m1"] == 2
    assert trio.current_time() - t0 < 1.5 + 0.4
    assert await meta.call(MetarootStatusRequest()) == "status from m2"
    assert net.calls["m1"] == 2


async def test_metaroot_client_never_resends_an_unknown_append(autojump_clock):
    from types import SimpleNamespace

    from nokvpy.protocol.metaroot_rpc import AppendRequest

    net = FakeNet()
    FakeMetaroot(net, leader="m1")
    net.hung.add("m1")
    meta = MetaClient(net, ["m1", "m2", "m3"], attempt_timeout=1.0)  # type: ignore[arg-type]
    meta.leader = "m1"
    with pytest.raises(OutcomeUnknownError):
        await meta.call(AppendRequest([SimpleNamespace(request_id="")]))  # type: ignore[list-item]
    assert net.calls["m1"] == 1 and net.calls["m2"] == 0
    assert meta.suspects.is_suspect("m1", trio.current_time())
    assert meta._candidates() == ["m2", "m3"]


async def test_unreachable_store_is_suspected_and_skipped(autojump_clock):
    net = FakeNet()
    region = FakeRegion(net, leader=1)
    client = client_on(net)
    await client.put(b"k", b"v0")

    def refuse(req: Any) -> Any:
        raise RpcUnavailableError("s1", "connect failed: refused")

    net.handlers["s1"] = refuse
    region.elect(2)
    await client.put(b"k", b"v1")
    assert client.store_suspects.is_suspect(1, trio.current_time())
    calls = net.calls["s1"]
    await client.put(b"k", b"v2")
    assert net.calls["s1"] == calls and region.data[b"k"] == b"v2"


def test_forgive_all_clears_suspects_and_ignores_failures_within_the_grace():
    """A caller whose own loop stalled forgives every peer: the failures of calls in flight
    across the stall are its own, not the peer's."""
    s: Suspects[str] = Suspects(2.0, 16.0)
    s.mark("a", 10.0)
    assert s.is_suspect("a", 10.5)
    s.forgive_all(11.0, grace=3.0)
    assert not s.is_suspect("a", 11.0)
    assert s.mark("a", 13.9) == 0.0 and not s.is_suspect("a", 13.9)
    assert s.ignored == 1
    assert s.mark("a", 14.1) == pytest.approx(2.0) and s.is_suspect("a", 14.1)  # counts again
