"""The driver's input queue: one small immutable command per caller action.

Owns: the commands any task may queue for a group (`Propose`, `ReadIndex`, `Campaign`,
`TransferLeader`, `ReportUnreachable`, `ReportSnapshot`, `Wake`) and how each is stepped into the
group's raw node (`apply`) or answered when the group stopped before it ran (`drop`). Never
runs outside the driver's loop task (a raw node is only touched there) and never persists,
sends or waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from nokvpy.raft.types import NotAppendedError, NotLeaderError
from nokvpy.replication.group import Group, ProposalError, Waiter


@dataclass(frozen=True, slots=True)
class Command:
    group: Group

    def apply(self) -> None:
        """Step this command into the group's raw node (loop task only)."""
        raise NotImplementedError

    def drop(self) -> None:
        """The group stopped before this command ran."""


@dataclass(frozen=True, slots=True)
class Propose(Command):
    """A normal entry (or, with `conf_change`, an encoded ConfChange) proposed on the leader;
    `waiter` learns its (index, term) once appended and its result once applied."""

    data: bytes
    waiter: Waiter
    conf_change: bool = False

    def apply(self) -> None:
        group, waiter = self.group, self.waiter
        try:
            index, term = group.node.propose_at(self.data, self.conf_change)
        except NotLeaderError as exc:
            waiter.fail(ProposalError("not_leader", f"node {group.node_id} is no longer the "
                                      f"leader of group {group.group_id}", exc.leader_hint))
            return
        except NotAppendedError as exc:
            waiter.fail(ProposalError("dropped", "proposal was not appended", exc.leader_hint))
            return
        except Exception as exc:
            waiter.fail(ProposalError(getattr(exc, "reason", "dropped") or "dropped",
                                      f"proposal refused: {exc}",
                                      getattr(exc, "leader_hint", group.leader_id)))
            return
        waiter.term = term
        waiter.index = index
        group.waiters[index] = waiter

    def drop(self) -> None:
        self.waiter.fail(ProposalError("stopped", "group stopped"))


@dataclass(frozen=True, slots=True)
class ReadIndex(Command):
    """A ReadIndex request; its waiter is `group.reads[ctx]`."""

    ctx: bytes

    def apply(self) -> None:
        group = self.group
        try:
            group.node.read_index(self.ctx)
        except Exception as exc:
            w = group.reads.get(self.ctx)
            if w is not None:
                w.fail(ProposalError("not_leader", f"read index refused: {exc}",
                                     group.leader_id))


@dataclass(frozen=True, slots=True)
class Campaign(Command):
    def apply(self) -> None:
        self.group.node.campaign()


@dataclass(frozen=True, slots=True)
class TransferLeader(Command):
    to_node: int

    def apply(self) -> None:
        self.group.node.transfer_leader(self.to_node)


@dataclass(frozen=True, slots=True)
class ReportUnreachable(Command):
    """The transport could not deliver to `to_node`: the leader probes it again."""

    to_node: int

    def apply(self) -> None:
        self.group.node.report_unreachable(self.to_node)


@dataclass(frozen=True, slots=True)
class ReportSnapshot(Command):
    """A snapshot sent to `to_node` was delivered (or lost): leave snapshot state."""

    to_node: int
    failed: bool

    def apply(self) -> None:
        self.group.node.report_snapshot(self.to_node, self.failed)


@dataclass(frozen=True, slots=True)
class Wake(Command):
    """Wake a hibernating group (the driver wakes a group before it applies any command, so
    there is nothing left to do here): its leader may be gone (raftstore/hibernation.py)."""

    def apply(self) -> None:
        return None
