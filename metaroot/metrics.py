"""The Prometheus families of a metaroot peer (`nokv metaroot serve --metrics-addr`).

Owns: a status snapshot of the peer (`status`: what `MetarootService.on_status` answers, its
raft group's term, commit and applied index and leadership, the driver's and transport's
counters, the LMDB environment's stats) and its metric families (`families`). Never counts
anything itself, never changes the service and never does I/O (every value is read off
objects the process already keeps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nokvpy import metrics as m


def collector(service: Any, driver: Any = None, transport: Any = None, env: Any = None,
              raftlog: Any = None) -> m.Collector:
    """The collector of a running `metaroot.service.MetarootService`."""
    def metaroot_status() -> list[m.Family]:
        return families(status(service, driver, transport, env, raftlog))

    return metaroot_status


def status(service: Any, driver: Any = None, transport: Any = None, env: Any = None,
           raftlog: Any = None) -> dict[str, Any]:
    """Plain data: the fields of MetarootStatus plus the raft group's indexes and counters."""
    group = service.group
    state = service.sm.state
    commit, term = None, group.term
    members = getattr(service.sm, "members", None)  # voters and learners (metaroot.members)
    try:  # the raw node's: the driver's copy of the term changes only with a hard state
        basic = group.node.basic_status()
        commit, term = basic.commit, basic.term
    except AttributeError:  # a group without a raw node to ask (a test double)
        pass
    out: dict[str, Any] = {
        "node_id": service.node_id,
        "is_leader": bool(group.is_leader),
        "leader_id": group.leader_id or 0,
        "term": term,
        "commit_index": commit if commit is not None else group.applied,
        "applied_index": group.applied,
        "root_token": {"term": state.token.term, "index": state.token.index},
        "cluster_epoch": state.cluster_epoch,
        "retained_from": service.sm.first_retained,
        "id_fence": state.id_fence,
        "tso_fence": state.tso_fence,
        "peers": len(members.ids()) if members is not None else len(service.peers),
        "driver": dict(getattr(driver, "counters", None) or {}),
        "transport": dict(getattr(transport, "counters", None) or {}),
        "storage": m.storage_stats(env, raftlog),
    }
    return out


def families(s: Mapping[str, Any]) -> list[m.Family]:
    """The families of one `status` snapshot."""
    token = s.get("root_token") or {}
    out = [
        m.gauge("nokv_raft_term", "Raft term of this metaroot peer.", s.get("term", 0)),
        m.gauge("nokv_raft_commit_index", "Raft commit index of the root group.",
                s.get("commit_index", 0)),
        m.gauge("nokv_raft_applied_index", "Raft applied index of the root group.",
                s.get("applied_index", 0)),
        m.gauge("nokv_raft_leader", "1 when this peer leads the root group.",
                m.flag(s.get("is_leader"))),
        m.gauge("nokv_raft_leader_id", "The peer it believes leads (0: none known).",
                s.get("leader_id", 0)),
        m.gauge("nokv_metaroot_root_index", "Index of the last rooted event applied.",
                token.get("index", 0)),
        m.gauge("nokv_metaroot_root_term", "Term of the last rooted event applied.",
                token.get("term", 0)),
        m.gauge("nokv_metaroot_cluster_epoch", "Cluster epoch in rooted state.",
                s.get("cluster_epoch", 0)),
        m.gauge("nokv_metaroot_retained_from", "First rooted event kept after the checkpoint.",
                s.get("retained_from", 0)),
        m.gauge("nokv_metaroot_id_fence", "Rooted fence of the id allocator.",
                s.get("id_fence", 0)),
        m.gauge("nokv_metaroot_tso_fence", "Rooted fence of the timestamp allocator.",
                s.get("tso_fence", 0)),
        m.gauge("nokv_metaroot_peers", "Metaroot peers in the configuration.",
                s.get("peers", 0)),
    ]
    out += m.storage_families(s.get("storage") or {})
    generic = m.named_counters("driver", s.get("driver") or {})
    m.named_counters("transport", s.get("transport") or {}, generic)
    out.append(generic)
    return out
