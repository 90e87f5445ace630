"""Changing the metaroot group's membership while it serves, and leaving it once removed.

Owns: the `MetarootConfChangeRequest` handler (checks the request against the applied
membership and the leader's view of a learner's log, then proposes one raft conf change and
waits until it applied), the removal probe (a member that hears from no leader asks the
other members for their status; one that lists this peer's id as removed proves a committed
removal: the peer records it durably and stops), and retiring the raft group of a removed
peer. The rules and why they are safe are in metaroot.members. Never decides to change the
membership by itself: an operator asks (`nokv metaroot add-peer | remove-peer`).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from metaroot import members as members_mod
from metaroot.members import Members, Refusal, check_change, conf_change_for
from nokvpy.protocol import ErrorKind, RetryClass
from nokvpy.protocol.metaroot_rpc import (
    MetarootConfChangeReply,
    MetarootConfChangeRequest,
    MetarootStatusRequest,
)
from nokvpy.replication.driver import ProposalError
from nokvpy.rpc import RemoteError
from nokvpy.storage import WriteBatch

# `service` below is a metaroot.service.MetarootService (which imports this module)
MetarootService = Any

log = logging.getLogger("nokvpy.metaroot")

CONF_CHANGE_TIMEOUT = 10.0  # seconds a proposed conf change may take to apply
PROBE_PERIOD = 1.0  # seconds between removal probes while no leader is heard
PROBE_TIMEOUT = 0.5


def refusal_error(r: Refusal) -> RemoteError:
    kind = ErrorKind.INVALID_ARGUMENT if r.reason == "invalid_change" else ErrorKind.REJECTED
    retry = RetryClass.RETRY if r.retry else RetryClass.PERMANENT
    return RemoteError(kind, r.reason, r.message, {"retry_class": retry.name})


def reply_of(m: Members) -> MetarootConfChangeReply:
    return MetarootConfChangeReply(m.conf_index, m.voters, m.learners, m.peers(), m.removed)


def removed_error(service: MetarootService) -> RemoteError:
    """What a removed peer answers: not the leader and never will be; try the others."""
    return RemoteError(ErrorKind.NOT_LEADER, "removed",
                       f"{service.removed}; it serves nothing (ask another metaroot peer)",
                       {"leader_id": 0, "leader_addr": ""})


async def on_conf_change(service: MetarootService, req: MetarootConfChangeRequest,
                         ctx: Any) -> MetarootConfChangeReply:
    service.check_serving()
    if not service.group.is_leader:
        raise service.not_leader_error()
    if service.conf_lock.locked():
        raise refusal_error(Refusal("conf_change_pending", "another membership change is "
                                    "being applied on this leader", retry=True))
    async with service.conf_lock:
        members = service.sm.members
        match, commit = None, 0
        if req.kind == "promote" and service.group.is_leader:
            st = service.group.node.status()
            pr = st.progress.get(req.node_id) if isinstance(req.node_id, int) else None
            match, commit = (pr.match if pr is not None else None), st.commit
        bad = check_change(members, req.kind, req.node_id, req.address,
                           learner_match=match, commit=commit)
        if bad is not None:
            raise refusal_error(bad)
        cc = conf_change_for(req.kind, req.node_id, req.address)
        log.info("metaroot-%d proposes %s of metaroot-%d%s", service.node_id, req.kind,
                 req.node_id, f" at {req.address}" if req.address else "")
        result: Any = None
        with trio.move_on_after(CONF_CHANGE_TIMEOUT) as scope:
            try:
                result = await service.driver.propose(service.group, cc.encode(),
                                                      conf_change=True)
            except ProposalError as exc:
                raise proposal_error(service, exc) from None
        if scope.cancelled_caught:
            raise RemoteError(ErrorKind.UNAVAILABLE, "outcome_unknown",
                              f"the {req.kind} of metaroot-{req.node_id} did not apply within "
                              f"{CONF_CHANGE_TIMEOUT:g}s; ask the status before retrying",
                              {"retry_class": RetryClass.RETRY.name})
        return reply_of(result if isinstance(result, Members) else service.sm.members)


def proposal_error(service: MetarootService, exc: ProposalError) -> RemoteError:
    text = str(exc)
    if exc.reason == "not_leader":
        return service.not_leader_error()
    if "pending conf change" in text:
        return refusal_error(Refusal("conf_change_pending", "a membership change is still "
                                     "pending in the raft log", retry=True))
    if "last voter" in text:
        return refusal_error(Refusal("last_voter", "the change would remove the last voter"))
    return RemoteError(ErrorKind.UNAVAILABLE, exc.reason, text,
                       {"retry_class": RetryClass.RETRY.name})


# ---- leaving the group --------------------------------------------------------------------


async def mark_removed(service: MetarootService, how: str) -> None:
    """Record durably that this peer was removed (`how`), then stop serving."""
    if service.removed:
        return
    batch = WriteBatch()
    members_mod.stage_removed(batch, how)
    await service.env.commit(batch)
    service.note_removed(how)


async def retire_when_removed(service: MetarootService) -> None:
    """Once this peer knows it was removed: take its raft group out of the ready loop, so
    it never campaigns or answers raft messages again."""
    await service.removed_event.wait()
    log.warning("%s: its raft group stops; this process serves only its status now",
                service.removed)
    service.driver.remove_group(service.group.group_id)


async def probe_removal(service: MetarootService, rpc: Any, period: float = PROBE_PERIOD) -> None:
    """A member that knows no leader asks the other members whether it was removed (it may
    have missed its own removal entry: the leader stops sending to a removed peer)."""
    while not service.removed:
        await trio.sleep(period)
        group = service.group
        members = service.sm.members
        if service.removed or group.is_leader or group.leader_id:
            continue
        if not members.is_member(service.node_id):
            continue  # joining: not added yet, nothing to learn
        for pid in members.ids():
            addr = service.peers.get(pid)
            if pid == service.node_id or not addr:
                continue
            try:
                st = await rpc.call(addr, MetarootStatusRequest(), timeout=PROBE_TIMEOUT)
            except Exception:  # noqa: BLE001 - an unreachable peer says nothing
                continue
            if service.node_id in (getattr(st, "removed_ids", None) or ()):
                await mark_removed(service, f"metaroot-{service.node_id} was removed from the "
                                   f"metaroot group (metaroot-{pid} applied its removal by "
                                   f"raft index {st.conf_index})")
                return


def status_fields(service: MetarootService) -> dict[str, Any]:
    """The membership part of a MetarootStatus."""
    m = service.sm.members
    node = service.group.node
    basic = node.basic_status()
    match = None
    if service.group.is_leader and not service.removed:
        match = {pid: pr.match for pid, pr in node.status().progress.items()}
    return {"peers": m.peers(), "voters": m.voters, "learners": m.learners,
            "removed_ids": m.removed, "conf_index": m.conf_index,
            "removed": bool(service.removed), "raft_applied": service.group.applied,
            "raft_commit": basic.commit, "match": match}
