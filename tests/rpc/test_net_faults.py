"""Network faults beyond drop and delay: one-way, bridge and ring partitions, blackholes,
duplicated and reordered raft batches, corrupted frames and the frame checksum that catches
them. Every test runs on the in-memory network under trio's MockClock (virtual time), with
seeded rules, so each run takes the same path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from rpc_helpers import Add, Count, Sum, ident

from nokvpy.raft.types import Entry, Message, MessageType
from nokvpy.rpc import (
    FaultRules,
    MemoryNetwork,
    RaftTransport,
    RpcClient,
    RpcServer,
    RpcTimeoutError,
    RpcUnavailableError,
)
from nokvpy.rpc import framed as framed_mod
from nokvpy.rpc.faults import CANCEL, REPLY, REQUEST, bridge_sides, ring_cuts, value_spans
from nokvpy.rpc.framed import FramedStream
from nokvpy.wire import (
    FRAME_HEADER_SIZE,
    FaultRule,
    FrameChecksumError,
    Ping,
    Pong,
    RaftBatch,
    RaftEnvelope,
    SetFaultRules,
    decode,
    encode,
    frame,
)
from nokvpy.wire.codec import pack_raw, unpack_raw

# ---- helpers --------------------------------------------------------------------------------


def _batch(i: int, frm: int = 1, to: int = 2) -> RaftBatch:
    msg = Message(MessageType.APP, to=to * 10, frm=frm * 10, term=1, index=i,
                  entries=[Entry(1, i + 1, 0, b"v%d" % i)])
    env = RaftEnvelope(group_id=7, from_store=frm, to_store=to, epoch_version=1,
                       epoch_conf_ver=1, message=msg)
    return RaftBatch(frm, to, [env])


class Node:
    """One process: a server and a client sharing one FaultRules (as every server has)."""

    def __init__(self, net: MemoryNetwork, i: int, seed: int | None = None) -> None:
        self.i = i
        self.name = f"store-{i}"
        self.faults = FaultRules(seed=i if seed is None else seed)
        self.server = RpcServer(ident("store", i), network=net, faults=self.faults, policy=None)
        self.client = RpcClient(ident("store", i), network=net, faults=self.faults)
        self.addr = ""
        self.adds = 0
        self.arrivals: list[tuple[float, int]] = []  # (time, raft index) per batch received
        self.server.register(Add, self.on_add)
        self.server.register(RaftBatch, self.on_batch, inline=True)
        self.server.register_stream(Count, self.on_count)

    async def on_add(self, req: Add, ctx) -> Sum:
        self.adds += 1
        if req.a < 0:
            await trio.sleep(-req.a)  # a slow request: -a seconds
        return Sum(req.a + req.b)

    async def on_batch(self, batch: RaftBatch, ctx) -> None:
        for env in batch.envelopes:
            self.arrivals.append((trio.current_time(), env.message.index))

    async def on_count(self, req: Count, ctx):
        for i in range(req.n):
            await trio.sleep(1)
            yield Sum(i)

    def received(self) -> list[int]:
        return [i for _, i in self.arrivals]


@asynccontextmanager
async def cluster(n: int, seed: int | None = None):
    net = MemoryNetwork()
    nodes = [Node(net, i + 1, seed) for i in range(n)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            host, port = await nursery.start(node.server.serve, f"node-{node.i}", 0)
            node.addr = f"{host}:{port}"
        try:
            yield net, nodes
        finally:
            for node in nodes:
                await node.client.aclose()
            nursery.cancel_scope.cancel()


async def reaches(a: Node, b: Node, timeout: float = 1.0) -> bool:
    try:
        return (await a.client.call(b.addr, Ping(), timeout)) == Pong(b"", b.name)
    except RpcTimeoutError:
        return False


async def reach_matrix(nodes: list[Node]) -> set[tuple[int, int]]:
    return {(a.i, b.i) for a in nodes for b in nodes if a is not b and await reaches(a, b)}


def install(nodes: list[Node], build) -> None:
    """The same rule set on every node, as jepsen-lite pushes it."""
    for node in nodes:
        build(node.faults)


# ---- decisions ------------------------------------------------------------------------------


def test_which_rule_acts_on_which_message_and_side():
    rules = FaultRules(1)
    rules.one_way({"a"}, {"b"})
    assert rules.decide("a", "b", "Add").drop  # request a -> b
    assert rules.decide("a", "b", "Add", kind=REPLY).drop  # a's reply to b
    assert rules.decide("a", "b", "Add", kind=REPLY, sending=False).drop  # seen by b
    assert not rules.decide("b", "a", "Add").drop and not rules.decide("b", "a", "Add",
                                                                       kind=REPLY).drop
    assert not rules.decide("a", "b", "Cancel", kind=CANCEL).drop  # cancels pass a partition
    assert not rules.decide("a", "b", "SetFaultRules").drop  # admin is never faulted
    assert not rules.decide("a", "b", "GetFaultRules", kind=REPLY).drop

    rules = FaultRules(1)
    rules.blackhole("t")
    for kind in (REQUEST, REPLY, CANCEL):
        for src, dst in (("t", "x"), ("x", "t")):
            v = rules.decide(src, dst, "Add", kind=kind, sending=False)
            assert v.drop and v.blackhole
    assert not rules.decide("x", "y", "Add").drop
    assert not rules.decide("t", "x", "SetFaultRules").drop
    assert rules.state().blackholed == 6

    rules = FaultRules(1)
    rules.delay(0.5)
    rules.duplicate(1.0, 0.2)
    rules.reorder(1.0)
    rules.corrupt(1.0)
    sent = rules.decide("a", "b", "RaftBatch", one_way=True)  # the sender damages ...
    assert sent.delay == 0.5 and sent.corrupt
    assert sent.duplicate is None and sent.reorder is None
    received = rules.decide("a", "b", "RaftBatch", one_way=True, sending=False)
    assert received.delay == 0.5 and not received.corrupt  # ... the receiver delivers
    assert 0 <= received.duplicate <= 0.2 and 0 <= received.reorder <= 0.05
    call = rules.decide("a", "b", "Add", sending=False)  # duplicate, reorder: one-way only
    assert call.plain and call.delay == 0.5
    reply = rules.decide("a", "b", "Add", kind=REPLY)
    assert reply.delay == 0 and reply.corrupt  # delays act on requests only
    state = rules.state()
    assert (state.duplicated, state.reordered, state.corrupted) == (1, 1, 2)


def test_decisions_and_corruption_are_seeded():
    def run(seed: int) -> list:
        rules = FaultRules(seed)
        rules.duplicate(0.3, 0.1)
        rules.reorder(0.3, 0.1)
        rules.corrupt(0.2)
        rules.drop(0.1)
        out = []
        for i in range(200):
            v = rules.decide("a", "b", "RaftBatch", one_way=True, sending=i % 2 == 0)
            out.append((v, rules.corrupt_frame(b"x" * 40) if v.corrupt else None))
        return out

    assert run(5) == run(5) and run(5) != run(6)
    verdicts = [v for v, _ in run(5)]
    assert 15 < sum(v.duplicate is not None for v in verdicts[1::2]) < 45
    assert 15 < sum(v.reorder is not None for v in verdicts[1::2]) < 45
    assert 5 < sum(v.corrupt for v in verdicts[::2]) < 35
    assert not any(v.corrupt for v in verdicts[1::2])
    assert not any(v.duplicate is not None or v.reorder is not None for v in verdicts[::2])
    assert 5 < sum(v.drop for v in verdicts) < 40
    for _, damaged in run(5):
        if damaged is not None:
            assert len(damaged) == 40 and 1 <= sum(x != 0x78 for x in damaged) <= 3


def test_corruption_targets_values_half_the_time():
    """A damaged byte inside a value still decodes: what a receiver without checksums would
    take for data. The innermost strings are found inside raft entries' commands too."""
    entry = Entry(1, 6, 0, encode(Pong(b"the-value", "node-name")))  # a record in a record
    msg = Message(MessageType.APP, to=20, frm=10, term=1, index=5, entries=[entry])
    data = frame(encode(RaftBatch(1, 2, [RaftEnvelope(7, 1, 2, 1, 1, msg)])))
    spans = value_spans(data, FRAME_HEADER_SIZE)
    assert [data[a:b] for a, b in spans] == [b"the-value", b"node-name"]
    assert value_spans(b"\xc1garbage") == []
    rules = FaultRules(9)
    inside = 0
    for _ in range(200):
        damaged = rules.corrupt_frame(data)
        changed = [i for i in range(len(data)) if damaged[i] != data[i]]
        assert 1 <= len(changed) <= 3
        inside += len(changed) == 1 and any(a <= changed[0] < b for a, b in spans)
    assert 80 < inside < 130


