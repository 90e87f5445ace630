"""The ``hostile`` nemesis's vocabulary and its seeded plan: what an attacker tries.

Owns: the kinds of attempt (``garbage``, ``replay``, ``role-claim``, ``privileged``) and their
variants, the privileged requests per target kind and the effect each could cause
(``CAUSES``), the window marker prefix, the choice of a window's target
(:func:`hostile_params`) and the deterministic attempt list of a window
(:func:`plan_attempts`). Never connects to anything (:mod:`.hostile_attack` makes the
attempts) and never judges them (:mod:`.hostile_check`); see :mod:`.hostile` for the whole.
"""

from __future__ import annotations

import random
from typing import Any

from nokvpy.wire import registered_types

KINDS = ("garbage", "replay", "privileged", "role-claim")
GARBAGE = ("random-bytes", "huge-length", "truncated", "unknown-tag", "unknown-body",
           "non-record")
PREAUTH_GARBAGE = ("random-bytes", "huge-length", "truncated", "unknown-tag")
REPLAYS = ("pipelined", "stepwise")
EXTRA_CLAIMS = ("admin", "coordinator", "metaroot")
HUGE_LENGTHS = (4097, 1 << 20, (64 << 20) + 1, (1 << 32) - 1)
FAILPOINTS: dict[str, tuple[tuple[str, str], ...]] = {
    "store": (("store.before_apply", "exit"), ("store.before_persist", "exit"),
              ("storage.before_commit", "exit"), ("driver.tick", "1*sleep(5000)")),
    "metaroot": (("metaroot.before_append", "exit"), ("storage.before_commit", "exit"),
                 ("driver.tick", "1*sleep(5000)")),
    "coordinator": (("coordinator.before_grant_issue", "exit"),
                    ("coordinator.before_root_append", "exit")),
}
PRIVILEGED: dict[str, tuple[str, ...]] = {
    "store": ("FailpointSetRequest", "FailpointClearRequest", "SetFaultRules", "RaftBatch",
              "AdminRequest"),
    "metaroot": ("FailpointSetRequest", "FailpointClearRequest", "SetFaultRules", "RaftBatch",
                 "AppendRequest", "GrantRequest"),
    "coordinator": ("FailpointSetRequest", "FailpointClearRequest", "SetFaultRules",
                    "PauseCatchUpRequest", "RemoveRegionRequest"),
}
# which privileged request would cause which effect (to name the attempt behind an effect)
CAUSES = {
    "process": ("FailpointSetRequest",),
    "failpoints": ("FailpointSetRequest", "FailpointClearRequest"),
    "fault_rules": ("SetFaultRules",),
    "recovery": ("AppendRequest",),
    "grant": ("GrantRequest",),
    "catch_up": ("PauseCatchUpRequest",),
}
MARKER_PREFIX = "hostile-"
ATTACKER_NODE_ID = 31337


def hostile_params(rng: random.Random, by_kind: dict[str, list[str]]) -> tuple[str | None, dict]:
    """(target, params) of a ``hostile`` window: a kind among store / coordinator / metaroot
    (each as likely), then one process of it; ``seed`` drives the attempt mix and ``marker``
    names the window (in forged events, so that root can be searched for them)."""
    kinds = [k for k in ("store", "coordinator", "metaroot") if by_kind.get(k)]
    if not kinds:
        return None, {"seed": rng.randrange(2**31), "marker": ""}
    kind = rng.choice(kinds)
    target = rng.choice(sorted(by_kind[kind]))
    seed = rng.randrange(2**31)
    return target, {"seed": seed, "marker": f"{MARKER_PREFIX}{seed:08x}"}


def kind_of(name: str | None) -> str:
    """The process kind of a name like ``store-2``."""
    return (name or "").rsplit("-", 1)[0]


def _unknown_tag(rng: random.Random) -> int:
    taken = set(registered_types())
    while True:
        tag = rng.randrange(1000, 60000)
        if tag not in taken:
            return tag


def plan_attempts(seed: int, kind: str) -> list[dict]:
    """The attempts of a window against a process of ``kind`` (deterministic in ``seed``):
    every kind of attempt at least once, in a seeded order; 2-4 garbage variants, 1-2
    replays, the ``store`` claim plus sometimes another, every privileged request of the
    target's kind (a seeded failpoint for FailpointSet)."""
    rng = random.Random(f"jepsen-lite-hostile-{seed}")
    out: list[dict] = []
    for op in rng.sample(GARBAGE, rng.randint(2, 4)):
        attempt: dict[str, Any] = {"kind": "garbage", "op": op}
        if op == "random-bytes":
            attempt["size"] = rng.randint(8, 256)
            attempt["bytes_seed"] = rng.randrange(2**31)
        elif op == "huge-length":
            attempt["length"] = rng.choice(HUGE_LENGTHS)
        elif op == "truncated":
            attempt["cut"] = rng.choice([0.25, 0.5, 0.75])
        elif op in ("unknown-tag", "unknown-body"):
            attempt["tag"] = _unknown_tag(rng)
        out.append(attempt)
    for op in rng.sample(REPLAYS, rng.randint(1, 2)):
        out.append({"kind": "replay", "op": op})
    out.append({"kind": "role-claim", "op": "claim-store", "role": "store"})
    if rng.random() < 0.5:
        role = rng.choice(EXTRA_CLAIMS)
        out.append({"kind": "role-claim", "op": f"claim-{role}", "role": role})
    for op in PRIVILEGED.get(kind, PRIVILEGED["store"]):
        attempt = {"kind": "privileged", "op": op}
        if op == "FailpointSetRequest":
            fp, spec = rng.choice(FAILPOINTS.get(kind, FAILPOINTS["store"]))
            attempt.update(failpoint=fp, spec=spec)
        out.append(attempt)
    rng.shuffle(out)
    for i, attempt in enumerate(out):
        attempt["attempt"] = f"a{i + 1:02d}"
    return out
