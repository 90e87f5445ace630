"""Pure Raft consensus core (modelled on etcd raft): no I/O, no clocks, no global randomness.

Drive a `RawNode` with `tick()`, `step(msg)` and `propose(data)`; take a `Ready`, persist it,
send its messages, apply its committed entries, then `advance()` (see rawnode.py).
"""

from .config import Config
from .core import Raft
from .progress import ProgressState
from .rawnode import ProgressStatus, RawNode, Ready, Status
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
]
