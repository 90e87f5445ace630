"""The membership fold: what a `ConfState` becomes after single-step conf changes.

Owns: `next_conf_state` (one change) and `conf_state_after` (the changes among a run of
committed entries), pure functions over `ConfState` values. A caller that persists the
membership together with the applied index (so a restart never re-applies a conf change)
computes it with these while staging, before the core applies the entries in `advance`'s
turn. Never touches a `Raft` or its progress tracker: `Raft.apply_conf_change` is what
changes the live configuration (and, unlike this fold, it leaves the configuration unchanged
for a change that would remove the last voter, which the leader refuses to propose).
"""

from __future__ import annotations

from collections.abc import Iterable

from .types import ConfChange, ConfChangeType, ConfState, Entry, EntryType


def next_conf_state(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after applying `cc` to `cs` (mirrors Raft.apply_conf_change)."""
    nid = cc.node_id
    if not nid:
        return cs
    voters, learners = set(cs.voters), set(cs.learners)
    if cc.type == ConfChangeType.ADD_NODE:
        voters.add(nid)
        learners.discard(nid)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        if nid not in voters:
            learners.add(nid)
    elif cc.type == ConfChangeType.REMOVE_NODE:
        voters.discard(nid)
        learners.discard(nid)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


def conf_state_after(cs: ConfState, entries: Iterable[Entry]) -> tuple[int, ConfState] | None:
    """Fold the conf change entries among `entries` (in order) into `cs`: the index of the
    last one and the configuration in force after it, or None when there is none."""
    last = 0
    for e in entries:
        if e.type == EntryType.CONF_CHANGE:
            cs = next_conf_state(cs, ConfChange.decode(e.data))
            last = e.index
    return (last, cs) if last else None
