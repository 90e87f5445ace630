"""The jepsen-lite fault vocabulary: fault names, aliases, failpoints, symbolic targets, and
the network fault rules of the network faults.

Owns: ``FAULTS`` (every fault a schedule may hold, with its meaning), ``ALIASES``,
:func:`parse_faults`, the failpoints the failpoint faults choose from, the ``:leader``
target, the label of a window's fault rules (:func:`fault_label`) and the rules (plain dicts,
see :func:`jepsen_lite.control.to_fault_rule`) of a partition (:func:`partition_rules`), a
one-way partition (:func:`one_way_rules`), a bridge (:func:`bridge_rules`), a ring
(:func:`ring_rules`), a blackhole (:func:`blackhole_rules`) and the raft batch duplication,
reordering and frame corruption faults (:func:`duplicate_rules`, :func:`reorder_rules`,
:func:`corrupt_rules`). ``nokvpy.rpc.faults`` says what each rule does to which message.
Imports nothing of jepsen-lite, so the schedule, the nemesis and the lease sequences all use
it without an import cycle. Never injects a fault and never builds a schedule
(:mod:`.schedule`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FAULTS: dict[str, str] = {
    "kill": "kill -9 a process (metaroot peer, coordinator or store), restart it at the end",
    "pause": "SIGSTOP a process, SIGCONT it at the end",
    "partition": "cut the network between a node (or a minority of stores) and the rest",
    "lossy": "drop a share of the messages between servers",
    "slow-net": "delay messages between servers (with jitter)",
    "publish-fail": "fail the stores' planned/terminal publish to the root (failpoint raise); "
    "one split or merge is issued in the window so that a publish happens",
    "slow-fsync": "sleep in the storage commit (slow fsync) on one store",
    "crash-point": "crash one store (exit) at a named code point, restart it at the end",
    "churn": "topology churn: splits, merges, leader transfers, peer removals and re-adds, "
    "replica moves; some windows pause or kill a voter store, remove it, heal it and add it "
    "back",
    "lease": "SIGSTOP a leader (region leader store, metaroot leader or region_lookup grant "
    "holder) until it is replaced, write through the new one, SIGCONT and read straight at "
    "the old one at once",
    "tick-stretch": "driver.tick failpoint: stall a store's loop (sleep) a few times and read "
    "at it as it wakes, or skew a process's tick rate (return(f)), restored at the end",
    "hostile": "an attacker aims at one process: garbage bytes and frames, a replayed "
    "handshake, a forged role claim and privileged calls with the client credential; at the "
    "window's end nothing may have changed (checks[\"hostile\"])",
    "one-way": "lose all traffic (requests and replies) from a node to the other servers, or "
    "from them to it, while the other direction flows",
    "bridge": "split the servers into two halves that cannot talk, and one bridge node that "
    "talks to both (Jepsen's bridge)",
    "ring": "put the servers on a ring where each sees only its neighbours, a majority but "
    "not the same one (Jepsen's majorities ring)",
    "blackhole": "a process's network goes silent, connections left open: nothing to or from "
    "it arrives (clients' requests, replies, cancels included), nobody sees an error",
    "duplicate": "deliver a share of the raft batches between servers twice (the copy at "
    "once or after newer batches)",
    "reorder": "hold back a share of the raft batches between servers until a later batch "
    "overtakes them",
    "corrupt": "damage bytes of a share of the frames servers send (after their checksum); "
    "receivers must detect it and drop the connection",
    # disk and power (jepsen_lite.disk; every window judged in checks["disk"])
    "disk-full": "ENOSPC on a store's next WAL writes (or a metaroot peer's LMDB commits): the "
    "process stops (fail-stop) and is restarted at the window's end",
    "eio": "EIO on a store's WAL write or fdatasync (or a metaroot peer's LMDB commit): "
    "fail-stop, restarted at the window's end",
    "lose-unsynced": "crash a store between a WAL write and its fdatasync and restart it losing "
    "every byte it never fdatasynced (a power loss of that machine)",
    "torn-frame": "crash a store between a WAL write and its fdatasync and cut its newest frame "
    "short: inside the unsynced tail it must recover, inside the synced part it must refuse to "
    "start (then the bytes are put back)",
    "bit-flip": "flip one bit in the synced part of a stopped store's newest WAL segment: it "
    "must refuse to start with a corrupt-log error (then the bit is put back)",
    "power-loss": "kill -9 every process at once, then restart them all, the stores losing "
    "every write they never fdatasynced",
    # store membership (jepsen_lite.membership)
    "join": "add a store process to the running cluster (new id, ports and data directory); "
    "a coordinator must list it UP",
    "retire": "retire a store (a store joins first when the others could not hold the "
    "replication): every replica moved off it, STORE_RETIRED rooted, the process stopped",
    "metaroot-swap": "add a metaroot peer to the running group (`nokv metaroot add-peer`: a "
    "learner, then a voter), then remove a voter (the leader or another, seeded; `remove-peer`): "
    "the group must elect among the new voters and every coordinator serve STRONG routes",
    "clock-skew": "skew the tick rate of one or two raft processes (stores, metaroot peers) "
    "apart: driver.tick return(1.05..1.12) on one, return(0.9..0.95) on another, inside the "
    "leases' 28 % bound, restored at the end",
}
DISK_FAULTS = ("disk-full", "eio", "lose-unsynced", "torn-frame", "bit-flip", "power-loss")
ALIASES: dict[str, list[str]] = {
    "all": [f for f in FAULTS],
    "none": [],
    "net": ["partition", "lossy", "slow-net"],
    "process": ["kill", "pause"],
    "failpoints": ["publish-fail", "slow-fsync", "crash-point"],
    "clock": ["lease", "tick-stretch", "clock-skew"],
    "disk": list(DISK_FAULTS),
    "membership": ["join", "retire"],
    "net-extra": ["one-way", "bridge", "ring", "blackhole", "duplicate", "reorder", "corrupt"],
}
PUBLISH_FAILPOINTS = ("store.publish_terminal", "store.publish_planned")
CRASH_POINTS = (
    "store.before_persist",
    "store.after_persist_before_send",
    "store.before_apply",
    "store.after_apply",
    "store.after_apply_before_publish",
    "storage.before_commit",
)
METAROOT_CRASH_POINTS = ("storage.before_commit", "metaroot.before_append")
RAFT_BATCH = "RaftBatch"
"""The one-way request carrying raft messages between servers (duplicate, reorder)."""
LEADER = ":leader"
"""A symbolic target: the leader store of a workload key's region, resolved at run time."""


