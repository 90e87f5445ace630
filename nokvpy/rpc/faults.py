"""Seeded network fault injection for tests and jepsen-lite.

Owns: `FaultRules`, the runtime-settable list of `FaultRule`s (partitions, drop probability,
delay with jitter, filters by node and by request body class name) and the seeded decision
for one request. The client applies them to outbound requests and the server to inbound
requests, sharing one `FaultRules` per process, so a partition drops traffic in both
directions and one side's rules suffice. A dropped request simply vanishes (the caller sees a
timeout), as on a real network. The admin records (`SetFaultRules`, `GetFaultRules`) are
never subject to faults, so a partition can always be healed. Never sleeps itself.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import NamedTuple

from nokvpy.wire import FaultRule, FaultRulesState, SetFaultRules

EXEMPT_TYPES = frozenset({"SetFaultRules", "GetFaultRules"})


class FaultVerdict(NamedTuple):
    drop: bool
    delay: float  # seconds


NO_FAULT = FaultVerdict(False, 0.0)


class FaultRules:
    """Mutable, seeded fault rules. All methods are synchronous and cheap."""

    def __init__(self, seed: int = 0, rules: Iterable[FaultRule] = ()) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self.rules: tuple[FaultRule, ...] = tuple(rules)
        self.dropped = 0
        self.delayed = 0

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

    def partition(
        self, side_a: Iterable[str], side_b: Iterable[str], *, label: str = "partition"
    ) -> None:
        """Drop all traffic between the node names of `side_a` and `side_b`, both ways."""
        a, b = frozenset(side_a), frozenset(side_b)
        self.add(FaultRule(src=a, dst=b, drop=1.0, label=label))
        self.add(FaultRule(src=b, dst=a, drop=1.0, label=label))

    def isolate(self, node: str, *, label: str = "isolate") -> None:
        """Drop all traffic to and from `node`."""
        self.add(FaultRule(src=frozenset({node}), drop=1.0, label=label))
        self.add(FaultRule(dst=frozenset({node}), drop=1.0, label=label))

    def drop(
        self,
        probability: float,
        *,
        src: Iterable[str] = (),
        dst: Iterable[str] = (),
        message_types: Iterable[str] = (),
        label: str = "drop",
    ) -> None:
        self.add(
            FaultRule(frozenset(src), frozenset(dst), frozenset(message_types), drop=probability,
                      label=label)
        )

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
        self.add(
            FaultRule(frozenset(src), frozenset(dst), frozenset(message_types), delay=seconds,
                      jitter=jitter, label=label)
        )

    # ---- admin records --------------------------------------------------------------------

    def apply(self, request: SetFaultRules) -> FaultRulesState:
        self.set(request.rules, request.seed)
        return self.state()

    def state(self) -> FaultRulesState:
        return FaultRulesState(self.seed, self.rules, self.dropped, self.delayed)

    # ---- deciding -------------------------------------------------------------------------

    def decide(self, src: str, dst: str, message_type: str) -> FaultVerdict:
        """What happens to one request from node `src` to node `dst`."""
        if not self.rules or message_type in EXEMPT_TYPES:
            return NO_FAULT
        drop = False
        delay = 0.0
        rng = self._rng
        for r in self.rules:
            if r.src and src not in r.src:
                continue
            if r.dst and dst not in r.dst:
                continue
            if r.message_types and message_type not in r.message_types:
                continue
            if r.drop >= 1.0 or (r.drop > 0.0 and rng.random() < r.drop):
                drop = True
            if r.delay or r.jitter:
                delay += r.delay + (rng.uniform(0.0, r.jitter) if r.jitter else 0.0)
        if drop:
            self.dropped += 1
            return FaultVerdict(True, 0.0)
        if delay:
            self.delayed += 1
        return FaultVerdict(False, delay)
