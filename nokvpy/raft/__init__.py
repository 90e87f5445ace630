"""Pure Raft consensus core (modelled on etcd raft): no I/O, no clocks, no global randomness.

Drive a `RawNode` with `tick()`, `step(msg)` and `propose(data)`; take a `Ready`, send its
early messages, persist it, send its messages, apply its committed entries, then `advance()`
(the contract is in rawnode.py). Callers outside this package use `RawNode` (and its
`status()` / `basic_status()`), never the `Raft` behind it.
"""

from .confchange import conf_state_after, next_conf_state
from .config import Config
from .core import Raft
from .progress import ProgressState
from .rawnode import BasicStatus, ProgressStatus, RawNode, Ready, Status
from .read_only import ReadOnlyOption
from .storage import MemoryStorage
from .types import (
    LOCAL_MESSAGE_TYPES,
    NONE,
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotAppendedError,
    NotLeaderError,
    ProposalDroppedError,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    SoftState,
    StateType,
    Storage,
    UnavailableError,
)

__all__ = [
    "LOCAL_MESSAGE_TYPES",
    "NONE",
    "BasicStatus",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotAppendedError",
    "NotLeaderError",
    "ProgressState",
    "ProgressStatus",
    "ProposalDroppedError",
    "Raft",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateType",
    "Status",
    "Storage",
    "UnavailableError",
    "conf_state_after",
    "next_conf_state",
]