def test_bridge_and_ring_shapes():
    assert bridge_sides(["a", "b", "c", "d", "e"]) == (["a", "b"], "c", ["d", "e"])
    assert bridge_sides(["a", "b"]) == ([], None, [])
    assert ring_cuts(["a", "b", "c"]) == {}  # everyone is a neighbour
    for n in (5, 6, 7, 9):
        nodes = [f"n{i}" for i in range(n)]
        cuts = ring_cuts(nodes)
        views = {m: frozenset(nodes) - frozenset(cuts.get(m, ())) for m in nodes}
        for m, view in views.items():
            assert m in view and len(view) >= n // 2 + 1  # sees a majority
            assert all(m not in cuts.get(o, ()) for o in view)  # symmetric
        if n % 2:
            assert len(set(views.values())) == n  # no two see the same majority


def test_new_rule_fields_default_when_an_older_sender_omits_them():
    rule = FaultRule(src=frozenset({"a"}), drop=1.0, label="old", duplicate=0.5, blackhole=True)
    wire = unpack_raw(encode(rule))
    old = decode(pack_raw(wire[:8]))  # tag + the seven fields an older sender knows
    assert old == FaultRule(src=frozenset({"a"}), drop=1.0, label="old")
    assert decode(encode(rule)) == rule


# ---- partitions over the in-memory network ----------------------------------------------------


