"""Topology commands at apply time: split, merge, membership changes, fences (replay-safe;
part of the topology runtime).

Owns: what every replica does when a topology command commits in a region's log, staged into
the SAME write batch as the apply (descriptor, child raft state, source teardown, the
terminal event in the publish outbox), and the in-memory follow-ups run once that batch is
durable (start the child peer, drop the merged source, destroy a removed replica, lifecycle
updates). Apply decisions depend only on the region's own log and the descriptor it
produced (deterministic across replicas); a command whose base no longer matches the
descriptor is refused as a whole, so re-applying (replay) or a duplicate proposal is a no-op.

Commands:
  split           parent keeps [start, key) at version + 1; the child [key, end) is created
                  on every store of the command with raft state initialised at index 5
                  (INIT_INDEX, a snapshot boundary, so a peer that missed the split is filled by
                  a region snapshot, never by a log that lacks the parent's data)
  prepare_merge   (source log) freezes the source: state MERGING, writes refused at apply
  rollback_merge  (source log) unfreezes it (compensation before the commit)
  commit_merge    (target log) the target becomes the merged descriptor; the local source
                  replica is torn down in the same batch (its data stays: the target owns it)
  fence           once applied, every earlier entry of the log has applied; a compensating
                  fence (payload: an int stamp) also raises the descriptor's revision to the
                  stamp, after which split, prepare_merge and commit_merge of a plan rooted
                  at or before it are refused ("fenced", nothing changes: see
                  raftstore.topology.compensation). Conf changes cannot be refused at apply
                  (raft applies the membership regardless): their steps are stopped before
                  proposing (raftstore.topology.runtime.Runtime.fence_barrier)
  conf change     with a PeerChangePayload context: add_learner / remove_learner (no epoch
                  bump), promote / remove (conf_ver + 1, terminal)

The handlers see the runtime as an `ApplyContext` (its store, lifecycle, publisher and the
two follow-ups: start a split child, destroy a removed replica).

Never: awaits, commits, publishes (the publisher drains the outbox), or lets an exception
escape into the driver (a bad command is refused with a result).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from nokvpy import failpoints
from nokvpy.protocol import (
    EventKind,
    ExecutionOutcome,
    PeerChange,
    PeerMeta,
    RangeMerge,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    RegionState,
    RootEvent,
    TopologyStage,
)
from nokvpy.protocol.raftstore_cmds import (
    AdminCommand,
    KvResult,
    MergePayload,
    OutboxEntry,
    PeerChangePayload,
    RegionTombstone,
    SplitPayload,
)
from nokvpy.protocol.transitions import transition_id as _tid_of
from nokvpy.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    SnapshotMetadata,
)
from nokvpy.storage import WriteBatch
from nokvpy.wire import DecodeError, decode, encode
from raftstore.apply import encode_descriptor
from raftstore.topology.compensation import fence_refuses, unsafe_compensation
from raftstore.topology.context import ApplyContext

log = logging.getLogger("nokvpy.raftstore.topology")

S = TopologyStage
INIT_INDEX = 5  # first applied index of a region created by a split (TiKV's RAFT_INIT_LOG_INDEX)
INIT_TERM = 5
OK = KvResult(True)


def refused(error: str) -> KvResult:
    return KvResult(False, error=error)


def apply_peer_change(desc: RegionDescriptor, cc_type: ConfChangeType,
                      p: PeerChangePayload) -> RegionDescriptor:
    """The descriptor after membership change `cc_type` of `p` (pure)."""
    peers = list(desc.peers)
    conf_ver = desc.epoch.conf_ver
    revision = p.target.revision or desc.revision
    if cc_type == ConfChangeType.ADD_LEARNER:
        if all(q.store_id != p.store_id for q in peers):
            peers.append(PeerMeta(p.store_id, p.peer_id, True))
        revision = desc.revision
    elif cc_type == ConfChangeType.ADD_NODE:
        for i, q in enumerate(peers):
            if q.peer_id == p.peer_id:
                peers[i] = PeerMeta(q.store_id, q.peer_id, False)
                break
        else:
            peers.append(PeerMeta(p.store_id, p.peer_id, False))
        conf_ver += 1
    elif cc_type == ConfChangeType.REMOVE_NODE:
        peers = [q for q in peers if q.peer_id != p.peer_id]
        if p.step == "remove_learner":
            revision = desc.revision  # (compensation: keeps the fence's stamp)
        else:
            conf_ver += 1
    return replace(desc, peers=tuple(peers), epoch=RegionEpoch(desc.epoch.version, conf_ver),
                   revision=revision)


class ApplyHandlers:
    """Bound to the topology runtime `rt` (its store, publisher, lifecycle, follow-ups)."""

    def __init__(self, rt: ApplyContext):
        self.rt = rt
        self.store = rt.store

    def install(self, sm: Any) -> None:
        sm.admin_handlers.update({
            "split": self.apply_split,
            "prepare_merge": self.apply_prepare_merge,
            "rollback_merge": self.apply_rollback_merge,
            "commit_merge": self.apply_commit_merge,
            "fence": self.apply_fence,
        })
        sm.conf_change_handler = self.apply_conf_change

    # ---- helpers -------------------------------------------------------------------------

    def _role(self, executor_store: int) -> str:
        return "primary" if executor_store == self.store.store_id else "backup"

    def _stage_terminal(self, batch: WriteBatch, tid: str, region_id: int, kind: str,
                        event: RootEvent, executor_store: int) -> None:
        role = self._role(executor_store)
        self.rt.publisher.stage(batch, OutboxEntry(tid, event, role, "terminal", region_id))

        def applied() -> None:
            lc = self.rt.lifecycle
            lc.track(tid, region_id, kind, "executor" if role == "primary" else "replica",
                     S.EXECUTING, "applied by this replica")
            lc.move(tid, S.APPLIED, "applied; terminal event staged in the outbox",
                    outcome=ExecutionOutcome.APPLIED)
            lc.move(tid, S.TERMINAL_PENDING, "waiting for the publisher")
            try:
                failpoints.check("store.after_apply_before_publish")
            except failpoints.FailpointError as exc:
                log.warning("store %d: %s", self.store.store_id, exc)

        batch.on_commit(applied)

    def _fenced(self, batch: WriteBatch, desc: RegionDescriptor, cmd: AdminCommand,
                instance: int) -> KvResult | None:
        """The refusal of a forward step whose plan a compensation fenced (None: not
        fenced). Deterministic: it reads the descriptor the log produced."""
        if not fence_refuses(desc, instance):
            return None
        tid, rid, stamp = cmd.transition_id, desc.region_id, desc.revision
        self.store.counters["fenced_applies_refused"] += 1

        def note() -> None:
            self.rt.lifecycle.remark(tid, f"{cmd.op} of {tid} (plan at root index {instance}) "
                                     f"refused at apply in region {rid}: fenced (stamp {stamp})")

        batch.on_commit(note)
        return refused("fenced")

    def _stage_teardown(self, batch: WriteBatch, rid: int, reason: str) -> None:
        """Stage removing replica `rid` from this store without touching KV data (a merged
        source: the target owns its range now). The group stops at once (its Ready of this
        turn, if any, is skipped by the driver)."""
        store = self.store
        peer = store.peers.get(rid)
        epoch = peer.descriptor.epoch if peer is not None and peer.descriptor else RegionEpoch(0, 0)
        peer_id = peer.peer_id if peer is not None else 0
        store.driver.remove_group(rid)
        tomb = RegionTombstone(rid, epoch, peer_id, reason)  # "merged ...": blocks every peer
        store.meta.stage_tombstone(batch, rid, encode(tomb))
        store.meta.stage_delete_region(batch, rid)
        store.meta.stage_delete_replay_pointer(batch, rid)
        store.raftlog.stage_destroy_group(batch, rid)
        store.changes.stage_drop(batch, rid)

        def gone() -> None:
            if store.peers.get(rid) is peer:
                store.peers.pop(rid, None)
            store.tombstones[rid] = tomb
            store.counters["regions_merged_away"] += 1

        batch.on_commit(gone)

    # ---- split ---------------------------------------------------------------------------

    def apply_split(self, sm: Any, batch: WriteBatch, e: Entry, cmd: AdminCommand) -> KvResult:
        p = cmd.payload
        desc = sm.staged_descriptor or sm.descriptor
        if not isinstance(p, SplitPayload) or desc is None:
            return refused("invalid")
        if desc.same_truth(p.left) or desc.epoch.version > p.base.epoch.version:
            return refused("already_applied" if desc.same_truth(p.left) else "epoch_mismatch")
        if (desc.epoch != p.base.epoch or desc.start_key != p.base.start_key
                or desc.end_key != p.base.end_key or not desc.contains(p.split_key)
                or p.split_key == desc.start_key):
            return refused("epoch_mismatch")
        if desc.state != RegionState.RUNNING:
            return refused("region_frozen")
        fenced = self._fenced(batch, desc, cmd, p.left.revision)
        if fenced is not None:
            return fenced
        left = p.left
        sm.staged_descriptor = left
        try:
            child_staged = self._stage_child(batch, p.right)
        except Exception as exc:  # noqa: BLE001 - the child is then filled by a snapshot
            child_staged = False
            self.store.counters["split_child_stage_errors"] += 1
            log.error("store %d: staging child %d of split %s failed: %s", self.store.store_id,
                      p.right.region_id, cmd.transition_id, exc)
        if child_staged and sm.changes is not None:  # the child's range keeps its history
            sm.changes.hand_on(batch, p.right.region_id, p.right.start_key, p.right.end_key,
                               None, (p.right.epoch.version, 0))
        tid = cmd.transition_id
        event = RootEvent(EventKind.SPLIT_COMMITTED,
                          RangeSplit(sm.region_id, p.split_key, left, p.right, p.base))
        self._stage_terminal(batch, tid, sm.region_id, "split", event, p.executor_store)
        parent_id = sm.region_id
        if child_staged:
            batch.on_commit(lambda: self.rt.on_split_applied(parent_id, p.right))
        self.store.counters["splits_applied"] += 1
        return OK

    def _stage_child(self, batch: WriteBatch, right: RegionDescriptor) -> bool:
        """Stage the child replica's initial state; False when there is nothing to create."""
        store = self.store
        rid = right.region_id
        me = right.peer_on(store.store_id)
        if me is None or rid in store.tombstones:
            return False
        existing = store.peers.get(rid)
        if existing is not None and existing.sm.applied >= INIT_INDEX:
            return False  # already filled by a snapshot from the child's leader
        g = store.raftlog.group(rid)
        hs = g.hard_state
        if existing is not None:  # an uninitialized peer created by the child's leader
            store.driver.remove_group(rid)
            store.peers.pop(rid, None)
        voters = tuple(q.peer_id for q in right.peers if not q.learner)
        learners = tuple(q.peer_id for q in right.peers if q.learner)
        store.meta.stage_region(batch, rid, encode_descriptor(right))
        store.meta.stage_replay_pointer(batch, rid, INIT_INDEX, INIT_TERM)
        store.raftlog.stage_destroy_group(batch, rid)
        store.raftlog.stage_apply_snapshot(
            batch, rid, SnapshotMetadata(INIT_INDEX, INIT_TERM, ConfState(voters, learners)))
        keep_vote = hs.term >= INIT_TERM
        store.raftlog.stage_hard_state(batch, rid, HardState(
            max(hs.term, INIT_TERM), hs.vote if keep_vote else 0, INIT_INDEX))
        # Until the batch is durable and `on_split_applied` starts the child, its traffic is
        # dropped: a leader's message in between created another uninitialized peer, whose
        # raft node then disagreed with the child state this batch writes under it (a store
        # crashed on "applied 46 out of range [prev applied 0, committed 41]"), and the
        # child was never started.
        store.destroying.add(rid)
        return True

    # ---- merge ---------------------------------------------------------------------------

    def apply_prepare_merge(self, sm: Any, batch: WriteBatch, e: Entry,
                            cmd: AdminCommand) -> KvResult:
        p = cmd.payload
        desc = sm.staged_descriptor or sm.descriptor
        if not isinstance(p, MergePayload) or desc is None:
            return refused("invalid")
        if desc.state == RegionState.MERGING:
            return OK  # already frozen (replayed or re-proposed)
        if desc.epoch != p.source.epoch or (desc.start_key, desc.end_key) != (
                p.source.start_key, p.source.end_key):
            return refused("epoch_mismatch")
        fenced = self._fenced(batch, desc, cmd, p.merged.revision)
        if fenced is not None:
            return fenced
        sm.staged_descriptor = replace(desc, state=RegionState.MERGING)
        tid = cmd.transition_id
        rid = sm.region_id

        def frozen() -> None:
            self.rt.lifecycle.note(tid, f"source region {rid} frozen at index {e.index}")

        batch.on_commit(frozen)
        return OK

    def apply_rollback_merge(self, sm: Any, batch: WriteBatch, e: Entry,
                             cmd: AdminCommand) -> KvResult:
        desc = sm.staged_descriptor or sm.descriptor
        if desc is None:
            return refused("invalid")
        if desc.state != RegionState.MERGING:
            return OK
        sm.staged_descriptor = replace(desc, state=RegionState.RUNNING)
        return OK

    def apply_commit_merge(self, sm: Any, batch: WriteBatch, e: Entry,
                           cmd: AdminCommand) -> KvResult:
        p = cmd.payload
        desc = sm.staged_descriptor or sm.descriptor
        if not isinstance(p, MergePayload) or desc is None:
            return refused("invalid")
        if desc.same_truth(p.merged):
            return refused("already_applied")
        if desc.epoch != p.target.epoch or (desc.start_key, desc.end_key) != (
                p.target.start_key, p.target.end_key):
            return refused("epoch_mismatch")
        fenced = self._fenced(batch, desc, cmd, p.merged.revision)
        if fenced is not None:
            return fenced
        store = self.store
        src = p.source.region_id
        local_src = store.peers.get(src)
        if local_src is not None and local_src.descriptor is not None and \
                local_src.descriptor.state != RegionState.MERGING:
            # The executor verified every source replica froze before proposing; this is a
            # replica rebuilt since. Its data may be incomplete: counted and logged.
            store.counters["merge_source_not_frozen"] += 1
            log.error("store %d: commit_merge of %s finds source %d not frozen here",
                      store.store_id, cmd.transition_id, src)
        merged = p.merged
        sm.staged_descriptor = merged
        self._merge_changes(sm, batch, local_src, p, e.index)
        if local_src is not None or src not in store.tombstones:
            self._stage_teardown(batch, src, f"merged into region {sm.region_id}")
        base_left, base_right = ((p.target, p.source) if p.left_region_id == p.target.region_id
                                 else (p.source, p.target))
        event = RootEvent(EventKind.MERGED, RangeMerge(p.left_region_id, p.right_region_id,
                                                       merged, base_left, base_right))
        self._stage_terminal(batch, cmd.transition_id, sm.region_id, "merge", event,
                             p.executor_store)
        store.counters["merges_applied"] += 1
        return OK

    @staticmethod
    def _merge_changes(sm: Any, batch: WriteBatch, local_src: Any, p: MergePayload,
                       index: int) -> None:
        """The target takes the frozen source's change log (raftstore.changelog); without
        one here, the merged range's history starts at the merge."""
        mine = sm.changes
        if mine is None:
            return
        theirs = local_src.sm.changes if local_src is not None else None
        if theirs is None or mine.floor is None:
            mine.cut(batch, (p.merged.epoch.version, index))
            return
        floor, moved = theirs.hand_on(batch, sm.region_id, p.source.start_key,
                                      p.source.end_key, mine.floor,
                                      (p.merged.epoch.version, index))
        mine.took_over(floor, moved)

    def apply_fence(self, sm: Any, batch: WriteBatch, e: Entry, cmd: AdminCommand) -> KvResult:
        stamp = cmd.payload
        desc = sm.staged_descriptor or sm.descriptor
        if type(stamp) is int and stamp > 0 and desc is not None and stamp > desc.revision \
                and not unsafe_compensation():
            sm.staged_descriptor = replace(desc, revision=stamp)
            self.store.counters["fences_stamped"] += 1
        return KvResult(True, current=str(e.index).encode())

    # ---- membership ----------------------------------------------------------------------

    def apply_conf_change(self, sm: Any, batch: WriteBatch, e: Entry) -> Any:
        try:
            cc = ConfChange.decode(e.data)
            cmd = decode(cc.context) if cc.context else None
        except (ValueError, DecodeError):
            return None
        if not isinstance(cmd, AdminCommand) or not isinstance(cmd.payload, PeerChangePayload):
            return None  # a founding entry (bootstrap) or a bare conf change
        desc = sm.staged_descriptor or sm.descriptor
        if desc is None:
            return None
        p = cmd.payload
        new = apply_peer_change(desc, cc.type, p)
        sm.staged_descriptor = new
        store = self.store
        rid = sm.region_id
        tid = cmd.transition_id
        local = store.peers.get(rid)
        if p.step in ("promote", "remove"):
            adding = p.step == "promote"
            kind = EventKind.PEER_ADDED if adding else EventKind.PEER_REMOVED
            event = RootEvent(kind, PeerChange(rid, p.store_id, p.peer_id, new, p.base))
            member = p.base.peer_on(store.store_id)
            if local is not None and p.peer_id != local.peer_id and (
                    member is None or member.peer_id != local.peer_id):
                # A later peer of this store replaying history written before it existed: it
                # is not the base's member, its descriptor is not the base, and the event it
                # would build is not the plan's (root refuses it for good). The base's members
                # publish it.
                store.counters["replayed_terminal_not_staged"] += 1
            elif _tid_of(event) == tid:
                self._stage_terminal(batch, tid, rid, "add_peer" if adding else "remove_peer",
                                     event, p.executor_store)
        # Our own removal only if it removes the peer applying it: a later peer of the region
        # on this store (added here again) that replays the log from its start applies the
        # removal of the older one, which the descriptor of that time lists on this store.
        if cc.type == ConfChangeType.REMOVE_NODE and local is not None and \
                local.peer_id == p.peer_id and p.store_id == store.store_id:
            pid = local.peer_id
            batch.on_commit(lambda: self.rt.on_local_peer_removed(rid, tid, pid))
        store.counters[f"conf_changes_applied.{p.step}"] += 1
        return KvResult(True)
