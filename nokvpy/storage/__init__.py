"""nokvpy.storage: the only importer of lmdb.

Owns: LMDB environments (`Env`, `WriteBatch`, group commit), raft log storage for many groups
(`RaftLogStore`, `GroupStorage`), the shared KV table (`KV`) and the localmeta tables
(`LocalMeta`). Never imports msgpack (values are opaque bytes or encoded here with `struct`)
and never holds a read transaction across an `await`.
"""

from nokvpy.storage.changes import ChangeTable
from nokvpy.storage.env import Env, EnvStats, WriteBatch
from nokvpy.storage.errors import (
    CorruptLogError,
    CorruptMetadataError,
    EnvClosedError,
    IdentityMismatchError,
    InvalidKeyError,
    SnapshotOutOfDateError,
    StorageError,
    StorageFailedError,
    StorageFullError,
    UnknownDatabaseError,
)
from nokvpy.storage.groupstorage import GroupStorage
from nokvpy.storage.kv import KV
from nokvpy.storage.leaseindex import LeaseIndex
from nokvpy.storage.localmeta import BlockedEvent, LocalMeta, ReplayPointer, StoreIdentity
from nokvpy.storage.raftlog import RaftLogStore
from nokvpy.storage.schema import ALL_DBS, MAX_KEY_SIZE

__all__ = [
    "ALL_DBS",
    "KV",
    "LeaseIndex",
    "MAX_KEY_SIZE",
    "BlockedEvent",
    "ChangeTable",
    "CorruptLogError",
    "CorruptMetadataError",
    "Env",
    "EnvClosedError",
    "EnvStats",
    "GroupStorage",
    "IdentityMismatchError",
    "InvalidKeyError",
    "LocalMeta",
    "RaftLogStore",
    "ReplayPointer",
    "SnapshotOutOfDateError",
    "StorageError",
    "StorageFailedError",
    "StorageFullError",
    "StoreIdentity",
    "UnknownDatabaseError",
    "WriteBatch",
]