@pytest.mark.parametrize("holder", ["sender", "receiver"])
async def test_one_way_partition_loses_a_to_b_and_lets_b_to_a_flow(autojump_clock, holder):
    """Rules on either side alone suffice: A's requests to B and A's answers to B vanish; B's
    requests reach A (A runs them) and B's one-way batches arrive."""
    async with cluster(2) as (_, (a, b)):
        assert await reaches(a, b) and await reaches(b, a)
        (a if holder == "sender" else b).faults.one_way({"store-1"}, {"store-2"})
        start = trio.current_time()
        with pytest.raises(RpcTimeoutError) as err:
            await a.client.call(b.addr, Add(1, 2), 2.0)
        assert err.value.sent and trio.current_time() - start == pytest.approx(2.0)
        assert b.adds == 0  # never arrived
        with pytest.raises(RpcTimeoutError):
            await b.client.call(a.addr, Add(3, 4), 2.0)
        assert a.adds == 1  # arrived and ran; the answer was lost
        await b.client.notify(a.addr, _batch(1, 2, 1))
        await a.client.notify(b.addr, _batch(2, 1, 2))
        await trio.sleep(1)
        assert a.received() == [1] and b.received() == []
        (a if holder == "sender" else b).faults.heal()
        assert await reaches(a, b) and await reaches(b, a)
        assert a.client.counters["connects"] == 1 and b.client.counters["connects"] == 1


async def test_bridge_partition(autojump_clock):
    async with cluster(3) as (_, nodes):
        bridge = []
        install(nodes, lambda f: bridge.append(f.bridge(["store-1", "store-2", "store-3"])))
        assert bridge == ["store-2"] * 3
        assert await reach_matrix(nodes) == {(1, 2), (2, 1), (2, 3), (3, 2)}
        install(nodes, FaultRules.heal)
        assert len(await reach_matrix(nodes)) == 6


