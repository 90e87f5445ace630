"""The Prometheus families of a store (`nokv store serve --metrics-addr`).

Owns: turning the store's ExecutionStatus body (raftstore.status) into metric families:
regions and leaders, each region's raft term, commit and applied index and leadership,
admissions and execution outcomes, queues, raft traffic drops, the publish outbox,
transitions by stage, storage (LMDB and the raft log's WAL) and every other named counter
(store, driver, transport, topology) as `nokv_counter_total`. Never counts anything itself
(it reads what the store already keeps, once per scrape) and never does I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from nokvpy import metrics as m


def collector(store: Any) -> m.Collector:
    """The collector of a running `raftstore.store.Store`."""
    def store_status() -> list[m.Family]:
        return families(store.status(), region_terms(store))

    return store_status


def region_terms(store: Any) -> dict[str, int]:
    """Region id (as text) -> the raft term its replica here is in (when it has a group):
    the raw node's, as the commit index of the status body is (the driver's copy of the
    term changes only with a persisted hard state)."""
    out = {}
    for rid, peer in list(store.peers.items()):
        group = getattr(peer, "group", None)
        if group is None:
            continue
        try:
            term = group.node.basic_status().term
        except AttributeError:  # no raw node to ask
            term = getattr(group, "term", None)
        if isinstance(term, int):
            out[str(rid)] = term
    return out


def families(body: Mapping[str, Any], terms: Mapping[str, int] | None = None
             ) -> list[m.Family]:
    """The families of one ExecutionStatus body (`terms`: region -> raft term, optional)."""
    restart = body.get("restart_state") or {}
    current = body.get("current_state") or {}
    out = [
        m.gauge("nokv_store_regions", "Region replicas hosted by this store.",
                body.get("region_count", 0)),
        m.gauge("nokv_store_leaders", "Region replicas of this store that lead their region.",
                body.get("leader_count", 0)),
        m.gauge("nokv_store_hibernating_regions", "Region replicas that stopped ticking "
                "(hibernating: idle, woken by any message or proposal).",
                body.get("hibernating_count", 0)),
        m.gauge("nokv_store_joined", "1 once the store joined the cluster (coordinator).",
                m.flag(body.get("joined"))),
    ]
    for name, state, help in (
            ("nokv_store_restart_state", restart,
             "The restart state found at start (READY, DEGRADED, FATAL): 1 for the state."),
            ("nokv_store_current_state", current,
             "The restart state a restart would find now: 1 for the state.")):
        fam = m.gauge(name, help)
        if state.get("state"):
            fam.add(1, state=state["state"])
        out.append(fam)
    out += _region_families(body.get("regions") or {}, terms or {})
    admissions = m.counter("nokv_admissions_total",
                           "Admission decisions, by request class and reason (ACCEPTED or why "
                           "not).")
    for key, value in sorted((body.get("admissions") or {}).items()):
        cls, _, reason = str(key).partition("/")
        admissions.add(value, {"class": cls, "reason": reason})
    outcomes = m.counter("nokv_outcomes_total", "Execution outcomes of admitted requests.")
    for outcome, value in sorted((body.get("outcomes") or {}).items()):
        outcomes.add(value, outcome=outcome)
    drops = m.counter("nokv_raft_drops_total", "Raft messages dropped on receipt, by reason.")
    for reason, value in sorted((body.get("drops") or {}).items()):
        drops.add(value, reason=reason)
    waiters = m.gauge("nokv_store_queue_waiters",
                      "Writes waiting for a proposal queue slot, by region.")
    for region, value in sorted((body.get("queue_waiters") or {}).items()):
        waiters.add(value, region=region)
    stages: Counter[str] = Counter()
    for record in (body.get("transitions") or {}).values():
        if isinstance(record, Mapping):
            stages[str(record.get("stage", ""))] += 1
    transitions = m.gauge("nokv_store_transitions",
                          "Topology transitions this store tracks, by lifecycle stage.")
    for stage, n in sorted(stages.items()):
        transitions.add(n, stage=stage)
    topology = body.get("topology") or {}
    outbox = topology.get("outbox") or {}
    backlog = restart.get("outbox_backlog", current.get("outbox_backlog", 0))
    blocked = restart.get("blocked_events", current.get("blocked_events", 0))
    out += [
        admissions, outcomes, drops, waiters, transitions,
        m.gauge("nokv_store_queue_limit", "Proposal queue limit per region.",
                body.get("queue_limit", 0)),
        m.gauge("nokv_store_proposal_queue", "Proposals queued in the driver.",
                body.get("proposal_queue", 0)),
        m.gauge("nokv_publish_outbox_backlog",
                "Root events in the publish outbox, not yet published.", backlog),
        m.gauge("nokv_publish_blocked_events",
                "Outbox entries blocked (TERMINAL_BLOCKED): they need an operator.", blocked),
        m.gauge("nokv_publish_outbox_failing", "1 while publishing the outbox fails.",
                m.flag(outbox.get("failing"))),
        m.gauge("nokv_store_tombstones", "Regions tombstoned on this store.",
                len(body.get("tombstones") or [])),
        m.counter("nokv_store_heartbeats_sent_total", "Store heartbeats sent.",
                  body.get("heartbeats_sent", 0)),
        m.gauge("nokv_store_heartbeat_failing", "1 when the last heartbeat failed.",
                m.flag(body.get("last_heartbeat_error"))),
    ]
    out += m.storage_families(body.get("storage") or {})
    generic = m.named_counters("store", body.get("counters") or {})
    m.named_counters("driver", body.get("driver") or {}, generic)
    m.named_counters("transport", body.get("transport") or {}, generic)
    m.named_counters("topology", topology.get("counters") or {}, generic)
    m.named_counters("outbox", outbox.get("counters") or {}, generic)
    out.append(generic)
    return out


def _region_families(regions: Mapping[str, Any], terms: Mapping[str, int]) -> list[m.Family]:
    term = m.gauge("nokv_raft_term", "Raft term of this store's replica, by region.")
    commit = m.gauge("nokv_raft_commit_index", "Raft commit index, by region.")
    applied = m.gauge("nokv_raft_applied_index", "Raft applied index, by region.")
    leader = m.gauge("nokv_raft_leader", "1 when this store's replica leads the region.")
    in_flight = m.gauge("nokv_region_in_flight_proposals",
                        "Proposals admitted and not yet finished, by region.")
    version = m.gauge("nokv_region_epoch_version", "Region epoch version (splits, merges).")
    conf_ver = m.gauge("nokv_region_conf_version", "Region epoch conf version (membership).")
    for region, r in sorted(regions.items(), key=lambda kv: int(kv[0])
                            if str(kv[0]).isdigit() else 0):
        if region in terms:
            term.add(terms[region], region=region)
        commit.add(r.get("commit_index", 0), region=region)
        applied.add(r.get("applied_index", 0), region=region)
        leader.add(m.flag(r.get("leader")), region=region)
        in_flight.add(r.get("in_flight", 0), region=region)
        epoch = r.get("epoch") or []
        if len(epoch) == 2:
            version.add(epoch[0], region=region)
            conf_ver.add(epoch[1], region=region)
    return [term, commit, applied, leader, in_flight, version, conf_ver]