class NemesisError(ValueError):
    """A bad nemesis specification (unknown fault name, bad option)."""


def parse_faults(spec: str | Iterable[str]) -> list[str]:
    """``"kill,partition"`` or a list -> fault names, aliases expanded, order kept, no dups."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        names = ALIASES.get(name, [name])
        for n in names:
            if n not in FAULTS:
                known = ", ".join([*FAULTS, *ALIASES])
                raise NemesisError(f"unknown nemesis {n!r} (known: {known})")
            if n not in out:
                out.append(n)
    return out


def fault_label(fault: str, target: str | None) -> str:
    """The label of the fault rules a window of ``fault`` on ``target`` sets."""
    return f"jepsen:{fault}:{target}"


def partition_rules(
    mode: str, target: str | None, servers: Sequence[str], minority: Sequence[str] | None = None
) -> list[dict]:
    """Fault rules (plain dicts) for a partition among the cluster's processes.

    * ``isolate``: ``target`` cannot talk to any other server (clients still reach it);
    * ``split-stores``: the ``minority`` stores on one side, every other server on the
      other.
    Rules drop in both directions (a rule per direction)."""
    if mode == "isolate":
        side_a = [target] if target else []
    elif mode == "split-stores":
        side_a = list(minority or [])
    else:
        raise NemesisError(f"unknown partition mode {mode!r}")
    side_b = [n for n in servers if n not in side_a]
    if not side_a or not side_b:
        return []
    label = fault_label("partition", target)
    return [
        {"src": sorted(side_a), "dst": sorted(side_b), "drop": 1.0, "label": label},
        {"src": sorted(side_b), "dst": sorted(side_a), "drop": 1.0, "label": label},
    ]


def one_way_rules(
    target: str, direction: str, servers: Sequence[str], label: str
) -> list[dict]:
    """Rules losing the traffic from ``target`` to every other server (``direction`` "out")
    or from them to it ("in"); the other direction flows. Replies follow the same rule: a
    node whose outbound traffic is lost still receives requests, but its answers vanish."""
    others = sorted(n for n in servers if n != target)
    if not others:
        return []
    if direction == "out":
        return [{"src": [target], "dst": others, "drop": 1.0, "label": label}]
    if direction == "in":
        return [{"src": others, "dst": [target], "drop": 1.0, "label": label}]
    raise NemesisError(f"unknown one-way direction {direction!r}")


def bridge_rules(order: Sequence[str], label: str) -> list[dict]:
    """The servers in ``order`` split into two halves, the middle one being the bridge: it
    talks to both halves, which cannot talk to each other. Fewer than 3 servers: no rules."""
    if len(order) < 3:
        return []
    mid = len(order) // 2
    side_a, side_b = sorted(order[:mid]), sorted(order[mid + 1:])
    return [
        {"src": side_a, "dst": side_b, "drop": 1.0, "label": label},
        {"src": side_b, "dst": side_a, "drop": 1.0, "label": label},
    ]


def ring_rules(order: Sequence[str], label: str, reach: int | None = None) -> list[dict]:
    """The servers in ``order`` on a ring, each seeing only its ``reach`` neighbours on either
    side (default: enough to see a majority, itself included; no two see the same majority
    with 5 or more servers). One rule per server: what it may not send to (the relation is
    symmetric, so this cuts both directions). Fewer than 4 servers: no rules."""
    n = len(order)
    if reach is None:
        reach = (n // 2 + 1) // 2
    rules = []
    for i, node in enumerate(order):
        near = {order[(i + d) % n] for d in range(-reach, reach + 1)}
        far = sorted(m for m in order if m not in near)
        if far:
            rules.append({"src": [node], "dst": far, "drop": 1.0, "label": label})
    return rules


def blackhole_rules(target: str, label: str) -> list[dict]:
    """Every record to and from ``target``, from any peer (servers, clients, the harness
    but for its fault-rule calls), is swallowed; no connection is closed."""
    return [
        {"src": [target], "blackhole": True, "label": label},
        {"dst": [target], "blackhole": True, "label": label},
    ]


def duplicate_rules(servers: Sequence[str], probability: float, hold: float,
                    label: str) -> list[dict]:
    """Raft batches between servers sent twice with ``probability``; the copy right after
    (``hold`` 0) or up to ``hold`` seconds later."""
    return [{"src": sorted(servers), "dst": sorted(servers), "message_types": [RAFT_BATCH],
             "duplicate": probability, "hold": hold, "label": label}]


def reorder_rules(servers: Sequence[str], probability: float, hold: float,
                  label: str) -> list[dict]:
    """Raft batches between servers held back with ``probability`` until the next batch to
    the same server overtakes them (at most ``hold`` seconds)."""
    return [{"src": sorted(servers), "dst": sorted(servers), "message_types": [RAFT_BATCH],
             "reorder": probability, "hold": hold, "label": label}]


def corrupt_rules(servers: Sequence[str], probability: float, label: str) -> list[dict]:
    """Frames the servers send (to servers and clients alike: raft batches, requests,
    replies) damaged with ``probability``."""
    return [{"src": sorted(servers), "corrupt": probability, "label": label}]
