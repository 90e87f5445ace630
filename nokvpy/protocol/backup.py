"""Backup: a region's data exported at one applied index, and the backup file's records.

Owns: the export request and reply between a client and the store leading a region (the
region's image is built once, at one applied index, and fetched in chunks), and the records a
backup file holds (`BackupHeader`, one `BackupRegion` per region). Never decides how a file
is laid out (nokvpy.client.backup) nor how an image is built (raftstore.exportpath).
"""

from __future__ import annotations

from dataclasses import dataclass

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.store_rpc import KvContext

EXPORT_CHUNK = 1 << 20  # bytes of an image one reply carries


@wire_type(432)
@dataclass(slots=True, frozen=True)
class RegionExportRequest:
    """Export the region holding `start_key` (`export_id` 0: build its image now, after a
    linearizable read barrier, so it holds every write acknowledged before the request), or
    go on fetching image `export_id` from `offset`."""

    ctx: KvContext
    start_key: bytes
    export_id: int = 0
    offset: int = 0


@wire_type(433)
@dataclass(slots=True, frozen=True)
class RegionExportReply:
    """A chunk of an image (an encoded `BackupRegion`) of `total` bytes at `offset`, and the
    SHA-256 of the whole image; `store_id` holds it (fetch the rest there, by `export_id`)."""

    export_id: int
    store_id: int
    region_id: int
    total: int
    offset: int
    chunk: bytes
    sha256: bytes


@wire_type(434)
@dataclass(slots=True, frozen=True)
class BackupRegion:
    """Every key of [start_key, end_key) (end b"": unbounded) with its value, as the region
    held them at `applied_index` (epoch version `version`), in key order."""

    region_id: int
    start_key: bytes
    end_key: bytes
    version: int
    applied_index: int
    pairs: list[tuple[bytes, bytes]]


@wire_type(435)
@dataclass(slots=True, frozen=True)
class BackupHeader:
    """The first record of a backup file: its format, the cluster it came from, when it was
    taken (wall-clock seconds), how many regions follow, and the root index the region list
    was read at."""

    format: int
    cluster_id: str
    created: float
    regions: int
    root_index: int
