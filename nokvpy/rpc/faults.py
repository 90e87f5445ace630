"""Seeded network fault injection for tests and jepsen-lite.

Owns: `FaultRules`, the runtime-settable list of `FaultRule`s (drop probability, delay with
jitter, duplication, reordering, byte corruption, blackholes; filters by node and by request
body class name), its rule builders (partitions: symmetric, one-way, bridge, ring) and the
seeded decision for one message. A process gives its client and its server the same
`FaultRules` (where it does not, a rule acts only through the side that holds it), which
they consult only while it holds rules. Never sleeps itself, never writes to a connection (the client and the server act on
its verdicts).

Where each rule acts. A rule names the direction of the traffic (`src` sends to `dst`),
whichever side asks:

* requests (one-way ones included) are decided by the client that sends them and by the
  server that receives them; replies (`Response`, `ErrorReply`, `StreamItem`, `StreamEnd`)
  by the server that sends them and by the client that receives them, matching the type of
  the request they answer. So one side's rules suffice, and a rule from A to B also drops
  the replies A sends to B: traffic from A to B is lost while B to A flows (a one-way
  partition). A dropped message simply vanishes: the caller waits until its deadline, as
  on a real network.
* `drop` (probability) acts on requests and replies; `delay` + `jitter` on requests only.
* `corrupt` (probability, by the sender, requests and replies) damages bytes of the framed
  message after its checksum was computed; the receiver's frame check catches it and closes
  the connection. Half the time it changes one byte inside a value (the innermost byte or
  text string: a raft entry's key or value, a read's answer), which still decodes, so that a
  receiver that did not check would silently take wrong data; otherwise 1 to 3 bytes
  anywhere in the frame, header included.
* `duplicate` and `reorder` (probabilities, one-way requests: raft batches) are delivery
  faults, applied by the server that receives the request: it is handled twice (the copy
  right after, or up to `hold` seconds later, after newer ones), or held back until the
  next request on its connection has been handled (at most `hold` seconds). The receiver
  applies them, so each happens once even when both sides hold the rule.
* `blackhole` acts on every record of every kind, cancels included.

`partition` versus `blackhole`. A partition (`partition`, `isolate`, `one_way`, `bridge`,
`ring`: drop rules) cuts requests and replies between named nodes; jepsen-lite names servers
only, so clients and the operator still reach every node and get answers from it (a
partitioned leader still answers "not leader"), a client's cancel still reaches the server,
and whatever is not named keeps flowing. A blackhole (`blackhole`) makes a node's network go
silent while its sockets stay up: every record to or from it, from any peer (servers,
clients, the operator), of every kind (requests, one-way batches, replies, error replies,
stream items and ends, cancels) is swallowed, including replies to requests that were in
flight when it began. No connection is closed or reset, no error is answered: both sides
see nothing, and each caller times out at its own deadline. Unlike a paused process, the
blackholed one keeps running (its timers fire, it campaigns, it applies). New connections
still complete their handshake (set-up is not a record) and then carry nothing.

The admin records (`SetFaultRules`, `GetFaultRules`) and their replies are never subject
to faults, so rules can always be removed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from nokvpy.wire import FRAME_HEADER_SIZE, FaultRule, FaultRulesState, SetFaultRules

EXEMPT_TYPES = frozenset({"SetFaultRules", "GetFaultRules"})

REQUEST = "request"
REPLY = "reply"
CANCEL = "cancel"

DEFAULT_REORDER_HOLD = 0.05
"""How long a reordered message waits at most when its rule sets no `hold` (seconds)."""


class FaultVerdict(NamedTuple):
    drop: bool
    delay: float  # seconds
    # one-way requests, receiving side: deliver a copy after this many seconds (None: none)
    duplicate: float | None = None
    # one-way requests, receiving side: hold it back at most this many seconds (None: don't)
    reorder: float | None = None
    corrupt: bool = False  # sending side: damage the framed bytes
    blackhole: bool = False  # dropped by a blackhole rule

    @property
    def plain(self) -> bool:
        """Nothing to do beyond dropping or delaying."""
        return self.duplicate is None and self.reorder is None and not self.corrupt


NO_FAULT = FaultVerdict(False, 0.0)
BLACKHOLED = FaultVerdict(True, 0.0, blackhole=True)


def bridge_sides(nodes: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """Split `nodes` (in the order given) into two halves and the bridge between them: the
    middle node. Fewer than 3 nodes: no bridge, nothing to split."""
    if len(nodes) < 3:
        return [], None, []
    mid = len(nodes) // 2
    return list(nodes[:mid]), nodes[mid], list(nodes[mid + 1:])


def ring_cuts(nodes: Sequence[str], reach: int | None = None) -> dict[str, list[str]]:
    """For nodes on a ring (in the order given), the nodes each one must not see: all but its
    `reach` neighbours on either side. The default reach lets every node see a majority
    (itself included) and no two nodes the same one (Jepsen's majorities ring, for 5 or more
    nodes). The relation is symmetric; with few nodes nobody is cut."""
    n = len(nodes)
    if reach is None:
        reach = (n // 2 + 1) // 2
    cuts: dict[str, list[str]] = {}
    for i, node in enumerate(nodes):
        near = {nodes[(i + d) % n] for d in range(-reach, reach + 1)}
        far = [m for m in nodes if m not in near]
        if far:
            cuts[node] = far
    return cuts


class FaultRules:
    """Mutable, seeded fault rules. All methods are synchronous and cheap."""

    def __init__(self, seed: int = 0, rules: Iterable[FaultRule] = ()) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self.rules: tuple[FaultRule, ...] = tuple(rules)
        self.dropped = 0
        self.delayed = 0
        self.duplicated = 0
        self.reordered = 0
        self.corrupted = 0
        self.blackholed = 0

    @property
    def active(self) -> bool:
        return bool(self.rules)

    # ---- editing ------------------------------------------------------------------------

    def set(self, rules: Iterable[FaultRule], seed: int | None = None) -> None:
        """Replace every rule; reseed when `seed` is given."""
        self.rules = tuple(rules)
        if seed is not None:
            self.seed = seed
            self._rng = random.Random(seed)

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules = (*self.rules, rule)
        return rule

    def remove(self, label: str) -> int:
        """Remove the rules carrying `label`; return how many were removed."""
        kept = tuple(r for r in self.rules if r.label != label)
        removed = len(self.rules) - len(kept)
        self.rules = kept
        return removed

    def clear(self) -> None:
        self.rules = ()

    def heal(self) -> None:
        """Remove every rule (partitions, drops and delays): the network is whole again."""
        self.clear()

    # ---- builders -------------------------------------------------------------------------

    def partition(
        self, side_a: Iterable[str], side_b: Iterable[str], *, label: str = "partition"
    ) -> None:
        """Drop all traffic between the node names of `side_a` and `side_b`, both ways."""
        a, b = frozenset(side_a), frozenset(side_b)
        self.add(FaultRule(src=a, dst=b, drop=1.0, label=label))
        self.add(FaultRule(src=b, dst=a, drop=1.0, label=label))

    def one_way(self, src: Iterable[str], dst: Iterable[str], *, label: str = "one-way") -> None:
        """Lose everything `src` sends to `dst` (requests and replies) while `dst` to `src`
        flows: `dst` never hears `src`, and `src` hears `dst`'s requests but its answers
        never arrive."""
        self.add(FaultRule(src=frozenset(src), dst=frozenset(dst), drop=1.0, label=label))

    def bridge(self, nodes: Sequence[str], *, label: str = "bridge") -> str | None:
        """Cut `nodes` (in the order given) into two halves that cannot talk to each other and
        a bridge node, the middle one, that talks to both (Jepsen's bridge). Returns the
        bridge (None with fewer than 3 nodes: nothing is cut)."""
        side_a, bridge, side_b = bridge_sides(nodes)
        if bridge is not None:
            self.partition(side_a, side_b, label=label)
        return bridge

    def ring(self, nodes: Sequence[str], reach: int | None = None, *,
             label: str = "ring") -> None:
        """Each node (ring in the order given) sees only its `reach` neighbours on either
        side (see `ring_cuts`)."""
        for node, far in ring_cuts(nodes, reach).items():
            self.add(FaultRule(src=frozenset({node}), dst=frozenset(far), drop=1.0, label=label))

    def isolate(self, node: str, *, label: str = "isolate") -> None:
        """Drop all requests and replies to and from `node`."""
        self.add(FaultRule(src=frozenset({node}), drop=1.0, label=label))
        self.add(FaultRule(dst=frozenset({node}), drop=1.0, label=label))

    def blackhole(self, node: str, *, label: str = "blackhole") -> None:
        """Swallow every record to and from `node`, connections left open (module docstring:
        how this differs from a partition)."""
        self.add(FaultRule(src=frozenset({node}), blackhole=True, label=label))
        self.add(FaultRule(dst=frozenset({node}), blackhole=True, label=label))

    def _add_matching(self, src: Iterable[str], dst: Iterable[str],
                      message_types: Iterable[str], label: str, **effect: Any) -> None:
        """Add one rule with `effect` (FaultRule fields) for the matching messages."""
        self.add(FaultRule(frozenset(src), frozenset(dst), frozenset(message_types),
                           label=label, **effect))

    def drop(
        self,
        probability: float,
        *,
        src: Iterable[str] = (),
        dst: Iterable[str] = (),
        message_types: Iterable[str] = (),
        label: str = "drop",
    ) -> None:
        self._add_matching(src, dst, message_types, label, drop=probability)

    def delay(
        self,
        seconds: float,
        jitter: float = 0.0,
        *,
        src: Iterable[str] = (),
        dst: Iterable[str] = (),
        message_types: Iterable[str] = (),
        label: str = "delay",
    ) -> None:
        self._add_matching(src, dst, message_types, label, delay=seconds, jitter=jitter)

    def duplicate(
        self,
        probability: float,
        hold: float = 0.0,
        *,
        src: Iterable[str] = (),
        dst: Iterable[str] = (),
        message_types: Iterable[str] = (),
        label: str = "duplicate",
    ) -> None:
        """Deliver a matching one-way request twice with `probability`; the copy right after
        it (`hold` 0) or uniform(0, `hold`) seconds later, after newer messages."""
        self._add_matching(src, dst, message_types, label, duplicate=probability, hold=hold)

    def reorder(
        self,
        probability: float,
        hold: float = 0.0,
        *,
        src: Iterable[str] = (),
        dst: Iterable[str] = (),
        message_types: Iterable[str] = (),
        label: str = "reorder",
    ) -> None:
        """Hold a matching one-way request back with `probability`: it is delivered right
        after the next request that arrives on its connection, or after uniform(0, `hold`)
        seconds (0: DEFAULT_REORDER_HOLD) if none comes first."""
        self._add_matching(src, dst, message_types, label, reorder=probability, hold=hold)

    def corrupt(
        self,
        probability: float,
        *,
        src: Iterable[str] = (),
        dst: Iterable[str] = (),
        message_types: Iterable[str] = (),
        label: str = "corrupt",
    ) -> None:
        """Damage bytes of a matching framed request or reply with `probability`."""
        self._add_matching(src, dst, message_types, label, corrupt=probability)

    # ---- admin records --------------------------------------------------------------------

    def apply(self, request: SetFaultRules) -> FaultRulesState:
        self.set(request.rules, request.seed)
        return self.state()

    def state(self) -> FaultRulesState:
        return FaultRulesState(self.seed, self.rules, self.dropped, self.delayed,
                               self.duplicated, self.reordered, self.corrupted, self.blackholed)

    # ---- deciding -------------------------------------------------------------------------

    def decide(self, src: str, dst: str, message_type: str, *, kind: str = REQUEST,
               one_way: bool = False, sending: bool = True) -> FaultVerdict:
        """What happens to one message from node `src` to node `dst`.

        `message_type` is the request body's class name (for a reply: the request's);
        `kind` is REQUEST, REPLY or CANCEL; `one_way` marks a one-way request; `sending`
        says whether the sender asks (corrupt is the sender's; duplicate and reorder, the
        receiver's)."""
        if not self.rules or message_type in EXEMPT_TYPES:
            return NO_FAULT
        drop = False
        delay = 0.0
        duplicate: float | None = None
        reorder: float | None = None
        corrupt = False
        rng = self._rng
        for r in self.rules:
            if r.src and src not in r.src:
                continue
            if r.dst and dst not in r.dst:
                continue
            if r.message_types and message_type not in r.message_types:
                continue
            if r.blackhole:
                self.blackholed += 1
                return BLACKHOLED
            if kind == CANCEL:
                continue
            if r.drop >= 1.0 or (r.drop > 0.0 and rng.random() < r.drop):
                drop = True
            if kind == REQUEST and (r.delay or r.jitter):
                delay += r.delay + (rng.uniform(0.0, r.jitter) if r.jitter else 0.0)
            if sending:
                if r.corrupt >= 1.0 or (r.corrupt > 0.0 and rng.random() < r.corrupt):
                    corrupt = True
            elif one_way and kind == REQUEST:
                if r.duplicate >= 1.0 or (r.duplicate > 0.0 and rng.random() < r.duplicate):
                    after = rng.uniform(0.0, r.hold) if r.hold > 0 else 0.0
                    duplicate = after if duplicate is None else max(duplicate, after)
                if r.reorder >= 1.0 or (r.reorder > 0.0 and rng.random() < r.reorder):
                    held = rng.uniform(0.0, r.hold if r.hold > 0 else DEFAULT_REORDER_HOLD)
                    reorder = held if reorder is None else max(reorder, held)
        if drop:
            self.dropped += 1
            return FaultVerdict(True, 0.0)
        if delay:
            self.delayed += 1
        if duplicate is None and reorder is None and not corrupt:
            return FaultVerdict(False, delay) if delay else NO_FAULT
        self.duplicated += duplicate is not None
        self.reordered += reorder is not None
        self.corrupted += corrupt
        return FaultVerdict(False, delay, duplicate, reorder, corrupt)

    def corrupt_frame(self, data: bytes) -> bytes:
        """A copy of the framed message `data`, damaged (seeded): half the time one byte of
        one of its innermost byte strings (`value_spans`), else 1 to 3 bytes anywhere."""
        rng = self._rng
        out = bytearray(data)
        if rng.random() < 0.5:
            spans = value_spans(data, FRAME_HEADER_SIZE)
            if spans:
                start, end = spans[rng.randrange(len(spans))]
                out[rng.randrange(start, end)] ^= rng.randrange(1, 256)
                return bytes(out)
        n = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        for at in rng.sample(range(len(out)), min(n, len(out))):
            out[at] ^= rng.randrange(1, 256)
        return bytes(out)


# msgpack header bytes: strings (byte and text) -> size of their length field; fixed-size
# scalars and container headers -> bytes after the header byte; ext -> size of the length.
_STR_LEN = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN = frozenset({0xC4, 0xC5, 0xC6})
_ARRAY = frozenset({0xDC, 0xDD})
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4,
          0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_EXT_LEN = {0xC7: 1, 0xC8: 2, 0xC9: 4}


def value_spans(data: bytes, start: int = 0, end: int | None = None,
                depth: int = 0) -> list[tuple[int, int]]:
    """(start, end) offsets of the innermost non-empty byte and text strings in the msgpack
    bytes `data[start:end]`: a byte string holding a msgpack record (a raft entry's command)
    is replaced by the strings inside it. Reads the token stream only (no msgpack import:
    this is fault injection, not decoding); [] when the bytes are not a whole msgpack
    token stream."""
    tokens = _string_tokens(data, start, len(data) if end is None else end)
    spans: list[tuple[int, int]] = []
    for header, lo, hi in tokens or ():
        if hi == lo:
            continue
        if header in _BIN and depth < 4 and (0x90 <= data[lo] <= 0x9F or data[lo] in _ARRAY):
            inner = value_spans(data, lo, hi, depth + 1)
            if inner:
                spans += inner
                continue
        spans.append((lo, hi))
    return spans


def _string_tokens(data: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(header byte, start, end) of every string token in `data[start:end]`, or None when the
    bytes there are not a whole msgpack token stream."""
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        b = data[pos]
        if b <= 0x7F or b >= 0xE0 or 0x80 <= b <= 0x9F:  # fixint, fixmap, fixarray
            pos += 1
            continue
        if 0xA0 <= b <= 0xBF:  # fixstr
            lo = pos + 1
            pos = lo + (b & 0x1F)
        elif b in _STR_LEN:
            lo = pos + 1 + _STR_LEN[b]
            pos = lo + int.from_bytes(data[pos + 1:lo], "big")
        elif b in _FIXED:
            pos += 1 + _FIXED[b]
            continue
        elif b in _EXT_LEN:
            k = _EXT_LEN[b]
            pos += 2 + k + int.from_bytes(data[pos + 1:pos + 1 + k], "big")
            continue
        else:
            return None
        out.append((b, lo, pos))
    return out if pos == end else None
