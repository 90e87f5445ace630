"""A tiny in-memory network of RawNodes for whole-cluster scenario tests (like etcd's
`network`): messages are delivered breadth-first; `drop`, `cut`, `isolate`, `ignore` and
`recover` filter them; `hold` parks matching messages in flight until `deliver_held` hands
them over late (past any filter set since: they were already on the wire). Each node's
MemoryStorage is its disk; Ready handling follows the rawnode.py contract (persist, send,
apply, advance).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

from nokvpy.raft import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    StateType,
)


class Node:
    """One peer: its RawNode, its disk (storage) and its applied state machine."""

    def __init__(self, node_id: int, peers: Iterable[int] | None, storage=None, **cfg) -> None:
        self.id = node_id
        self.storage = storage if storage is not None else MemoryStorage()
        self.cfg = cfg
        applied = self.storage.snapshot().metadata.index
        self.rn = RawNode(
            Config(node_id, self.storage, applied=applied, rng=random.Random(node_id), **cfg)
        )
        if peers is not None and self.storage.last_index() == 0:
            self.rn.bootstrap(peers)
        self.applied: list[Entry] = []
        self.applied_index = applied
        self.conf_state = self.storage.snapshot().metadata.conf_state
        self.read_states: list[ReadState] = []

    @property
    def raft(self):
        return self.rn.raft

    @property
    def state(self) -> StateType:
        return self.rn.raft.state

    @property
    def term(self) -> int:
        return self.rn.raft.term

    def handle_ready(self) -> list[Message]:
        if not self.rn.has_ready():
            return []
        rd = self.rn.ready()
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
            self.applied_index = rd.snapshot.metadata.index
            self.conf_state = rd.snapshot.metadata.conf_state
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self.conf_state = self.rn.apply_conf_change(ConfChange.decode(e.data))
            self.applied.append(e)
            self.applied_index = e.index
        self.read_states.extend(rd.read_states)
        self.rn.advance(rd)
        return rd.messages

    def applied_data(self) -> list[bytes]:
        return [e.data for e in self.applied if e.type == EntryType.NORMAL and e.data]

    def snapshot_and_compact(self, index: int | None = None) -> None:
        """Snapshot the applied state and compact the log up to it."""
        idx = self.applied_index if index is None else index
        self.storage.create_snapshot(idx, self.conf_state, repr(self.applied_data()).encode())
        self.storage.compact(idx)


def storage_with(
    terms: list[int], peers: Iterable[int], *, term: int, vote: int = 0, commit: int | None = None
) -> MemoryStorage:
    """A disk holding the bootstrap entries (term 1, one ADD_NODE per peer) followed by entries
    with the given terms, and a hard state (commit defaults to the bootstrap entries)."""
    from nokvpy.raft import ConfChangeType, HardState

    peers = list(peers)
    st = MemoryStorage()
    ents = [
        Entry(1, i + 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, p).encode())
        for i, p in enumerate(peers)
    ]
    base = len(ents)
    ents += [
        Entry(t, base + i + 1, EntryType.NORMAL, f"t{t}i{base + i + 1}".encode())
        for i, t in enumerate(terms)
    ]
    st.append(ents)
    st.set_hard_state(HardState(term, vote, base if commit is None else commit))
    return st


class Network:
    def __init__(
        self,
        ids: Iterable[int],
        *,
        seed: int = 0,
        bootstrap: bool = True,
        storages: dict[int, MemoryStorage] | None = None,
        **cfg,
    ):
        ids = list(ids)
        self.cfg = cfg
        storages = storages or {}
        self.nodes: dict[int, Node] = {
            i: Node(i, None if i in storages or not bootstrap else ids, storages.get(i), **cfg)
            for i in ids
        }
        self.rng = random.Random(seed)
        self.dropm: dict[tuple[int, int], float] = {}
        self.ignorem: set[MessageType] = set()
        self.holdm: list = []  # predicates: a matching message is parked in `held`
        self.held: list[Message] = []
        self.delivered: list[Message] = []
        self.stabilize()

    # -- membership of the test network ----------------------------------------------------

    def add_node(self, node_id: int, **cfg) -> Node:
        """A new, empty node (not bootstrapped) that will join through a conf change."""
        merged = dict(self.cfg)
        merged.update(cfg)
        n = Node(node_id, None, **merged)
        self.nodes[node_id] = n
        return n

    def restart(self, node_id: int) -> Node:
        """Crash and restart: keep only what the node persisted."""
        old = self.nodes[node_id]
        n = Node(node_id, None, storage=old.storage, **old.cfg)
        self.nodes[node_id] = n
        return n

    # -- filters ---------------------------------------------------------------------------

    def drop(self, frm: int, to: int, perc: float) -> None:
        self.dropm[(frm, to)] = perc

    def cut(self, a: int, b: int) -> None:
        self.drop(a, b, 1.0)
        self.drop(b, a, 1.0)

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def ignore(self, t: MessageType) -> None:
        self.ignorem.add(t)

    def hold(self, pred) -> None:
        """Park every message matching `pred(m)` (a delayed message) until `deliver_held`."""
        self.holdm.append(pred)

    def stop_holding(self) -> None:
        self.holdm.clear()

    def deliver_held(self) -> list[Message]:
        """Deliver the parked messages now, bypassing the drop filters; returns them."""
        held, self.held = self.held, []
        for m in held:
            n = self.nodes.get(m.to)
            if n is not None:
                self.delivered.append(m)
                n.rn.step(m)
        self.stabilize()
        return held

    def recover(self) -> None:
        self.dropm.clear()
        self.ignorem.clear()

    def _filter(self, msgs: Iterable[Message]) -> list[Message]:
        out = []
        for m in msgs:
            if any(pred(m) for pred in self.holdm):
                self.held.append(m)
                continue
            if m.type in self.ignorem:
                if m.type == MessageType.SNAP and m.frm in self.nodes:
                    self.nodes[m.frm].rn.report_snapshot(m.to, failed=True)
                continue
            perc = self.dropm.get((m.frm, m.to), 0.0)
            if perc and self.rng.random() < perc:
                if m.type == MessageType.SNAP and m.frm in self.nodes:
                    self.nodes[m.frm].rn.report_snapshot(m.to, failed=True)
                continue
            out.append(m)
        return out

    # -- driving ---------------------------------------------------------------------------

    def send(self, *msgs: Message) -> None:
        """Deliver messages breadth-first until the network is quiet."""
        q = deque(self._filter(msgs))
        while True:
            while q:
                m = q.popleft()
                n = self.nodes.get(m.to)
                if n is None:
                    continue
                self.delivered.append(m)
                self.before_step(m)
                n.rn.step(m)
                if m.type == MessageType.SNAP and m.frm in self.nodes:
                    self.nodes[m.frm].rn.report_snapshot(m.to, failed=False)
                q.extend(self._filter(n.handle_ready()))
            for n in self.nodes.values():
                q.extend(self._filter(n.handle_ready()))
            self.after_round()
            if not q:
                return

    def before_step(self, m: Message) -> None:
        """Called before `m` is stepped into its node (a subclass may wake it first)."""

    def after_round(self) -> None:
        """Called after each round of deliveries and Readys."""

    def stabilize(self) -> None:
        self.send()

    def tick(self, node_id: int, times: int = 1) -> None:
        n = self.nodes[node_id]
        for _ in range(times):
            n.rn.tick()
            self.send(*n.handle_ready())

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for n in list(self.nodes.values()):
                n.rn.tick()
            self.stabilize()

    def campaign(self, node_id: int) -> None:
        self.nodes[node_id].rn.campaign()
        self.stabilize()

    def propose(self, node_id: int, data: bytes) -> None:
        self.nodes[node_id].rn.propose(data)
        self.stabilize()

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.state == StateType.LEADER]

    def leader(self) -> int:
        ls = self.leaders()
        assert len(ls) == 1, f"expected exactly one leader, got {ls}"
        return ls[0]

    def conf(self, node_id: int) -> ConfState:
        return self.nodes[node_id].raft.prs.conf_state()


def elected(ids=(1, 2, 3), leader=1, **cfg) -> Network:
    """A network of `ids` in which `leader` won an election."""
    net = Network(list(ids), **cfg)
    net.campaign(leader)
    assert net.leader() == leader
    return net


def change(net: Network, at: int, kind, node: int) -> None:
    """Propose a single-step conf change on node `at` and let it settle."""
    from nokvpy.raft.types import ConfChange

    net.nodes[at].rn.propose_conf_change(ConfChange(kind, node))
    net.stabilize()
