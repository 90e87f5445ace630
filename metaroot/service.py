"""metaroot: the replicated rooted event log that owns durable cluster truth.

Owns: one raft group (group id 0) of 1, 3 or 5 peers (founded so; grown or shrunk one peer
at a time, metaroot.members) whose normal entries are encoded `AppendRequest`,
`GrantRequest` and `FenceAllocatorRequest` records. Applying an entry is deterministic on
every peer: fences are checked, events validated against the rooted state and given dense
tokens `RootToken(entry term, index)`, written to the event log in the same transaction as
the raft applied index, and the retained tail is compacted behind a checkpoint; a conf change
entry updates the membership record (metaroot.members) in that same transaction. Serves
Append / Snapshot / Watch / ConfirmToken / FenceAllocator / ApplyGrant / Status and
MetarootConfChange (metaroot.reconfig) over `nokvpy.rpc`; a removed peer serves only its
status. Never serves routes and never decides topology: it records what it is told, once,
in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from metaroot import members as members_mod
from metaroot import reconfig, rootlog
from metaroot.errors import RootEventRejected
from metaroot.grants import plan_grant_command
from metaroot.members import Members
from metaroot.state import RootState
from nokvpy import failpoints, grantsig
from nokvpy.adminsvc import register_failpoint_admin
from nokvpy.protocol import (
    AllocatorFence,
    AllocatorKind,
    CommittedEvent,
    Duty,
    ErrorKind,
    EventKind,
    RetryClass,
    RootEvent,
    RootToken,
)
from nokvpy.protocol.grants import AppendFences, AuthorityGrant, GrantCommand, GrantCommandKind
from nokvpy.protocol.metaroot_rpc import (
    AppendReply,
    AppendRequest,
    ConfirmTokenReply,
    ConfirmTokenRequest,
    FenceAllocatorReply,
    FenceAllocatorRequest,
    GrantReply,
    GrantRequest,
    MetarootConfChangeReply,
    MetarootConfChangeRequest,
    MetarootSnapshotData,
    MetarootStatus,
    MetarootStatusRequest,
    SnapshotReply,
    SnapshotRequest,
    WatchItem,
    WatchRequest,
)
from nokvpy.raft.types import ConfChange, ConfState, Entry, EntryType, Snapshot
from nokvpy.replication.driver import Driver, ProposalError
from nokvpy.rpc import RemoteError
from nokvpy.storage import Env, RaftLogStore, WriteBatch
from nokvpy.wire import DecodeError, decode, encode

log = logging.getLogger("nokvpy.metaroot")

GROUP_ID = 1  # the only raft group of a metaroot process (its own LMDB environment)
WATCH_BATCH = 512


@dataclass(slots=True, frozen=True)
class Rejection:
    kind: str
    reason: str
    message: str
    retry_class: RetryClass = RetryClass.PERMANENT
    violation: str = ""

    def error(self) -> RemoteError:
        details: dict[str, Any] = {"retry_class": self.retry_class.name}
        if self.violation:
            details["violation"] = str(self.violation)
        return RemoteError(self.kind, self.reason, self.message, details)


def _rejection(exc: RootEventRejected) -> Rejection:
    kind = ErrorKind.STALE_EPOCH if "epoch" in exc.reason else ErrorKind.REJECTED
    return Rejection(kind, exc.reason, str(exc), exc.retry_class, exc.violation)


class RootStateMachine:
    """Applies metaroot entries; holds the committed `RootState` and the metaroot
    membership (`metaroot.members.Members`, folded from the conf change entries) in memory."""

    def __init__(self, env: Env, retained_tail: int, members: Members | None = None):
        self.env = env
        self.retained_tail = retained_tail
        self.state, self._applied, self.first_retained = rootlog.load(env)
        self.members = members if members is not None else members_mod.load(env)
        self.on_members: Callable[[Members], None] | None = None  # after a change commits
        self.changed = trio.Event()
        self.checkpoints = 0
        # A snapshot staged but not yet committed: (state, applied, first_retained, members).
        # Entries applied in the same Ready as the snapshot must build on it, not on
        # self.state.
        self._restored: tuple[RootState, int, int, Members] | None = None

    # -- driver protocol ------------------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def stage_apply(self, batch: WriteBatch, entries: list[Entry]) -> list[Any]:
        if self._restored is not None:
            state, _, first_retained, members = self._restored
        else:
            state, first_retained, members = self.state, self.first_retained, self.members
        results: list[Any] = []
        for e in entries:
            result: Any = None
            if e.type == EntryType.CONF_CHANGE:
                try:
                    cc = ConfChange.decode(e.data)
                except ValueError:  # the raft core fails on it first; never proposed by us
                    log.error("metaroot entry %d: undecodable conf change", e.index)
                else:
                    members = members.after(cc, e.index)
                    members_mod.stage(batch, members)
                    result = members
            elif e.type == EntryType.NORMAL and e.data:
                try:
                    cmd = decode(e.data)
                except DecodeError as exc:  # cannot happen for entries we proposed
                    result = Rejection(ErrorKind.INVALID_ARGUMENT, "undecodable", str(exc))
                else:
                    try:
                        state, result = self._apply_command(batch, state, e.term, cmd)
                    except Exception as exc:  # noqa: BLE001
                        # A committed entry must never crash the apply loop: it would crash
                        # every peer, and again on every restart (a poison entry). Any error
                        # here is deterministic (same state, same entry on every peer), so
                        # refusing the command is the same decision everywhere. Nothing of
                        # it was staged: events are staged only after the whole command
                        # validated.
                        log.exception("metaroot entry %d refused: apply failed", e.index)
                        result = Rejection(ErrorKind.INVALID_ARGUMENT, "unappliable",
                                           f"{type(exc).__name__}: {exc}")
            results.append(result)
        last = entries[-1].index
        rootlog.stage_applied(batch, last)
        retained = state.token.index - first_retained + 1
        if retained > self.retained_tail + max(16, self.retained_tail // 8):
            keep_from = state.token.index - self.retained_tail + 1
            rootlog.stage_checkpoint(batch, state)
            rootlog.stage_compact(batch, keep_from)
            first_retained = keep_from
            self.checkpoints += 1
        self._staged = (state, last, first_retained, members)
        return results

    def after_commit(self, entries: list[Entry], results: list[Any]) -> None:
        before = self.members
        self.state, self._applied, self.first_retained, self.members = self._staged
        self._restored = None
        if self.members is not before and self.on_members is not None:
            self.on_members(self.members)
        self._notify()

    def snapshot(self) -> tuple[int, bytes]:
        data = MetarootSnapshotData(self.state.to_checkpoint(), self.members.to_json())
        return self._applied, encode(data)

    def stage_restore(self, batch: WriteBatch, snapshot: Snapshot) -> None:
        data = decode(snapshot.data)
        meta = snapshot.metadata
        if isinstance(data, MetarootSnapshotData):
            checkpoint = data.checkpoint
            members = Members.from_json(data.members) if data.members else \
                self.members.restored(meta.conf_state, meta.index)
        else:  # an older snapshot: the bare checkpoint
            checkpoint, members = data, self.members.restored(meta.conf_state, meta.index)
        state = RootState.from_checkpoint(checkpoint)
        rootlog.stage_reset(batch)
        rootlog.stage_checkpoint(batch, state)
        rootlog.stage_applied(batch, meta.index)
        members_mod.stage(batch, members)

        self._restored = (state, meta.index, state.token.index + 1, members)

        def installed() -> None:
            before = self.members
            self.state, self._applied, self.first_retained, self.members = self._restored or (
                state, meta.index, state.token.index + 1, members)
            self._restored = None
            if self.members is not before and self.on_members is not None:
                self.on_members(self.members)
            self._notify()

        batch.on_commit(installed)

    def on_conf_change(self, cc: ConfChange, conf_state: ConfState) -> None:
        pass

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- commands -------------------------------------------------------------------------

    def _apply_command(self, batch: WriteBatch, state: RootState, term: int, cmd: Any):
        if isinstance(cmd, AppendRequest):
            return self._append(batch, state, term, cmd.events,
                                AppendFences(cmd.expected_cluster_epoch, cmd.grant_era, cmd.duty))
        if isinstance(cmd, FenceAllocatorRequest):
            bad = _check_fence_request(cmd)
            if bad is not None:
                return state, bad
            current = state.id_fence if cmd.kind == AllocatorKind.ID else state.tso_fence
            if cmd.minimum <= current:
                return state, FenceAllocatorReply(cmd.kind, current, state.token)
            kind = (EventKind.ID_ALLOCATOR_FENCED if cmd.kind == AllocatorKind.ID
                    else EventKind.TSO_ALLOCATOR_FENCED)
            event = RootEvent(kind, AllocatorFence(cmd.kind, cmd.minimum))
            duty = Duty.ALLOC_ID if cmd.kind == AllocatorKind.ID else Duty.TSO
            fences = AppendFences(None, cmd.grant_era, duty if cmd.grant_era is not None else None)
            state, reply = self._append(batch, state, term, [event], fences)
            if isinstance(reply, Rejection):
                return state, reply
            return state, FenceAllocatorReply(cmd.kind, cmd.minimum, reply.last_token)
        if isinstance(cmd, GrantRequest):
            events, result = plan_grant_command(state, cmd.command)
            if events:
                state, reply = self._append(batch, state, term, events, AppendFences(None, None, None))
                if isinstance(reply, Rejection):
                    return state, reply
            return state, GrantReply(result, state.token)
        return state, Rejection(ErrorKind.INVALID_ARGUMENT, "unknown_command",
                                f"metaroot cannot apply {type(cmd).__name__}")

    def _append(self, batch, state: RootState, term: int, events: list[RootEvent],
                fences: AppendFences):
        # Idempotency first: a retried append of already-applied events is answered with
        # the original tokens and writes nothing. A request id reused for another event is
        # refused (request_id_mismatch), never applied.
        new = state
        staged: list[CommittedEvent] = []
        try:
            originals = [state.lookup_request(ev.request_id, ev) for ev in events]
            if events and all(t is not None for t in originals):
                return state, AppendReply(originals[0], originals[-1], state.cluster_epoch,
                                          duplicate=True)
            if any(t is not None for t in originals):
                # part of the batch was applied under these request ids, part not: the
                # caller mixed a retry with new events; applying it would log the applied
                # ones a second time (as no-ops with their own tokens).
                raise RootEventRejected("partial_duplicate",
                                        detail="some events of this append were already "
                                        "applied under their request ids; retry them alone")
            for ev in events:
                # check_fences + apply(fences) == validate + apply, deriving the event once
                new.check_fences(fences, ev)
                token = RootToken(term, new.token.index + 1)
                new = new.apply(token, ev, fences)
                staged.append(CommittedEvent(token, ev))
        except RootEventRejected as exc:
            return state, _rejection(exc)
        for ce in staged:
            rootlog.stage_event(batch, ce)
        if not staged:
            return state, AppendReply(state.token, state.token, state.cluster_epoch)
        return new, AppendReply(staged[0].token, staged[-1].token, new.cluster_epoch)


def _check_fence_request(cmd: FenceAllocatorRequest) -> Rejection | None:
    try:
        AllocatorKind(cmd.kind)
    except (ValueError, TypeError):
        return Rejection(ErrorKind.INVALID_ARGUMENT, "invalid_fence",
                         f"unknown allocator kind {cmd.kind!r}")
    if not isinstance(cmd.minimum, int) or isinstance(cmd.minimum, bool) or cmd.minimum < 0:
        return Rejection(ErrorKind.INVALID_ARGUMENT, "invalid_fence",
                         f"minimum must be an int >= 0, got {cmd.minimum!r}")
    if cmd.grant_era is not None and (not isinstance(cmd.grant_era, int)
                                      or isinstance(cmd.grant_era, bool)):
        return Rejection(ErrorKind.INVALID_ARGUMENT, "invalid_fence",
                         f"grant_era must be an int, got {cmd.grant_era!r}")
    return None


MAX_GRANT_TTL_MS = 60_000  # the longest lifetime an ISSUE may ask for


def wall_ms() -> int:
    return int(time.time() * 1000)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class MetarootService:
    def __init__(self, node_id: int, cluster_id: str, peers: dict[int, str], env: Env,
                 driver: Driver, raftlog: RaftLogStore, retained_tail: int = 4096,
                 members: Members | None = None):
        self.node_id = node_id
        self.cluster_id = cluster_id
        # the address book the raft transport resolves through: kept equal to the applied
        # membership's addresses (metaroot.members), updated in place
        self.peers = peers
        self.env = env
        self.driver = driver
        self.sm = RootStateMachine(env, retained_tail, members)
        self.sm.on_members = self.members_changed
        self.sync_peers(self.sm.members)
        # why this peer may not serve ("" while it may); removed_event fires when it learns
        self.removed = members_mod.removed_reason(env, node_id, self.sm.members)
        self.removed_event = trio.Event()
        self.conf_lock = trio.Lock()  # one membership change at a time on this leader
        storage = raftlog.group(GROUP_ID)
        self.group = driver.add_group(GROUP_ID, node_id, storage, self.sm,
                                      route=lambda peer: peer if peer in self.peers else None,
                                      election_tick=10, heartbeat_tick=1)
        self._signing_keys: dict[bytes, object] = {}  # cluster secret -> grant key
        self.counters: dict[str, int] = {}

    # -- membership -----------------------------------------------------------------------

    def sync_peers(self, members: Members) -> None:
        for pid in [p for p in self.peers if p not in members.addrs]:
            del self.peers[pid]
        self.peers.update(members.addrs)

    def members_changed(self, members: Members) -> None:
        """A conf change (or a snapshot) applied and is durable."""
        self.sync_peers(members)
        raft = self.group.conf_state if hasattr(self, "group") else None
        if raft is not None and (tuple(sorted(raft.voters)), tuple(sorted(raft.learners))) != \
                (members.voters, members.learners):
            log.error("metaroot-%d: membership record %s disagrees with the raft "
                      "configuration %s", self.node_id, members.conf_state(), raft)
        log.info("metaroot-%d: membership at raft index %d: voters %s, learners %s",
                 self.node_id, members.conf_index, list(members.voters),
                 list(members.learners))
        if self.node_id in members.removed:
            self.note_removed(members_mod.removed_reason(self.env, self.node_id, members))

    def note_removed(self, how: str) -> None:
        if not self.removed:
            self.removed = how
            log.warning("%s", how)
        self.removed_event.set()

    def check_serving(self) -> None:
        if self.removed:
            raise reconfig.removed_error(self)

    # -- helpers --------------------------------------------------------------------------

    def not_leader_error(self) -> RemoteError:
        if self.removed:
            return reconfig.removed_error(self)
        lead = self.group.leader_id
        return RemoteError(ErrorKind.NOT_LEADER, "not_leader",
                           f"metaroot-{self.node_id} is not the leader"
                           + (f"; try metaroot-{lead} at {self.peers.get(lead, '?')}" if lead else
                              "; no leader is known yet"),
                           {"leader_id": lead, "leader_addr": self.peers.get(lead, "")})

    async def _propose(self, record: Any) -> Any:
        if not self.group.is_leader:
            raise self.not_leader_error()
        try:
            result = await self.driver.propose(self.group, encode(record))
        except ProposalError as exc:
            if exc.reason == "not_leader":
                raise self.not_leader_error() from None
            raise RemoteError(ErrorKind.UNAVAILABLE, exc.reason, str(exc),
                              {"retry_class": RetryClass.RETRY.name}) from None
        if isinstance(result, Rejection):
            raise result.error()
        return result

    # -- handlers -------------------------------------------------------------------------

    async def on_append(self, req: AppendRequest, ctx) -> AppendReply:
        self.check_serving()
        if not req.events:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "empty", "append needs at least one event")
        for ev in req.events:
            try:
                self.sm.state.precheck(ev)  # shape errors answered without a raft round
            except RootEventRejected as exc:
                raise RemoteError(ErrorKind.INVALID_ARGUMENT, exc.reason, str(exc),
                                  {"retry_class": exc.retry_class.name}) from None
        await failpoints.acheck("metaroot.before_append")
        return await self._propose(req)

    async def on_fence(self, req: FenceAllocatorRequest, ctx) -> FenceAllocatorReply:
        self.check_serving()
        bad = _check_fence_request(req)  # shape errors answered without a raft round
        if bad is not None:
            raise bad.error()
        return await self._propose(req)

    async def on_grant(self, req: GrantRequest, ctx) -> GrantReply:
        self.check_serving()
        cmd = req.command
        if not isinstance(cmd, GrantCommand):
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "invalid_command",
                              "GrantRequest.command is not a GrantCommand")
        peer = getattr(ctx, "peer", None)
        server = getattr(ctx, "server", None)
        authenticated = bool(getattr(getattr(server, "identity", None), "secret", None))
        if authenticated and peer is not None and \
                not str(cmd.holder).startswith(f"{peer.name}#"):
            # a holder is "<coordinator name>#<nonce>": only that coordinator may issue,
            # renew, seal or inherit for it (its name is proven by the role handshake)
            self.counters["grant_holder_mismatch"] = \
                self.counters.get("grant_holder_mismatch", 0) + 1
            raise RemoteError(ErrorKind.PERMISSION_DENIED, "not_the_holder",
                              f"{peer.name} may not act for holder {cmd.holder!r}")
        reply = await self._propose(GrantRequest(self.stamp_grant(cmd)))
        secret = getattr(getattr(server, "identity", None), "secret", None)
        grant = getattr(getattr(reply, "result", None), "grant", None)
        if secret and isinstance(reply, GrantReply) and isinstance(grant, AuthorityGrant):
            # evidence a client can check: metaroot granted this (nokvpy.grantsig)
            key = self._signing_keys.get(secret)
            if key is None:
                key = self._signing_keys[secret] = grantsig.signing_key(secret)
            reply = replace(reply, signature=grantsig.sign(key, self.cluster_id, grant))
        return reply

    def stamp_grant(self, cmd: GrantCommand) -> GrantCommand:
        """Judge the command by root's clock, not the caller's: `now_ms` becomes root time
        (this leader's wall clock, never below any time root already recorded), and an
        ISSUE keeps its requested lifetime (expires - now), at most MAX_GRANT_TTL_MS."""
        root_now = max(self.root_time_floor(), wall_ms())
        if cmd.kind != GrantCommandKind.ISSUE:
            return replace(cmd, now_ms=root_now)
        ttl = cmd.expires_at_ms - cmd.now_ms if _is_int(cmd.expires_at_ms) and \
            _is_int(cmd.now_ms) else 0
        if ttl <= 0:
            return cmd  # refused by the state machine as an invalid command
        ttl = min(ttl, MAX_GRANT_TTL_MS)
        if ttl != cmd.expires_at_ms - cmd.now_ms:
            self.counters["grant_ttl_capped"] = self.counters.get("grant_ttl_capped", 0) + 1
        return replace(cmd, now_ms=root_now, expires_at_ms=root_now + ttl)

    def root_time_floor(self) -> int:
        """The latest time root has recorded (issue times of grants): root time never goes
        back when leadership moves to a peer whose clock is behind."""
        grants = self.sm.state.grants.values()
        return max((g.issued_at_ms for g in grants), default=0)

    async def on_snapshot(self, req: SnapshotRequest, ctx) -> SnapshotReply:
        self.check_serving()
        state = self.sm.state
        return SnapshotReply(state.token, state.to_checkpoint())

    async def on_confirm(self, req: ConfirmTokenRequest, ctx) -> ConfirmTokenReply:
        self.check_serving()
        if not self.group.is_leader:
            raise self.not_leader_error()
        try:
            index = await self.driver.read_index(self.group)
        except ProposalError as exc:
            if exc.reason == "not_leader":
                raise self.not_leader_error() from None
            raise RemoteError(ErrorKind.UNAVAILABLE, exc.reason, str(exc),
                              {"retry_class": RetryClass.RETRY.name}) from None
        await self.driver.wait_applied(self.group, index)
        members = self.sm.members
        return ConfirmTokenReply(self.sm.state.token, members.peers(), members.conf_index)

    def _leader_with_quorum(self) -> bool:
        """This peer is the leader, holds its quorum lease (a majority answered a heartbeat
        within the lease), has committed an entry in its term and applied up to its commit
        index: its current token is root's truth, so its watch items may confirm it."""
        group = self.group
        if not group.is_leader or getattr(group, "stopped", False):
            return False
        try:
            index = group.node.lease_read_index()  # (a metaroot group reads LEASE_BASED)
            return index is not None and group.applied >= index
        except AttributeError:  # no raft node to ask (a test double): never confirming
            return False

    async def on_watch(self, req: WatchRequest, ctx):
        """Deltas from `req.after`, then keepalives; every item says whether it comes from
        a leader holding its quorum (`from_leader`), decided when it is sent."""
        self.check_serving()
        after = req.after.index
        keepalive = max(0.05, req.keepalive_ms / 1000)
        while True:
            self.check_serving()  # removed while streaming: the subscriber moves on
            sm = self.sm
            state = sm.state
            # a subscriber ahead of this peer (it watched a newer leader) just waits here
            if after < state.token.index and after + 1 < sm.first_retained:
                yield WatchItem(state.token, [], bootstrap_required=True,
                                checkpoint=state.to_checkpoint(), checkpoint_token=state.token,
                                retained_from=sm.first_retained,
                                from_leader=self._leader_with_quorum())
                after = state.token.index
                continue
            if after < state.token.index:
                events = rootlog.events_after(self.env, after, WATCH_BATCH)
                if events and events[0].token.index == after + 1:
                    yield WatchItem(sm.state.token, events, retained_from=sm.first_retained,
                                    from_leader=self._leader_with_quorum())
                    after = events[-1].token.index
                    continue
            changed = sm.changed
            with trio.move_on_after(keepalive):
                await changed.wait()
                continue
            yield WatchItem(sm.state.token, [], retained_from=sm.first_retained,
                            from_leader=self._leader_with_quorum())

    async def on_status(self, req: MetarootStatusRequest, ctx) -> MetarootStatus:
        state = self.sm.state
        lead = self.group.leader_id
        return MetarootStatus(
            cluster_id=self.cluster_id, node_id=self.node_id, is_leader=self.group.is_leader,
            leader_id=lead, leader_addr=self.peers.get(lead, ""), term=self.group.term,
            committed_token=state.token, applied_token=state.token,
            cluster_epoch=state.cluster_epoch, retained_from=self.sm.first_retained,
            checkpoint_token=state.token,
            id_fence=state.id_fence, tso_fence=state.tso_fence,
            **reconfig.status_fields(self),
        )

    async def on_conf_change(self, req: MetarootConfChangeRequest,
                             ctx) -> MetarootConfChangeReply:
        return await reconfig.on_conf_change(self, req, ctx)

    def register(self, server) -> None:
        server.register(AppendRequest, self.on_append)
        server.register(FenceAllocatorRequest, self.on_fence)
        server.register(GrantRequest, self.on_grant)
        server.register(SnapshotRequest, self.on_snapshot)
        server.register(ConfirmTokenRequest, self.on_confirm)
        server.register(MetarootStatusRequest, self.on_status)
        server.register(MetarootConfChangeRequest, self.on_conf_change)
        server.register_stream(WatchRequest, self.on_watch)
        register_failpoint_admin(server)