async def test_ring_partition(autojump_clock):
    async with cluster(5) as (_, nodes):
        order = ["store-1", "store-3", "store-5", "store-2", "store-4"]
        install(nodes, lambda f: f.ring(order))
        ring = [int(n[-1]) for n in order]
        want = set()
        for k, i in enumerate(ring):
            want |= {(i, ring[(k + 1) % 5]), (i, ring[k - 1])}
        assert await reach_matrix(nodes) == want
        assert len(want) == 10  # each of the 5 reaches exactly its 2 neighbours


# ---- blackhole ----------------------------------------------------------------------------------


async def test_blackhole_swallows_everything_and_closes_nothing(autojump_clock):
    async with cluster(2) as (net, (a, b)):
        outsider = RpcClient(ident("client", 9), network=net)  # no rules of its own
        try:
            assert (await outsider.call(b.addr, Add(1, 1), 1)).total == 2
            async with trio.open_nursery() as nursery:
                results: dict[str, object] = {}

                async def slow_call() -> None:  # in flight when the blackhole starts
                    try:
                        results["slow"] = await outsider.call(b.addr, Add(-10, 0), 30)
                    except RpcTimeoutError as e:
                        results["slow"] = (e, trio.current_time())

                async def stream() -> None:
                    items = []
                    try:
                        async with outsider.stream(b.addr, Count(10), timeout=20) as it:
                            async for item in it:
                                items.append(item.total)
                    except RpcTimeoutError:
                        items.append("timeout")
                    results["stream"] = (items, trio.current_time())

                t0 = trio.current_time()
                nursery.start_soon(slow_call)
                nursery.start_soon(stream)
                await trio.sleep(2.5)
                b.faults.blackhole("store-2")  # only the target knows
                start = trio.current_time()
                with pytest.raises(RpcTimeoutError) as err:
                    await outsider.call(b.addr, Ping(), 3.0)
                assert err.value.sent and trio.current_time() - start == pytest.approx(3.0)
                with pytest.raises(RpcTimeoutError):
                    await a.client.call(b.addr, Ping(), 1.0)  # a server: the same
                with pytest.raises(RpcTimeoutError):
                    await b.client.call(a.addr, Ping(), 1.0)  # and from the target
                await a.client.notify(b.addr, _batch(1))
                await b.client.notify(a.addr, _batch(2, 2, 1))
            slow_error, slow_at = results["slow"]
            assert isinstance(slow_error, RpcTimeoutError)
            assert slow_at - t0 == pytest.approx(30)  # its answer (at 10 s) was swallowed
            items, stream_at = results["stream"]
            assert items == [0, 1, "timeout"] and stream_at - t0 == pytest.approx(20)
            assert a.received() == [] and b.received() == []
            # the operator's fault-rule calls still pass: heal remotely
            await outsider.call(b.addr, SetFaultRules(seed=1, rules=()), 1)
            assert (await outsider.call(b.addr, Add(2, 2), 1)).total == 4
            # nothing was closed, nobody saw an error
            for client in (outsider, a.client, b.client):
                assert client.counters["connects"] == len(client._conns) >= 1
                assert client.counters["protocol_errors"] == 0
            assert b.server.counters["connections_closed"] == 0
            assert b.server.counters["protocol_errors{reason=frame_checksum}"] == 0
            assert b.faults.blackholed > 0 and b.server.counters["fault_blackholed"] > 0
        finally:
            await outsider.aclose()


@pytest.mark.parametrize("fault", ["isolate", "blackhole"])
async def test_a_partition_lets_cancels_through_a_blackhole_does_not(autojump_clock, fault):
    """The difference in one line: a caller that gives up frees the server's work across a
    partition, never across a blackhole."""
    async with cluster(2) as (_, (a, b)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.client.call, b.addr, Ping(), 1)  # connect first
            await trio.sleep(0.5)
            with trio.move_on_after(5):
                async with trio.open_nursery() as inner:
                    inner.start_soon(a.client.call, b.addr, Add(-100, 0), 60)
                    await trio.sleep(1)
                    getattr(b.faults, fault)("store-1")
                    await trio.sleep(1)
                    inner.cancel_scope.cancel()  # the caller gives up: a Cancel is sent
            await trio.sleep(1)
        cancelled = b.server.counters["cancelled_by_client"]
        assert cancelled == (1 if fault == "isolate" else 0)


