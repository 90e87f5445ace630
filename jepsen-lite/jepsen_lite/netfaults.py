"""Network faults: a partition, lossy and slow links, and the ``net-extra`` faults (a one-way
partition, a bridge, a ring, a blackhole, and the duplication, reordering and corruption of
raft batches).

Owns: which of a schedule's faults are network faults (``NET_FAULTS``), the rules each window
sets (:func:`window_rules`, plain dicts built with the rule builders of :mod:`.faults`), and
injecting and healing a window through the cluster control (:func:`inject`, :func:`heal`):
its rules, labelled by the window (:func:`jepsen_lite.faults.fault_label`), go on every
process when the window opens and are removed when it closes. The nemesis
(:mod:`.nemesis`) calls these two for every network window and keeps the bookkeeping.

Never talks to processes itself (every action goes through the control object, see
:class:`jepsen_lite.nemesis.ControlProtocol`), never says what a rule does to a message
(``nokvpy.rpc.faults`` does), and never decides whether a history is correct.
"""

from __future__ import annotations

from typing import Any

from .faults import (
    NemesisError,
    blackhole_rules,
    bridge_rules,
    corrupt_rules,
    duplicate_rules,
    fault_label,
    one_way_rules,
    partition_rules,
    reorder_rules,
    ring_rules,
)
from .schedule import NET_EXTRA

NET_FAULTS = ("partition", "lossy", "slow-net", *NET_EXTRA)


def window_rules(fault: str, target: str | None, params: dict, servers: list[str]
                 ) -> list[dict]:
    """The fault rules of a network window (``fault`` is one of ``NET_FAULTS``) among the
    processes ``servers``; empty when the window has nothing to cut in this cluster (a
    ``one-way`` or ``blackhole`` window without a target)."""
    label = fault_label(fault, target)
    if fault == "partition":
        return partition_rules(params.get("mode", "isolate"), target, servers,
                               params.get("minority"))
    if fault == "lossy":
        return [{"src": servers, "dst": servers, "drop": params["drop"], "label": label}]
    if fault == "slow-net":
        return [{"src": servers, "dst": servers, "delay": params["delay"],
                 "jitter": params.get("jitter", 0.0), "label": label}]
    if fault == "one-way":
        if target is None:
            return []
        return one_way_rules(target, params.get("direction", "out"), servers, label)
    if fault in ("bridge", "ring"):
        order = [n for n in params.get("order") or servers if n in servers]
        return bridge_rules(order, label) if fault == "bridge" else ring_rules(order, label)
    if fault == "blackhole":
        return blackhole_rules(target, label) if target is not None else []
    if fault == "duplicate":
        return duplicate_rules(servers, params["probability"], params.get("hold", 0.0), label)
    if fault == "reorder":
        return reorder_rules(servers, params["probability"], params.get("hold", 0.0), label)
    if fault == "corrupt":
        return corrupt_rules(servers, params["probability"], label)
    raise NemesisError(f"unknown fault {fault!r}")


async def inject(control: Any, fault: str, target: str | None, params: dict) -> dict:
    """Open a network window: set its rules on every process (a ``net-extra`` window with no
    rule for this cluster is skipped, and says so)."""
    rules = window_rules(fault, target, params, control.names())
    if fault in NET_EXTRA and not rules:
        return {"skipped": "no rules for this cluster"}
    return await control.add_fault_rules(fault_label(fault, target), rules)


async def heal(control: Any, fault: str, target: str | None) -> dict:
    """Close a network window: remove the rules labelled by it from every process."""
    return await control.remove_fault_rules(fault_label(fault, target))
