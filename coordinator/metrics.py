"""The Prometheus families of a coordinator (`nokv coordinator serve --metrics-addr`).

Owns: turning the coordinator's diagnostics body (coordinator.diagnostics) into metric
families: catch-up state and degraded mode, root lag and tokens, whether root is reachable,
the grants it holds or stands by for, the stores and regions it knows, grant violations,
allocators and every other named counter as `nokv_counter_total`. Never counts anything
itself and never changes the service (diagnostics only read it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import trio

from coordinator import diagnostics
from nokvpy import metrics as m

VIOLATION_PREFIX = "grant.violations."


def collector(service: Any) -> m.Collector:
    """The collector of a running `coordinator.service.CoordinatorService`."""
    def coordinator_diagnostics() -> list[m.Family]:
        body = diagnostics.build(service)
        scheduler = getattr(service, "scheduler", None)
        if scheduler is not None:  # what on_diagnostics answers: the live scheduler status
            body["scheduler"] = scheduler.status(trio.current_time())
        return families(body)

    return coordinator_diagnostics


def families(body: Mapping[str, Any]) -> list[m.Family]:
    """The families of one diagnostics body."""
    served = body.get("served_token") or {}
    current = body.get("current_token") or {}
    catch_up = m.gauge("nokv_coordinator_catch_up_state",
                       "The catch-up state of its view of root: 1 for the state.")
    if body.get("catch_up_state"):
        catch_up.add(1, state=body["catch_up_state"])
    mode = m.gauge("nokv_coordinator_degraded_mode",
                   "The degraded mode route reads are served in: 1 for the mode.")
    if body.get("degraded_mode"):
        mode.add(1, mode=body["degraded_mode"])
    reasons = m.gauge("nokv_coordinator_degraded_reason", "Why it is degraded: 1 per reason.")
    for reason in sorted(set(body.get("degraded_reasons") or [])):
        reasons.add(1, reason=reason)
    heard_ms = body.get("last_heard_ago_ms", -1)
    out = [
        catch_up, mode, reasons,
        m.gauge("nokv_coordinator_root_lag", "Rooted events its view is behind root.",
                body.get("root_lag", 0)),
        m.gauge("nokv_coordinator_served_root_index", "Root index its answers reflect.",
                served.get("index", 0)),
        m.gauge("nokv_coordinator_current_root_index", "Latest root index it knows of.",
                current.get("index", 0)),
        m.gauge("nokv_coordinator_root_term", "Root term of the latest token it knows of.",
                current.get("term", 0)),
        m.gauge("nokv_coordinator_root_reachable", "1 when metaroot answers.",
                m.flag(body.get("root_reachable"))),
        m.gauge("nokv_coordinator_heard_within_window",
                "1 when root was heard from within the staleness window.",
                m.flag(body.get("heard_within_window"))),
        m.gauge("nokv_coordinator_last_heard_seconds",
                "Seconds since root was last heard from (-1: never).",
                heard_ms / 1000.0 if heard_ms >= 0 else -1),
        m.gauge("nokv_coordinator_catch_up_paused", "1 while catch-up is paused (tests).",
                m.flag(body.get("paused"))),
    ]
    out += _grant_families(body)
    out += _store_families(body)
    counters = dict(body.get("counters") or {})
    violations = m.counter("nokv_coordinator_grant_violations_total",
                           "Grant rule violations seen by the audit, by rule.")
    for key in sorted(k for k in counters if k.startswith(VIOLATION_PREFIX)):
        violations.add(counters.pop(key), rule=key[len(VIOLATION_PREFIX):])
    allocated = m.counter("nokv_coordinator_allocator_served_total",
                          "Ids and timestamps served, by allocator.")
    for name, allocator in sorted((body.get("allocators") or {}).items()):
        if isinstance(allocator, Mapping) and isinstance(allocator.get("served"), int):
            allocated.add(allocator["served"], allocator=name)
    scheduler = body.get("scheduler") or {}
    generic = m.named_counters("coordinator", counters)
    if isinstance(scheduler.get("counters"), Mapping):
        m.named_counters("scheduler", scheduler["counters"], generic)
    out += [violations, allocated,
            m.gauge("nokv_coordinator_scheduler_ready", "1 when the scheduler may act.",
                    m.flag(body.get("scheduler_ready"))),
            m.gauge("nokv_coordinator_drift_reports",
                    "Regions whose store reports drift from the catalog.",
                    len(body.get("drift") or [])),
            generic]
    return out


def _grant_families(body: Mapping[str, Any]) -> list[m.Family]:
    duties = (body.get("grants") or {}).get("duties") or {}
    held_list = set(body.get("grants_held") or [])
    standby_list = set(body.get("standby_for") or [])
    held = m.gauge("nokv_coordinator_grant_held",
                   "1 when this coordinator holds the duty's authority grant.")
    standby = m.gauge("nokv_coordinator_grant_standby",
                      "1 when another coordinator holds the duty and this one stands by.")
    era = m.gauge("nokv_coordinator_grant_era", "Era of the duty's current grant.")
    expires = m.gauge("nokv_coordinator_grant_expires_seconds",
                      "Seconds until the duty's grant expires.")
    for duty in sorted(set(duties) | held_list | standby_list):
        d = duties.get(duty) or {}
        held.add(m.flag(d.get("held_by_self", duty in held_list)), duty=duty)
        standby.add(m.flag(duty in standby_list), duty=duty)
        if isinstance(d.get("era"), int):
            era.add(d["era"], duty=duty)
        if isinstance(d.get("expires_in_ms"), int):
            expires.add(d["expires_in_ms"] / 1000.0, duty=duty)
    return [held, standby, era, expires]


def _store_families(body: Mapping[str, Any]) -> list[m.Family]:
    stores = [s for s in body.get("stores") or [] if isinstance(s, Mapping)]
    states: Counter[str] = Counter(str(s.get("state", "")) for s in stores)
    by_state = m.gauge("nokv_coordinator_stores_by_state", "Known stores, by state.")
    for state, n in sorted(states.items()):
        by_state.add(n, state=state)
    age = m.gauge("nokv_coordinator_store_heartbeat_age_seconds",
                  "Seconds since each store's last heartbeat.")
    for s in stores:
        if isinstance(s.get("last_heartbeat_age_ms"), int) and s["last_heartbeat_age_ms"] >= 0:
            age.add(s["last_heartbeat_age_ms"] / 1000.0, store=s.get("store_id", ""))
    return [
        m.gauge("nokv_coordinator_stores", "Stores in its catalog.", body.get("store_count", 0)),
        m.gauge("nokv_coordinator_regions", "Regions in its catalog.",
                body.get("region_count", 0)),
        by_state, age,
    ]
