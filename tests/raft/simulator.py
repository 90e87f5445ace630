"""Seeded whole-cluster randomized simulator for the raft core (FoundationDB style, tier 1).

One `random.Random(seed)` drives everything: which event happens next (deliver / drop /
duplicate / delay a message, tick, handle a Ready, propose, read, partition, crash, restart,
pause, membership change, leader transfer, snapshot + compaction). Each node's `MemoryStorage`
is its disk: the simulator writes to it only while handling a Ready, so a crash keeps exactly
what was persisted and a restart rebuilds the node from it (a crash may also hit between
persisting a Ready and sending its messages). The same seed replays the same schedule exactly.

Time: one step is one unit of simulated time. Each node is fed ticks like the driver feeds
them: through its own `ElapsedTicks(TICK_INTERVAL, start)` (nokvpy/raft/ticks.py), taking the
ticks due before it handles anything (a message, a client request) and when its ticker wakes
(the "tick" action), at most `MAX_FEED` at a time. With `unsafe_lease` (or
`NOKV_UNSAFE_LEASE=1`) the clocks hand out at most one tick per take: the old rule, under
which a paused leader believes its lease outlived the pause.

Faults beyond drop / duplicate / reorder / partition / crash: a message is sometimes delayed
longer than an election timeout; a partition holds about half the messages it blocks (the
connection survives) and delivers them late once healed; a node is sometimes paused (SIGSTOP:
it stops ticking and receiving, keeps its volatile state, messages and client reads to it
queue; on resume it first takes the ticks it missed, then serves the queued reads, then gets
its queued messages, late); every node numbers its read contexts from 1, so contexts collide
across nodes. Each seed draws a fault mix (`Options.nemesis`): "mixed" (everything) or
"pause" (mostly leader pauses on an otherwise healthy cluster).

Checked after every step (`Simulator.check_step`) and on every apply:

- election safety: at most one leader per term;
- state machine safety: every applied entry equals the one applied at that index anywhere
  else, and each node applies a gap-free prefix of one global sequence (a digest chain);
- leader completeness: a node that becomes leader holds every entry anyone applied;
- log matching (every few steps and at the end): each node's log agrees with the global
  sequence up to its commit index;
- linearizable reads: a ReadState answered for a read must have an index >= every index
  applied (i.e. committed and acknowledged) anywhere when the client issued the read (reads
  are keyed by (node, context), as a driver keys them). This covers ReadIndex rounds and
  lease reads alike.

Switches that restore known bugs, to show the simulator catches them (see test_simulator.py):
`unsafe_lease` / `NOKV_UNSAFE_LEASE=1` and `unsafe_readindex` / `NOKV_UNSAFE_READINDEX=1`
(ReadIndex acks matched by the caller's context instead of the leader's rounds).
"""

from __future__ import annotations

import os
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
from nokvpy.raft import read_only as read_only_module
from nokvpy.raft.ticks import MAX_FEED, ElapsedTicks

