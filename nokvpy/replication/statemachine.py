"""What a raft group's owner supplies to the driver: the `StateMachine` protocol.

Owns: the contract between the ready loop and a group's state machine (stage the writes of
committed entries into the turn's batch, finish them once the batch is durable, snapshot and
restore, hear of membership changes), and the optional hooks with the defaults the driver
assumes when a state machine leaves them out (`apply_deferrable`, `stages_ahead`,
`replay_floor`). Never interprets entry payloads itself and never does I/O.
"""

from __future__ import annotations

from typing import Any, Protocol

from nokvpy.raft.types import ConfChange, ConfState, Entry, Snapshot


class StateMachine(Protocol):
    """How committed entries change a group's durable state.

    The last three members are optional hooks: a state machine without them gets the
    defaults of the helpers below (never held, never stages ahead, no replay floor)."""

    def stage_apply(self, batch: Any, entries: list[Entry]) -> list[Any]:
        """Stage the writes of applying `entries` (normal and conf change, in order) into
        `batch`, including the new applied index. Returns one result per entry (delivered to
        the proposal's waiter after the batch commits)."""

    def after_commit(self, entries: list[Entry], results: list[Any]) -> None:
        """The batch that applied `entries` is durable: update in-memory views."""

    def applied_index(self) -> int:
        """The applied index persisted with the state (restart resumes after it)."""

    def snapshot(self) -> tuple[int, bytes]:
        """A consistent (applied_index, data) image of the state for a lagging follower."""

    def stage_restore(self, batch: Any, snapshot: Snapshot) -> None:
        """Stage replacing the state with `snapshot` (its applied index included)."""

    def on_conf_change(self, cc: ConfChange, conf_state: ConfState) -> None:
        """A membership change applied (after the batch that applied it committed)."""

    def apply_deferrable(self) -> bool:
        """Optional (default False): the entries just staged were plain writes, so their
        apply may be held back and committed with a later turn (see held.py)."""

    # Optional (default False): staging reads what held (not yet committed) applies of this
    # group wrote from memory, so a new apply may be staged on top of them.
    stages_ahead: bool

    # Optional (default 0): a log index below which this group's log is not replayed to a
    # replica starting from an empty log (its range changed there): it gets a snapshot.
    replay_floor: int


def apply_deferrable(sm: Any) -> bool:
    hook = getattr(sm, "apply_deferrable", None)
    return hook is not None and bool(hook())


def stages_ahead(sm: Any) -> bool:
    return getattr(sm, "stages_ahead", False)


def replay_floor(sm: Any) -> int:
    return getattr(sm, "replay_floor", 0)
