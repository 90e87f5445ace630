"""Seeded whole-cluster randomized simulator for the raft core (FoundationDB style, tier 1).

One `random.Random(seed)` drives everything: which event happens next (deliver / drop /
duplicate / delay a message, tick, handle a Ready, propose, read, partition, crash, restart,
membership change, leader transfer, snapshot + compaction). Each node's `MemoryStorage` is its
disk: the simulator writes to it only while handling a Ready, so a crash keeps exactly what was
persisted and a restart rebuilds the node from it (a crash may also hit between persisting a
Ready and sending its messages). The same seed replays the same schedule exactly.

Checked after every step (`Simulator.check_step`) and on every apply:

- election safety: at most one leader per term;
- state machine safety: every applied entry equals the one applied at that index anywhere
  else, and each node applies a gap-free prefix of one global sequence (a digest chain);
- leader completeness: a node that becomes leader holds every entry anyone applied;
- log matching (every few steps and at the end): each node's log agrees with the global
  sequence up to its commit index;
- linearizable ReadIndex: a read answered with index i was issued after every write applied
  (i.e. acknowledged) anywhere at issue time only if i >= that write's index.
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from dataclasses import dataclass, field

from nokvpy.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDroppedError,
    RawNode,
    ReadOnlyOption,
    StateType,
)

MT = MessageType


class SimulationError(AssertionError):
    pass


@dataclass(slots=True)
class SimStats:
    schedules: int = 0
    steps: int = 0
    messages: int = 0
    dropped: int = 0
    duplicated: int = 0
    partitions: int = 0
    crashes: int = 0
    restarts: int = 0
    conf_changes: int = 0  # applied (committed) membership changes
    transfers: int = 0
    snapshots: int = 0
    snapshots_installed: int = 0
    reads_checked: int = 0
    applied_entries: int = 0
    elections: int = 0
    lease_schedules: int = 0
    lazy_commit_schedules: int = 0

    def add(self, other: SimStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        return ", ".join(f"{n}={getattr(self, n)}" for n in self.__slots__)


# Totals over every schedule run in this process (reported by conftest.py).
TOTALS = SimStats()


def encode_sm(index: int, digest: int) -> bytes:
    return f"{index}:{digest}".encode()


def decode_sm(data: bytes) -> tuple[int, int]:
    if not data:
        return 0, 0
    a, b = data.decode().split(":")
    return int(a), int(b)


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage
    rn: RawNode | None = None
    sm_index: int = 0  # state machine: applied index and digest chain
    sm_digest: int = 0
    conf_state: ConfState = field(default_factory=ConfState)
    checked_leader_term: int = -1


@dataclass
class Options:
    n: int = 3
    steps: int = 2000
    pre_vote: bool = True
    check_quorum: bool = True
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE
    max_size_per_msg: int | None = 1 << 20
    max_inflight: int = 256
    max_delay: int = 6
    election_tick: int = 10
    lazy_commit: bool = False

    @classmethod
    def from_seed(cls, rng: random.Random) -> Options:
        o = cls()
        o.n = rng.choice([3, 3, 5])
        o.read_only = rng.choice([ReadOnlyOption.SAFE, ReadOnlyOption.LEASE_BASED])
        o.check_quorum = o.read_only == ReadOnlyOption.LEASE_BASED or rng.random() < 0.7
        o.pre_vote = rng.random() < 0.7
        o.max_size_per_msg = rng.choice([None, 1 << 20, 40])
        o.max_inflight = rng.choice([2, 16, 256])
        o.max_delay = rng.choice([0, 3, 10])
        o.election_tick = rng.choice([4, 6, 10])
        o.lazy_commit = rng.random() < 0.5  # drawn last: the other options keep their seeds
        return o


class Simulator:
    def __init__(self, seed: int, steps: int | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.opts = Options.from_seed(self.rng)
        if steps is not None:
            self.opts.steps = steps
        self.stats = SimStats(schedules=1)
        if self.opts.read_only == ReadOnlyOption.LEASE_BASED:
            self.stats.lease_schedules = 1
        if self.opts.lazy_commit:
            self.stats.lazy_commit_schedules = 1
        self.step_no = 0
        self.trace: deque[str] = deque(maxlen=40)
        self.initial = list(range(1, self.opts.n + 1))
        self.next_id = self.opts.n + 1
        self.nodes: dict[int, SimNode] = {}
        # (deliver_at, seq, msg)
        self.inflight: list[tuple[int, int, Message]] = []
        self.msg_seq = 0
        self.partition: tuple[frozenset[int], frozenset[int]] | None = None
        self.cut_links: set[tuple[int, int]] = set()
        # Global history.
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.applied_terms: list[int] = [0]  # index -> term of the entry applied there
        self.applied_digests: list[int] = [0]  # index -> digest after applying it
        self.reads: dict[bytes, int] = {}  # ctx -> required index at issue time
        self.read_seq = 0
        self.prop_seq = 0
        for i in self.initial:
            self.nodes[i] = SimNode(i, MemoryStorage())
            self.start(i)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, nid: int) -> None:
        n = self.nodes[nid]
        snap = n.storage.snapshot()
        o = self.opts
        cfg = Config(
            nid,
            n.storage,
            applied=snap.metadata.index,
            election_tick=o.election_tick,
            check_quorum=o.check_quorum,
            pre_vote=o.pre_vote,
            read_only_option=o.read_only,
            max_size_per_msg=o.max_size_per_msg,
            max_inflight_msgs=o.max_inflight,
            lazy_commit_broadcast=o.lazy_commit,
            rng=random.Random(self.rng.getrandbits(32)),
        )
        n.rn = RawNode(cfg)
        if nid in self.initial and n.storage.last_index() == 0:
            n.rn.bootstrap(self.initial)
        n.sm_index, n.sm_digest = decode_sm(snap.data)
        n.conf_state = snap.metadata.conf_state
        n.checked_leader_term = -1

    def alive(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.rn is not None]

    def leader_id(self) -> int:
        best, best_term = NONE, -1
        for i in self.alive():
            r = self.nodes[i].rn.raft
            if r.state == StateType.LEADER and r.term > best_term:
                best, best_term = i, r.term
        return best

    def fail(self, what: str) -> None:
        raise SimulationError(
            f"{what}\n  at step {self.step_no}; replay with NOKV_SIM_SEED={self.seed}\n"
            f"  options: {self.opts}\n  last events:\n    " + "\n    ".join(self.trace)
        )

    # -- network -------------------------------------------------------------------------

    def can_talk(self, a: int, b: int) -> bool:
        if (a, b) in self.cut_links:
            return False
        p = self.partition
        if p is None:
            return True
        return (a in p[0]) == (b in p[0])

    def enqueue(self, m: Message) -> None:
        self.msg_seq += 1
        delay = self.rng.randint(0, self.opts.max_delay) if self.opts.max_delay else 0
        self.inflight.append((self.step_no + delay, self.msg_seq, m))

    def report_snap(self, m: Message, failed: bool) -> None:
        if m.type == MT.SNAP:
            src = self.nodes.get(m.frm)
            if src is not None and src.rn is not None:
                src.rn.report_snapshot(m.to, failed)

    def deliver_one(self) -> None:
        ready = [k for k, (at, _, _) in enumerate(self.inflight) if at <= self.step_no]
        if not ready:
            return
        k = self.rng.choice(ready)
        _, _, m = self.inflight[k]
        dup = self.rng.random() < 0.03
        if dup:
            self.stats.duplicated += 1
        else:
            self.inflight[k] = self.inflight[-1]
            self.inflight.pop()
        dst = self.nodes.get(m.to)
        if (
            dst is None
            or dst.rn is None
            or not self.can_talk(m.frm, m.to)
            or self.rng.random() < 0.04
        ):
            self.stats.dropped += 1
            self.report_snap(m, failed=True)
            if self.rng.random() < 0.2:
                src = self.nodes.get(m.frm)
                if src is not None and src.rn is not None and m.type == MT.APP:
                    src.rn.report_unreachable(m.to)
            return
        self.stats.messages += 1
        self.trace.append(
            f"{self.step_no}: deliver {m.type.name} {m.frm}->{m.to} t{m.term} "
            f"i{m.index} n{len(m.entries)} c{m.commit} rej={m.reject}"
        )
        dst.rn.step(m)
        self.report_snap(m, failed=False)

    # -- Ready handling (persist, send, apply, advance) ----------------------------------

    def handle_ready(self, nid: int) -> None:
        n = self.nodes[nid]
        rn = n.rn
        if rn is None or not rn.has_ready():
            return
        rd = rn.ready()
        st = n.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        if self.rng.random() < 0.003:
            self.trace.append(f"{self.step_no}: crash {nid} after persisting a Ready")
            self.crash(nid)
            return
        for m in rd.messages:
            self.enqueue(m)
        if rd.snapshot is not None:
            meta = rd.snapshot.metadata
            idx, dig = decode_sm(rd.snapshot.data)
            if idx != meta.index:
                self.fail(f"snapshot data index {idx} != metadata index {meta.index}")
            if idx < len(self.applied_digests) and self.applied_digests[idx] != dig:
                self.fail(f"node {nid} installed snapshot {idx} whose state differs")
            n.sm_index, n.sm_digest = idx, dig
            n.conf_state = meta.conf_state
            self.stats.snapshots_installed += 1
            self.trace.append(f"{self.step_no}: {nid} installed snapshot {idx}")
        for e in rd.committed_entries:
            self.apply(n, e)
        for rs in rd.read_states:
            self.check_read(nid, rs.index, rs.request_ctx)
        rn.advance(rd)

    def apply(self, n: SimNode, e) -> None:
        if e.index != n.sm_index + 1:
            self.fail(f"node {n.id} applied index {e.index} after {n.sm_index} (gap or repeat)")
        digest = zlib.crc32(bytes([e.type]) + e.data, n.sm_digest)
        if e.index < len(self.applied_terms):
            if self.applied_terms[e.index] != e.term or self.applied_digests[e.index] != digest:
                self.fail(
                    f"state machine safety: node {n.id} applied (i{e.index}, t{e.term}) but "
                    f"t{self.applied_terms[e.index]} was applied there before"
                )
        else:
            self.applied_terms.append(e.term)
            self.applied_digests.append(digest)
            self.stats.applied_entries += 1
            if e.type == EntryType.CONF_CHANGE and e.index > len(self.initial):
                # First application anywhere of a membership change (not a bootstrap entry).
                self.stats.conf_changes += 1
                self.trace.append(f"{self.step_no}: conf change applied at {e.index}")
        n.sm_index = e.index
        n.sm_digest = digest
        if e.type == EntryType.CONF_CHANGE:
            n.conf_state = n.rn.apply_conf_change(ConfChange.decode(e.data))

    def check_read(self, nid: int, index: int, ctx: bytes) -> None:
        required = self.reads.pop(ctx, None)
        if required is None:
            return  # duplicate answer
        if index < required:
            self.fail(
                f"linearizability: read {ctx!r} on node {nid} got index {index} but index "
                f"{required} was already applied (acknowledged) when it was issued"
            )
        self.stats.reads_checked += 1

    # -- faults and client actions ------------------------------------------------------

    def crash(self, nid: int) -> None:
        self.nodes[nid].rn = None
        self.stats.crashes += 1

    def maybe_crash(self) -> None:
        alive = self.alive()
        voters = self.current_voters()
        down_voters = [v for v in voters if self.nodes.get(v) and self.nodes[v].rn is None]
        if len(down_voters) + 1 > (len(voters) - 1) // 2 or not alive:
            return
        nid = self.rng.choice(alive)
        self.trace.append(f"{self.step_no}: crash {nid}")
        self.crash(nid)

    def maybe_restart(self) -> None:
        down = [i for i, n in self.nodes.items() if n.rn is None]
        if down:
            nid = self.rng.choice(down)
            self.trace.append(f"{self.step_no}: restart {nid}")
            self.start(nid)
            self.stats.restarts += 1

    def toggle_partition(self) -> None:
        if self.partition is not None or self.cut_links:
            self.partition = None
            self.cut_links = set()
            self.trace.append(f"{self.step_no}: heal partition")
            return
        ids = sorted(self.nodes)
        lid = self.leader_id()
        if lid != NONE and self.rng.random() < 0.4:
            # Isolate the leader (the classic stale-leader / stale-read setup).
            self.partition = (frozenset([lid]), frozenset(i for i in ids if i != lid))
            self.stats.partitions += 1
            self.trace.append(f"{self.step_no}: isolate leader {lid}")
            return
        if self.rng.random() < 0.4:
            # Asymmetric / partial: cut a few random links (one direction or both).
            for a in ids:
                for b in ids:
                    if a != b and self.rng.random() < 0.25:
                        self.cut_links.add((a, b))
                        if self.rng.random() < 0.5:
                            self.cut_links.add((b, a))
            self.stats.partitions += 1
            self.trace.append(f"{self.step_no}: cut links {sorted(self.cut_links)}")
            return
        self.rng.shuffle(ids)
        k = self.rng.randint(1, max(1, len(ids) // 2))
        self.partition = (frozenset(ids[:k]), frozenset(ids[k:]))
        self.stats.partitions += 1
        self.trace.append(f"{self.step_no}: partition {sorted(ids[:k])} | {sorted(ids[k:])}")

    def propose(self) -> None:
        alive = self.alive()
        if not alive:
            return
        nid = self.rng.choice(alive)
        self.prop_seq += 1
        try:
            self.nodes[nid].rn.propose(b"w%d" % self.prop_seq)
        except ProposalDroppedError:
            pass

    def read(self) -> None:
        alive = self.alive()
        if not alive:
            return
        # Clients mostly ask whoever claims to lead (possibly a deposed, partitioned leader).
        leaders = [i for i in alive if self.nodes[i].rn.raft.state == StateType.LEADER]
        nid = self.rng.choice(leaders if leaders and self.rng.random() < 0.6 else alive)
        self.read_seq += 1
        ctx = b"r%d" % self.read_seq
        # Everything applied anywhere was acknowledged to some client before this read.
        self.reads[ctx] = len(self.applied_terms) - 1
        self.nodes[nid].rn.read_index(ctx)

    def current_voters(self) -> list[int]:
        lid = self.leader_id()
        if lid == NONE:
            return list(self.initial)
        return sorted(self.nodes[lid].rn.raft.prs.voters)

    def conf_change(self) -> None:
        lid = self.leader_id()
        if lid == NONE:
            return
        prs = self.nodes[lid].rn.raft.prs
        voters, learners = sorted(prs.voters), sorted(prs.learners)
        choices = []
        if len(self.nodes) < 7:
            choices.append("add")
        if learners:
            choices.append("promote")
        if len(voters) > 3:
            choices.append("remove")
        if learners and self.rng.random() < 0.3:
            choices.append("remove_learner")
        if not choices:
            return
        kind = self.rng.choice(choices)
        if kind == "add":
            nid = self.next_id
            cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        elif kind == "promote":
            nid = self.rng.choice(learners)
            cc = ConfChange(ConfChangeType.ADD_NODE, nid)
        elif kind == "remove":
            nid = self.rng.choice(voters)
            cc = ConfChange(ConfChangeType.REMOVE_NODE, nid)
        else:
            nid = self.rng.choice(learners)
            cc = ConfChange(ConfChangeType.REMOVE_NODE, nid)
        try:
            self.nodes[lid].rn.propose_conf_change(cc)
        except ProposalDroppedError:
            return
        self.trace.append(f"{self.step_no}: propose {cc.type.name} {nid} on {lid}")
        if kind == "add":
            self.next_id += 1
            self.nodes[nid] = SimNode(nid, MemoryStorage())
            self.start(nid)

    def transfer(self) -> None:
        lid = self.leader_id()
        if lid == NONE:
            return
        voters = sorted(self.nodes[lid].rn.raft.prs.voters)
        target = self.rng.choice(voters)
        self.trace.append(f"{self.step_no}: transfer {lid} -> {target}")
        self.nodes[lid].rn.transfer_leader(target)
        self.stats.transfers += 1

    def snapshot(self) -> None:
        alive = self.alive()
        if not alive:
            return
        nid = self.rng.choice(alive)
        n = self.nodes[nid]
        st = n.storage
        if n.sm_index <= st.snapshot().metadata.index or n.sm_index > st.last_index():
            return
        st.create_snapshot(n.sm_index, n.conf_state, encode_sm(n.sm_index, n.sm_digest))
        # Keep a few entries behind the snapshot sometimes (like a real compaction lag).
        ci = max(n.sm_index - self.rng.randint(0, 4), st.first_index())
        if ci >= st.first_index():
            st.compact(ci)
        self.stats.snapshots += 1
        self.trace.append(f"{self.step_no}: {nid} snapshot at {n.sm_index}, compact to {ci}")

    def tick(self) -> None:
        for nid in self.alive():
            rn = self.nodes[nid].rn
            rn.tick()
            if self.opts.lazy_commit and self.rng.random() < 0.5:
                rn.flush_commit()  # what the driver does when no append followed a commit

    # -- checks --------------------------------------------------------------------------

    def check_step(self) -> None:
        applied_max = len(self.applied_terms) - 1
        for nid in self.alive():
            n = self.nodes[nid]
            r = n.rn.raft
            if r.state != StateType.LEADER:
                continue
            prev = self.leaders.setdefault(r.term, nid)
            if prev != nid:
                self.fail(f"election safety: {prev} and {nid} both lead term {r.term}")
            if n.checked_leader_term != r.term:
                n.checked_leader_term = r.term
                self.stats.elections += 1
                self.check_leader_completeness(n, applied_max)

    def check_leader_completeness(self, n: SimNode, applied_max: int) -> None:
        log = n.rn.raft.raft_log
        if log.last_index() < applied_max:
            self.fail(
                f"leader completeness: leader {n.id} (term {n.rn.raft.term}) has last index "
                f"{log.last_index()} < applied {applied_max}"
            )
        first = log.first_index()
        for i in range(max(first, 1), applied_max + 1):
            if log.term(i) != self.applied_terms[i]:
                self.fail(
                    f"leader completeness: leader {n.id} has term {log.term(i)} at {i}, "
                    f"applied term {self.applied_terms[i]}"
                )

    def check_logs(self) -> None:
        """Log matching: every node's log agrees with the applied sequence up to its commit."""
        applied_max = len(self.applied_terms) - 1
        for nid in self.alive():
            log = self.nodes[nid].rn.raft.raft_log
            hi = min(log.committed, applied_max)
            for i in range(max(log.first_index(), 1), hi + 1):
                if log.term(i) != self.applied_terms[i]:
                    self.fail(
                        f"log matching: node {nid} has term {log.term(i)} at committed index "
                        f"{i}, applied term {self.applied_terms[i]}"
                    )

    # -- the schedule --------------------------------------------------------------------

    ACTIONS = (
        ("deliver", 50.0),
        ("ready", 30.0),
        ("tick", 10.0),
        ("propose", 10.0),
        ("read", 6.0),
        ("partition", 0.5),
        ("crash", 0.35),
        ("restart", 1.5),
        ("conf", 0.6),
        ("transfer", 0.3),
        ("snapshot", 0.8),
    )

    def step(self) -> None:
        self.step_no += 1
        names = [a for a, _ in self.ACTIONS]
        weights = [w for _, w in self.ACTIONS]
        action = self.rng.choices(names, weights)[0]
        if action == "deliver":
            self.deliver_one()
        elif action == "ready":
            alive = self.alive()
            if alive:
                self.handle_ready(self.rng.choice(alive))
        elif action == "tick":
            self.tick()
        elif action == "propose":
            self.propose()
        elif action == "read":
            self.read()
        elif action == "partition":
            self.toggle_partition()
        elif action == "crash":
            self.maybe_crash()
        elif action == "restart":
            self.maybe_restart()
        elif action == "conf":
            self.conf_change()
        elif action == "transfer":
            self.transfer()
        elif action == "snapshot":
            self.snapshot()
        self.check_step()
        if self.step_no % 25 == 0:
            self.check_logs()

    def run(self) -> SimStats:
        try:
            for _ in range(self.opts.steps):
                self.step()
            # Heal everything and let the cluster settle; check the final state.
            self.partition = None
            self.cut_links = set()
            for nid in list(self.nodes):
                if self.nodes[nid].rn is None:
                    self.start(nid)
            for _ in range(400):
                self.step_no += 1
                if self.step_no % 4 == 0:
                    self.tick()
                while any(at <= self.step_no for at, _, _ in self.inflight):
                    self.deliver_one()
                    for nid in self.alive():
                        self.handle_ready(nid)
                for nid in self.alive():
                    self.handle_ready(nid)
                self.check_step()
            self.check_logs()
        except SimulationError:
            raise
        except Exception as e:  # a crash inside the core is a failure of this seed too
            raise SimulationError(
                f"{type(e).__name__}: {e}\n  at step {self.step_no}; replay with "
                f"NOKV_SIM_SEED={self.seed}\n  options: {self.opts}\n  last events:\n    "
                + "\n    ".join(self.trace)
            ) from e
        self.stats.steps = self.step_no
        TOTALS.add(self.stats)
        return self.stats


def run_seed(seed: int, steps: int | None = None) -> SimStats:
    return Simulator(seed, steps).run()