MT = MessageType
TICK_INTERVAL = 10.0  # simulated time (steps) per raft tick


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


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
    pauses: int = 0
    held: int = 0  # messages held by a partition and delivered late after it healed
    long_delays: int = 0
    ctx_collisions: int = 0  # reads issued while another node had one with the same context
    resume_ticks_fed: int = 0  # ticks fed to nodes as they resumed (1 per resume if unsafe)

    def add(self, other: SimStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        return ", ".join(f"{n}={getattr(self, n)}" for n in self.__slots__)


# Totals over every schedule run in this process (reported by conftest.py).
TOTALS = SimStats()
# Lines for the session summary (e.g. which seeds an unsafe switch was caught in).
REPORT: list[str] = []


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
    clock: ElapsedTicks | None = None
    read_seq: int = 0  # this node's read contexts: b"1", b"2", ... (they collide across nodes)
    paused_until: int = -1  # >= 0 while paused (SIGSTOP), the step it resumes at
    queued_reads: list[bytes] = field(default_factory=list)  # client reads sent while paused


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
    nemesis: str = "mixed"  # or "pause" (see from_seed)
    leader_bias: float = 0.6
    # Known bugs restored on purpose (the simulator must catch them).
    unsafe_lease: bool = False
    unsafe_readindex: bool = False
    # Model a driver that numbers read contexts from 1 again after a restart, as
    # nokvpy/replication/driver.py does (off: a node's numbering goes on across restarts).
    # Unsafe with the current core: see test_simulator.py.
    ctx_restart_from_1: bool = False

    @classmethod
    def from_seed(cls, rng: random.Random) -> Options:
        o = cls()
        o.n = rng.choice([3, 3, 5])
        o.read_only = rng.choice([ReadOnlyOption.SAFE, ReadOnlyOption.LEASE_BASED])
        # Without check-quorum (etcd's default) a deposed leader believes it leads until it
        # hears a higher term: the window for stale ReadIndex answers.
        o.check_quorum = o.read_only == ReadOnlyOption.LEASE_BASED or rng.random() < 0.5
        o.pre_vote = rng.random() < 0.7
        o.max_size_per_msg = rng.choice([None, 1 << 20, 40])
        o.max_inflight = rng.choice([2, 16, 256])
        o.max_delay = rng.choice([0, 3, 10])
        # A lease lasts election_tick - LEASE_MARGIN_TICKS (3) ticks: too short to matter at 4.
        lease = o.read_only == ReadOnlyOption.LEASE_BASED
        o.election_tick = rng.choice([6, 10, 10] if lease else [4, 6, 10])
        o.lazy_commit = rng.random() < 0.5
        # Drawn last: the other options keep their seeds. "pause" is the SIGSTOP nemesis:
        # frequent pauses (mostly of the leader) on an otherwise mostly healthy cluster, where
        # the others do elect a new leader and commit while one sleeps.
        o.nemesis = "pause" if rng.random() < 0.5 else "mixed"
        # Clients ask whoever claims to lead with this probability, else any node. With 0 every
        # node's read counter advances alike, so contexts collide at the same time.
        o.leader_bias = rng.choice([0.0, 0.6])
        return o


class Simulator:
    def __init__(
        self,
        seed: int,
        steps: int | None = None,
        *,
        unsafe_lease: bool | None = None,
        unsafe_readindex: bool | None = None,
        read_only: ReadOnlyOption | None = None,
        nemesis: str | None = None,
        ctx_restart_from_1: bool = False,
    ) -> None:
        """`unsafe_*` None: take the switch from the environment (NOKV_UNSAFE_LEASE /
        NOKV_UNSAFE_READINDEX). `read_only` and `nemesis` force the read mode and the fault
        mix instead of drawing them from the seed (the rest of the schedule still is)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.opts = Options.from_seed(self.rng)
        o = self.opts
        if steps is not None:
            o.steps = steps
        self.forced_env: list[str] = []  # how to force the same options when replaying
        if read_only is not None:
            self.forced_env.append(f"NOKV_SIM_READ_ONLY={'lease' if read_only else 'safe'}")
            o.read_only = read_only
            if read_only == ReadOnlyOption.LEASE_BASED:
                o.check_quorum = True
                o.election_tick = max(o.election_tick, 6)
        o.unsafe_lease = env_flag("NOKV_UNSAFE_LEASE") if unsafe_lease is None else unsafe_lease
        o.unsafe_readindex = (
            env_flag("NOKV_UNSAFE_READINDEX") if unsafe_readindex is None
            else unsafe_readindex
        )
        if nemesis is not None:
            self.forced_env.append(f"NOKV_SIM_NEMESIS={nemesis}")
            o.nemesis = nemesis
        o.ctx_restart_from_1 = ctx_restart_from_1
        override = self.NEMESIS_WEIGHTS[o.nemesis]
        self.action_names = [a for a, _ in self.ACTIONS]
        self.action_weights = [override.get(a, w) for a, w in self.ACTIONS]
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
        self.held: set[int] = set()  # seqs of messages a partition holds (not dropped)
        self.msg_seq = 0
        self.partition: tuple[frozenset[int], frozenset[int]] | None = None
        self.cut_links: set[tuple[int, int]] = set()
        # Global history.
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.applied_terms: list[int] = [0]  # index -> term of the entry applied there
        self.applied_digests: list[int] = [0]  # index -> digest after applying it
        # (node, ctx) -> required index: everything applied anywhere when the read was issued.
        self.reads: dict[tuple[int, bytes], int] = {}
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
        n.clock = ElapsedTicks(TICK_INTERVAL, self.now(), unsafe=o.unsafe_lease)
        n.paused_until = -1
        n.queued_reads = []
        if o.ctx_restart_from_1:
            n.read_seq = 0

    def now(self) -> float:
        return float(self.step_no)

    def election_steps(self) -> int:
        return int(self.opts.election_tick * TICK_INTERVAL)

    def alive(self) -> list[int]:
        """Nodes whose process exists (paused ones included)."""
        return [i for i, n in self.nodes.items() if n.rn is not None]

    def running(self) -> list[int]:
        """Alive and not paused: the nodes that handle events."""
        return [i for i, n in self.nodes.items() if n.rn is not None and n.paused_until < 0]

    def leader_id(self) -> int:
        """The running node that leads the highest term (NONE if none)."""
        best, best_term = NONE, -1
        for i in self.running():
            r = self.nodes[i].rn.raft
            if r.state == StateType.LEADER and r.term > best_term:
                best, best_term = i, r.term
        return best

    def replay_hint(self) -> str:
        o = self.opts
        env = [f"NOKV_SIM_SEED={self.seed}", *self.forced_env]
        if o.unsafe_lease:
            env.append("NOKV_UNSAFE_LEASE=1")
        if o.unsafe_readindex:
            env.append("NOKV_UNSAFE_READINDEX=1")
        return (
            f"replay with {' '.join(env)} python -m pytest tests/raft/test_simulator.py"
            f" -k replay  (or simulator.Simulator({self.seed}, ...) with the options below)"
        )

    def fail(self, what: str) -> None:
        raise SimulationError(
            f"{what}\n  at step {self.step_no}; {self.replay_hint()}\n"
            f"  options: {self.opts}\n  last events:\n    " + "\n    ".join(self.trace)
        )

    # -- time ----------------------------------------------------------------------------

    def feed(self, nid: int) -> int:
        """Feed a running node the ticks due on its clock (as the driver does at the start of
        every turn, before it steps any message or read). Returns how many."""
        n = self.nodes[nid]
        k = min(n.clock.take(self.now()), MAX_FEED)
        rn = n.rn
        for _ in range(k):
            rn.tick()
            if self.opts.lazy_commit and self.rng.random() < 0.5:
                rn.flush_commit()  # what the driver does when no append followed a commit
        return k

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
        if self.rng.random() < 0.01:
            # Longer than an election timeout: a round's answer arrives after a new leader
            # was elected, a vote after the election it was for, an append after a new term.
            et = self.election_steps()
            delay = self.rng.randint(et, 3 * et)
            self.stats.long_delays += 1
        self.inflight.append((self.step_no + delay, self.msg_seq, m))

    def report_snap(self, m: Message, failed: bool) -> None:
        if m.type == MT.SNAP:
            src = self.nodes.get(m.frm)
            if src is not None and src.rn is not None:
                src.rn.report_snapshot(m.to, failed)

    def deliver_one(self) -> None:
        """Deliver (or drop, or hold) one message chosen among those due, not to a paused
        node (its messages queue until it resumes) and not held by a partition."""
        step, held, can_talk = self.step_no, self.held, self.can_talk  # the hot loop
        paused = {i for i, n in self.nodes.items() if n.paused_until >= 0}
        ready = [
            k
            for k, (at, seq, m) in enumerate(self.inflight)
            if at <= step
            and m.to not in paused
            and (seq not in held or can_talk(m.frm, m.to))
        ]
        if not ready:
            return
        k = self.rng.choice(ready)
        _, seq, m = self.inflight[k]
        if (
            not self.can_talk(m.frm, m.to)
            and seq not in self.held
            and m.type != MT.SNAP
            and self.rng.random() < 0.5
        ):
            # The connection survives the partition (TCP retransmits): the message is held
            # and delivered, late, once the link heals.
            self.held.add(seq)
            self.stats.held += 1
            return
        self.held.discard(seq)
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
        self.feed(m.to)
        self.trace.append(
            f"{self.step_no}: deliver {m.type.name} {m.frm}->{m.to} t{m.term} "
            f"i{m.index} n{len(m.entries)} c{m.commit} rej={m.reject}"
            + (f" ctx={m.context!r}" if m.context else "")
        )
        dst.rn.step(m)
        self.report_snap(m, failed=False)

    # -- Ready handling (persist, send, apply, advance) ----------------------------------

    def handle_ready(self, nid: int) -> None:
        n = self.nodes[nid]
        rn = n.rn
        if rn is None or n.paused_until >= 0 or not rn.has_ready():
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
        required = self.reads.pop((nid, ctx), None)
        if required is None:
            return  # a duplicate answer, or one for a read of a crashed incarnation
        self.trace.append(f"{self.step_no}: read {ctx!r} on {nid} answered at {index}")
        if index < required:
            r = self.nodes[nid].rn.raft
            self.fail(
                f"linearizability: read {ctx!r} on node {nid} got index {index} but index "
                f"{required} was already applied (acknowledged) when it was issued "
                f"(node {nid} is {r.state.name} of term {r.term}, "
                f"read mode {self.opts.read_only.name})"
            )
        self.stats.reads_checked += 1

    # -- faults and client actions ------------------------------------------------------

    def crash(self, nid: int) -> None:
        n = self.nodes[nid]
        n.rn = None
        n.paused_until = -1
        n.queued_reads = []
        if self.opts.ctx_restart_from_1:
            # The clients of the dead process got errors; its numbering starts again.
            for key in [k for k in self.reads if k[0] == nid]:
                del self.reads[key]
        self.stats.crashes += 1

    def maybe_pause(self) -> None:
        """SIGSTOP one node (most often the leader) for up to a few election timeouts."""
        if any(n.paused_until >= 0 for n in self.nodes.values()):
            return
        running = self.running()
        if not running:
            return
        lid = self.leader_id()
        nid = lid if lid != NONE and self.rng.random() < 0.8 else self.rng.choice(running)
        et = self.election_steps()
        # Mostly long enough for the others to elect a new leader and commit (a randomized
        # election timeout is 1-2 election timeouts), sometimes shorter.
        lo = et // 2 if self.rng.random() < 0.3 else 2 * et
        until = self.step_no + self.rng.randint(lo, 5 * et)
        self.nodes[nid].paused_until = until
        self.stats.pauses += 1
        self.trace.append(f"{self.step_no}: pause {nid} until {until}")

    def resume(self, nid: int) -> None:
        """SIGCONT: the ticks missed first, then the queued client reads, then the queued
        messages, late."""
        n = self.nodes[nid]
        n.paused_until = -1
        due = n.clock.due(self.now())
        fed = self.feed(nid)
        self.stats.resume_ticks_fed += fed
        self.trace.append(f"{self.step_no}: resume {nid} ({due} ticks due, {fed} fed)")
        reads, n.queued_reads = n.queued_reads, []
        for ctx in reads:
            n.rn.read_index(ctx)
        late = self.opts.max_delay + 1
        for k, (at, seq, m) in enumerate(self.inflight):
            if m.to == nid and at <= self.step_no:
                self.inflight[k] = (self.step_no + self.rng.randint(1, late), seq, m)

    def resume_due(self) -> None:
        for nid, n in self.nodes.items():
            if 0 <= n.paused_until <= self.step_no and n.rn is not None:
                self.resume(nid)

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
        running = self.running()
        if not running:
            return
        nid = self.rng.choice(running)
        self.feed(nid)
        self.prop_seq += 1
        try:
            self.nodes[nid].rn.propose(b"w%d" % self.prop_seq)
        except ProposalDroppedError:
            pass

    def read(self) -> None:
        alive = self.alive()
        if not alive:
            return
        # Clients mostly ask whoever claims to lead (possibly a deposed, partitioned or paused
        # leader).
        leaders = [i for i in alive if self.nodes[i].rn.raft.state == StateType.LEADER]
        bias = self.opts.leader_bias
        nid = self.rng.choice(leaders if leaders and self.rng.random() < bias else alive)
        n = self.nodes[nid]
        n.read_seq += 1
        ctx = b"%d" % n.read_seq  # every node counts from 1: contexts collide across nodes
        if any(k[1] == ctx and k[0] != nid for k in self.reads):
            self.stats.ctx_collisions += 1
        # Everything applied anywhere was acknowledged to some client before this read.
        self.reads[(nid, ctx)] = len(self.applied_terms) - 1
        if n.paused_until >= 0:
            n.queued_reads.append(ctx)  # the request waits in the stopped process's socket
            return
        self.feed(nid)
        n.rn.read_index(ctx)

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
        running = self.running()
        if not running:
            return
        nid = self.rng.choice(running)
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
        """The nodes' tickers wake: each running node takes the ticks due on its clock."""
        for nid in self.running():
            self.feed(nid)

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

    ACTIONS = (  # the "mixed" nemesis; see NEMESIS_WEIGHTS for the others
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
        ("pause", 0.4),
    )
    NEMESIS_WEIGHTS = {
        "mixed": {},
        "pause": {
            "partition": 0.05, "crash": 0.05, "restart": 3.0, "conf": 0.1, "transfer": 0.1,
            "pause": 1.0, "read": 10.0,
        },
    }

    def step(self) -> None:
        self.step_no += 1
        self.resume_due()
        action = self.rng.choices(self.action_names, self.action_weights)[0]
        if action == "deliver":
            # A burst: a node's loop drains several messages per turn, which keeps the backlog
            # (and so the round-trip time, in ticks) small enough for leases to hold.
            for _ in range(self.rng.randint(1, 12)):
                self.deliver_one()
        elif action == "ready":
            running = self.running()
            if running:
                self.handle_ready(self.rng.choice(running))
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
        elif action == "pause":
            self.maybe_pause()
        self.check_step()
        if self.step_no % 25 == 0:
            self.check_logs()

    def run(self) -> SimStats:
        saved_unsafe = read_only_module.UNSAFE_MATCH_BY_CONTEXT
        read_only_module.UNSAFE_MATCH_BY_CONTEXT = self.opts.unsafe_readindex
        try:
            return self._run()
        finally:
            read_only_module.UNSAFE_MATCH_BY_CONTEXT = saved_unsafe

    def _run(self) -> SimStats:
        try:
            for _ in range(self.opts.steps):
                self.step()
            # Heal everything and let the cluster settle; check the final state.
            self.partition = None
            self.cut_links = set()
            for nid in list(self.nodes):
                n = self.nodes[nid]
                if n.rn is None:
                    self.start(nid)
                elif n.paused_until >= 0:
                    self.resume(nid)
            for _ in range(1000):
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
                f"{type(e).__name__}: {e}\n  at step {self.step_no}; {self.replay_hint()}\n"
                f"  options: {self.opts}\n  last events:\n    " + "\n    ".join(self.trace)
            ) from e
        self.stats.steps = self.step_no
        TOTALS.add(self.stats)
        return self.stats


def run_seed(seed: int, steps: int | None = None, **kw) -> SimStats:
    return Simulator(seed, steps, **kw).run()
