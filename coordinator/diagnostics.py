"""Coordinator diagnostics: one plain-data snapshot for operators, probes and tests.

Owns: the shape of the Diagnostics body (str keys; ints, strs, bools, lists and dicts only;
enums as NAME strings; tokens as {"term", "index"}; durations as integer milliseconds).
Never mutates the service and never blocks.

Top-level keys: coordinator_id, holder_id, served_token, current_token, root_lag,
catch_up_state, degraded_mode, degraded_reasons, root_reachable, heard_within_window,
last_heard_ago_ms, paused, catch_up_steps, grants_held, grants, counters,
strong_confirmations, drift, allocators, scheduler_ready, scheduler, store_count,
region_count, stores, bootstrap_state, subscription, audit, unsafe_holder_pause.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

import trio

from metaroot.grants import audit
from nokvpy.protocol.enums import StoreState
from nokvpy.protocol.records import RootToken

VIOLATIONS = ("primacy", "inheritance", "silence", "finality")


def token(t: RootToken) -> dict[str, int]:
    return {"term": t.term, "index": t.index}


def _plain(value: Any) -> Any:
    """Coerce to the plain data the wire body allows."""
    if isinstance(value, StrEnum):
        return str(value.value)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    if hasattr(value, "name"):
        return value.name
    return str(value)


def build(svc: Any) -> dict[str, Any]:
    now = trio.current_time()
    sub = svc.sub
    catalog, rs, state = svc.sub.snapshot(svc.degraded_flags())
    last_heard = sub.view.last_heard
    counters: dict[str, int] = {}
    for prefix, bag in (("", svc.counters), ("grant.", svc.grants.counters),
                        ("store.", svc.stores.counters), ("root.", sub.counters)):
        for k, v in bag.items():
            counters[prefix + k] = int(v)
    for v in VIOLATIONS:
        counters.setdefault(f"grant.violations.{v}", 0)
    for k in ("grant.era_transitions", "grant.gate_rejections", "store.heartbeats",
              "store.stale_heartbeats", "grant.inheritance.submitted",
              "grant.inheritance.skipped"):
        counters.setdefault(k, 0)
    confirm = svc.confirmer.stats()
    counters["strong.confirm_rounds"] = confirm["rounds"]
    counters["strong.confirm_requests"] = confirm["requests"]
    stores = []
    if catalog is not None:
        for sid, sv in sorted(catalog.stores().items()):
            info = svc.stores.store_info(sid, sv.address, sv.state == StoreState.RETIRED, now)
            stores.append({"store_id": sid, "address": info.address, "state": info.state.name,
                           "last_heartbeat_age_ms": info.last_heartbeat_age_ms,
                           "regions": info.region_count, "leaders": info.leader_count,
                           "restart_state": info.restart_state})
    readiness = svc.stores.readiness(catalog)
    try:
        audit_report = audit(state, svc.grants.clock())
        audit_report.pop("defects", None)
    except Exception as exc:  # noqa: BLE001 - diagnostics never fail
        audit_report = {"error": str(exc)}
    body = {
        "coordinator_id": svc.coordinator_id,
        "holder_id": svc.holder,
        "served_token": token(rs.served_token),
        "current_token": token(rs.current_token),
        "root_lag": rs.root_lag,
        "catch_up_state": rs.catch_up_state.name,
        "degraded_mode": rs.degraded_mode.name,
        "degraded_reasons": sorted(rs.degraded_reasons),
        "root_reachable": rs.root_reachable,
        "heard_within_window": rs.heard_within_window,
        "last_heard_ago_ms": int((now - last_heard) * 1000) if last_heard is not None else -1,
        "paused": sub.paused,
        "catch_up_steps": [
            {"age_ms": int((now - at) * 1000), "before": token(s.root_token_before),
             "after": token(s.root_token_after), "state": s.catch_up_state.name,
             "action": s.catch_up_action.name}
            for at, s in list(sub.steps)
        ],
        "grants_held": svc.grants.held_duties(),
        "standby_for": svc.grants.standby_duties(),
        "grants": svc.grants.describe(),
        "counters": dict(sorted(counters.items())),
        "strong_confirmations": confirm,
        "drift": [d.plain() for d in svc.stores.all_drift()],
        "allocators": {"alloc_id": svc.ids.describe(), "tso": svc.tso.describe()},
        "scheduler_ready": readiness["scheduler_ready"],
        "scheduler": readiness,
        "store_count": len(stores),
        "region_count": len(catalog) if catalog is not None else 0,
        "stores": stores,
        "bootstrap_state": svc.bootstrap_state,
        "subscription": {"connected_to": sub.connected_to, "last_error": sub.last_error,
                         "cluster_epoch": state.cluster_epoch,
                         "history": len(sub.history),
                         "last_stall_ms": (int((sub.last_stall[1] - sub.last_stall[0]) * 1000)
                                           if sub.last_stall is not None else 0),
                         "suspect_marks_ignored_after_stall": int(getattr(
                             getattr(svc.meta, "suspects", None), "ignored", 0))},
        "audit": audit_report,
        "unsafe_holder_pause": bool(getattr(svc, "unsafe_holder_pause", False)),
    }
    return _plain(body)
