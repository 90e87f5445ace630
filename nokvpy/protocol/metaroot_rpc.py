"""Requests and replies of the metaroot service (DESIGN 4.1, 4.2, 6). Tags 200-299.

Refusals travel as remote errors (kind from `ErrorKind`, a stable reason, and details such as
`leader_id` / `leader_addr` for not-leader); replies carry only success.
"""

from __future__ import annotations

from dataclasses import dataclass

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.enums import AllocatorKind, Duty
from nokvpy.protocol.records import CommittedEvent, RootEvent, RootToken


@wire_type(200)
@dataclass(slots=True, frozen=True)
class AppendRequest:
    """Append events atomically on the metaroot leader.

    Fences: `expected_cluster_epoch` (None = unchecked) and, for duty-gated writes, the
    caller's grant `era` for `duty`; a retired era is refused (silence)."""

    events: list[RootEvent]
    expected_cluster_epoch: int | None = None
    grant_era: int | None = None
    duty: Duty | None = None


@wire_type(201)
@dataclass(slots=True, frozen=True)
class AppendReply:
    first_token: RootToken
    last_token: RootToken
    cluster_epoch: int
    duplicate: bool = False  # every event was already applied under the same request id


@wire_type(202)
@dataclass(slots=True, frozen=True)
class SnapshotRequest:
    pass


@wire_type(203)
@dataclass(slots=True, frozen=True)
class SnapshotReply:
    token: RootToken
    checkpoint: object  # nokvpy.protocol.grants.RootCheckpoint


@wire_type(204)
@dataclass(slots=True, frozen=True)
class WatchRequest:
    """Stream deltas after `after`. An idle stream sends a keepalive every `keepalive_ms`."""

    after: RootToken
    keepalive_ms: int = 500


@wire_type(205)
@dataclass(slots=True, frozen=True)
class WatchItem:
    """One delta (or keepalive when `events` is empty) and the current committed token.

    `bootstrap_required`: `after` is older than the retained tail; `checkpoint` and
    `checkpoint_token` hold the state to install before later deltas apply.
    `from_leader`: the sending peer was the metaroot leader, its quorum lease valid and its
    state applied up to its commit index, when it sent the item; only such an item confirms
    root's truth to a subscriber (a follower's item is heard, never confirming). Trailing and
    defaulted: an older peer omits it and is treated as a follower."""

    current_token: RootToken
    events: list[CommittedEvent]
    bootstrap_required: bool = False
    checkpoint: object | None = None
    checkpoint_token: RootToken | None = None
    retained_from: int = 0
    from_leader: bool = False


@wire_type(206)
@dataclass(slots=True, frozen=True)
class ConfirmTokenRequest:
    pass


@wire_type(207)
@dataclass(slots=True, frozen=True)
class ConfirmTokenReply:
    """The current committed token, confirmed by a ReadIndex round on the metaroot group.

    `peers` / `conf_index`: the metaroot membership (id -> address) as of the raft index of
    its last applied conf change, so a client follows membership changes (trailing and
    defaulted: an older peer omits them)."""

    token: RootToken
    peers: dict[int, str] | None = None
    conf_index: int = 0


@wire_type(208)
@dataclass(slots=True, frozen=True)
class FenceAllocatorRequest:
    kind: AllocatorKind
    minimum: int
    grant_era: int | None = None


@wire_type(209)
@dataclass(slots=True, frozen=True)
class FenceAllocatorReply:
    kind: AllocatorKind
    fence: int
    token: RootToken


@wire_type(210)
@dataclass(slots=True, frozen=True)
class GrantRequest:
    command: object  # nokvpy.protocol.grants.GrantCommand


@wire_type(211)
@dataclass(slots=True, frozen=True)
class GrantReply:
    result: object  # nokvpy.protocol.grants.GrantCommandResult
    token: RootToken
    signature: bytes = b""  # metaroot's signature over result.grant (nokvpy.grantsig)


@wire_type(212)
@dataclass(slots=True, frozen=True)
class MetarootStatusRequest:
    pass


@wire_type(213)
@dataclass(slots=True, frozen=True)
class MetarootStatus:
    cluster_id: str
    node_id: int
    is_leader: bool
    leader_id: int
    leader_addr: str
    term: int
    committed_token: RootToken
    applied_token: RootToken
    cluster_epoch: int
    retained_from: int
    checkpoint_token: RootToken
    peers: dict[int, str]
    id_fence: int = 0
    tso_fence: int = 0
    # membership (trailing and defaulted: an older peer omits them). `peers` holds the
    # address of every voter and learner; `conf_index` is the raft index of the last conf
    # change this peer applied (a higher one is a newer membership); `removed_ids` are the
    # ids removed from the group (never reused); `removed`: this very peer was removed and
    # serves nothing. `raft_applied` / `raft_commit`: this peer's raft indexes; `match`: on
    # the leader, the raft index each member is known to hold.
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    removed_ids: tuple[int, ...] = ()
    conf_index: int = 0
    removed: bool = False
    raft_applied: int = 0
    raft_commit: int = 0
    match: dict[int, int] | None = None


CONF_CHANGE_KINDS = ("add_learner", "promote", "remove")


@wire_type(214)
@dataclass(slots=True, frozen=True)
class MetarootConfChangeRequest:
    """Change the metaroot group's membership by one step, on the leader (admin only).

    `kind`: `add_learner` (a new, empty peer at `address` that receives the log but does
    not vote), `promote` (that learner becomes a voter once it caught up) or `remove` (a
    voter or learner leaves; its id is never used again). Refused while another change is
    pending (a learner not yet promoted counts as one), for the last voter, for an unknown
    or reused id."""

    kind: str
    node_id: int
    address: str = ""


@wire_type(215)
@dataclass(slots=True, frozen=True)
class MetarootConfChangeReply:
    """The membership after the change applied on the leader (at raft `conf_index`)."""

    conf_index: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    peers: dict[int, str]
    removed_ids: tuple[int, ...] = ()


@wire_type(216)
@dataclass(slots=True, frozen=True)
class MetarootSnapshotData:
    """What a metaroot raft snapshot carries: the rooted checkpoint and the membership
    record (`metaroot.members`, JSON), so a peer restored from it knows every member's
    address. (An older snapshot's data is the bare checkpoint.)"""

    checkpoint: object  # nokvpy.protocol.grants.RootCheckpoint
    members: str = ""
