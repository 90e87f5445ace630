"""Errors raised by nokvpy.storage, split by blame.

Owns: the storage error hierarchy. Never catches anything itself. The raft `Storage` protocol
errors (CompactedError, UnavailableError, SnapshotTemporarilyUnavailableError) live in
`nokvpy.raft.types` and are raised unchanged by `GroupStorage`.
"""

from __future__ import annotations

from nokvpy.raft.types import SnapshotOutOfDateError as _RaftSnapshotOutOfDateError


class StorageError(Exception):
    """Base of every storage error."""


class EnvClosedError(StorageError):
    """The environment was closed (or never opened)."""


class UnknownDatabaseError(StorageError, KeyError):
    """A named database was not declared when the environment was opened."""

    def __init__(self, name: str, declared: tuple[str, ...]):
        super().__init__(f"database {name!r} not declared at Env.open (declared: {declared})")
        self.name = name
        self.declared = declared


class StorageFullError(StorageError):
    """The LMDB map cannot grow past `max_map_size` (or the disk is full)."""


class StorageFailedError(StorageError):
    """A commit failed at or after the fsync: the environment refuses further writes.

    A failed fsync is never retried (the page cache may already have dropped the dirty pages);
    the process must stop writing and restart to recover only what is durable.
    """


class InvalidKeyError(StorageError, ValueError):
    """A key is empty or longer than LMDB's 511-byte limit."""


class CorruptLogError(StorageError):
    """A raft group's persisted log is inconsistent (gap, bad record, bad boundary)."""


class CorruptMetadataError(StorageError):
    """A localmeta record fails its checksum or cannot be decoded."""


class IdentityMismatchError(StorageError):
    """The store identity on disk differs from the one the caller tried to stamp."""

    def __init__(self, on_disk: object, requested: object):
        super().__init__(f"store identity on disk is {on_disk}, refusing to stamp {requested}")
        self.on_disk = on_disk
        self.requested = requested


class SnapshotOutOfDateError(StorageError, _RaftSnapshotOutOfDateError):
    """A snapshot older than (or equal to) the group's current snapshot was applied (also the
    raft core's SnapshotOutOfDateError, so the core's handlers catch it)."""