# ---- duplicate and reorder ----------------------------------------------------------------------


async def test_duplicate_delivers_raft_batches_twice(autojump_clock):
    async with cluster(2) as (_, (a, b)):
        a.faults.duplicate(1.0, message_types=["RaftBatch"])  # the sender's rules: no effect
        await a.client.notify(b.addr, _batch(9))
        await trio.sleep(0.5)
        b.faults.duplicate(1.0)  # delivery faults are the receiver's
        for i in range(5):
            await a.client.notify(b.addr, _batch(i))
        assert (await a.client.call(b.addr, Add(1, 1), 1)).total == 2  # calls: never copied
        await trio.sleep(1)
        assert b.received() == [9, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert b.adds == 1 and b.server.counters["fault_duplicated"] == 5


async def test_a_late_duplicate_arrives_after_newer_batches(autojump_clock):
    async def run() -> list[int]:
        async with cluster(2, seed=11) as (_, (a, b)):
            b.faults.duplicate(0.5, 0.2, message_types=["RaftBatch"])
            for i in range(30):
                await a.client.notify(b.addr, _batch(i))
                await trio.sleep(0.01)
            await trio.sleep(1)
            copies = b.server.counters["fault_duplicated"]
            got = b.received()
            assert sorted(set(got)) == list(range(30)) and len(got) == 30 + copies
            assert 5 < copies < 25
            return got

    got = await run()
    assert got != sorted(got)  # some copy came after newer batches
    assert got == await run()  # seeded: the same again


async def test_reorder_swaps_raft_batches_and_loses_none(autojump_clock):
    async def run() -> list[int]:
        async with cluster(2, seed=3) as (_, (a, b)):
            b.faults.reorder(0.4, 0.05, message_types=["RaftBatch"])
            for i in range(40):
                await a.client.notify(b.addr, _batch(i))
                await trio.sleep(0.01)
            await trio.sleep(1)
            got = b.received()
            assert sorted(got) == list(range(40))  # nothing lost, nothing doubled
            assert b.server.counters["fault_reordered"] > 5
            return got

    got = await run()
    assert got != sorted(got)
    assert got == await run()  # seeded: the same again


async def test_reorder_through_the_raft_transport(autojump_clock):
    async with cluster(2, seed=3) as (_, (a, b)):
        b.faults.reorder(0.5, 0.05, message_types=["RaftBatch"])
        transport = RaftTransport(a.client, {2: b.addr}.get, local_store_id=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            for i in range(40):
                transport.send([_batch(i).envelopes[0]])
                await trio.sleep(0.002 * (i % 3))
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        got = b.received()
        assert sorted(got) == list(range(40)) and got != sorted(got)
        assert b.server.counters["fault_reordered"] > 3


async def test_a_held_batch_with_no_successor_goes_after_its_hold(autojump_clock):
    async with cluster(2) as (_, (a, b)):
        assert await reaches(a, b)
        b.faults.reorder(1.0, 0.5)
        start = trio.current_time()
        await a.client.notify(b.addr, _batch(7))
        await trio.sleep(2)
        ((at, index),) = b.arrivals
        assert index == 7 and 0 < at - start <= 0.5


# ---- corruption and the frame checksum -----------------------------------------------------------


async def test_a_corrupted_request_is_caught_by_the_server(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="nokvpy.rpc")
    async with cluster(2) as (_, (a, b)):
        assert (await a.client.call(b.addr, Add(1, 1), 1)).total == 2
        a.faults.corrupt(1.0, src=["store-1"])
        for _ in range(5):
            with pytest.raises(RpcUnavailableError) as err:
                await a.client.call(b.addr, Add(1, 2), 5)
            assert err.value.outcome_unknown  # the request was sent: its fate is unknown
            await trio.sleep(0.3)  # past the client's reconnect backoff
        assert b.adds == 1  # no damaged request ever ran
        counters = b.server.counters
        checksum = counters["frame_checksum_errors{phase=session}"]
        assert checksum == counters["protocol_errors{reason=frame_checksum}"] >= 3
        # a high bit of the length damaged: refused as oversized, before the header check
        assert checksum + counters["protocol_errors{reason=frame_too_large}"] == 5
        lines = [r for r in caplog.records if "frame_checksum" in r.getMessage()]
        assert len(lines) == 1  # rate-limited; every one counted
        a.faults.heal()
        assert (await a.client.call(b.addr, Add(2, 2), 1)).total == 4  # reconnected


async def test_a_corrupted_reply_is_caught_by_the_client(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="nokvpy.rpc")
    async with cluster(2) as (_, (a, b)):
        assert (await a.client.call(b.addr, Add(1, 1), 1)).total == 2
        b.faults.corrupt(1.0, src=["store-2"])
        with pytest.raises(RpcUnavailableError) as err:
            await a.client.call(b.addr, Add(5, 5), 5)
        assert err.value.outcome_unknown and "damaged frame" in err.value.reason
        assert b.adds == 2  # it ran; its answer was damaged on the way back
        assert a.client.counters["frame_checksum_errors"] == 1
        assert sum("frame_checksum" in r.getMessage() or "damaged" in r.getMessage()
                   for r in caplog.records if r.levelno >= logging.WARNING) == 1
        b.faults.heal()
        await trio.sleep(0.3)
        assert (await a.client.call(b.addr, Add(2, 2), 1)).total == 4


async def test_corrupted_raft_batches_are_dropped_with_their_connection(autojump_clock):
    async with cluster(2, seed=4) as (_, (a, b)):
        a.faults.corrupt(0.3, message_types=["RaftBatch"])
        for i in range(40):
            try:
                await a.client.notify(b.addr, _batch(i))
            except RpcUnavailableError:
                pass  # in the reconnect backoff after a damaged frame closed the connection
            await trio.sleep(0.2)
        got = b.received()
        damaged = b.server.counters["frame_checksum_errors{phase=session}"]
        assert damaged >= 5 and a.client.counters["fault_corrupted"] >= damaged
        assert got == sorted(got) and len(got) <= 40 - damaged  # lost, never garbled


def _corrupt_value(data: bytes) -> bytes:
    """Flip one bit inside the b"abc" value of a framed Ping."""
    at = data.index(b"abc", FRAME_HEADER_SIZE)
    return data[:at] + bytes([data[at] ^ 0x02]) + data[at + 1:]


@pytest.mark.parametrize("unsafe", [False, True])
async def test_the_unsafe_switch_lets_damaged_frames_through(monkeypatch, unsafe):
    monkeypatch.setattr(framed_mod, "UNSAFE_SKIP_FRAME_CHECKSUM", unsafe)
    left, right = trio.testing.memory_stream_pair()
    sender = FramedStream(left, max_frame_size=1 << 20)
    receiver = FramedStream(right, max_frame_size=1 << 20)
    await sender.stream.send_all(_corrupt_value(frame(encode(Ping(b"abc")))))
    if unsafe:
        assert await receiver.receive_one() == Ping(b"cbc")  # garbage accepted
        assert receiver.ignored_checksum_mismatches == 1
    else:
        with pytest.raises(FrameChecksumError) as err:
            await receiver.receive_one()
        assert err.value.part == "body"


def test_the_unsafe_switch_is_read_from_the_environment_at_import():
    code = "import nokvpy.rpc.framed as f; print(f.UNSAFE_SKIP_FRAME_CHECKSUM)"
    for value, want in (("1", "True"), ("0", "False"), (None, "False")):
        env = {k: v for k, v in os.environ.items() if k != "NOKV_UNSAFE_SKIP_FRAME_CHECKSUM"}
        if value is not None:
            env["NOKV_UNSAFE_SKIP_FRAME_CHECKSUM"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, timeout=60)
        assert out.stdout.strip() == want
