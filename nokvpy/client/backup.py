"""Backup and restore: every key of a cluster to one checksummed file, and back.

Owns: `backup(client, path)` (each region exported by its leader at one applied index, after a
linearizable barrier, region by region in key order until the keyspace is covered, whatever
splits or merges happen meanwhile), the file layout, its verification (`read_backup`), and
`restore(client, path)` into an empty cluster (split at the backup's region boundaries, then
every pair written back in transactions of one region each).

File layout: the magic line `NOKVBAK1\\n`, then records each framed as a u64 big-endian length
and an encoded record (nokvpy.wire): one `BackupHeader`, then one `BackupRegion` per region in
key order; then the SHA-256 of everything before it. A file that fails any check is refused
whole, before anything is written.

What a backup promises: every write acknowledged before `backup` started is in it; each
region's part is exactly its state at the recorded applied index (one read transaction on
the leader). Regions are exported one after another, so a write acknowledged during the
backup may be in it for one region and not for another: stop writers first for a
cluster-wide point. Modification indexes start afresh in the restored cluster.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from nokvpy.client.errors import InvalidRequestError, NokvError
from nokvpy.protocol import Freshness
from nokvpy.protocol.backup import (
    BackupHeader,
    BackupRegion,
    RegionExportReply,
    RegionExportRequest,
)
from nokvpy.protocol.store_rpc import KvContext, TxnOp, TxnOpKind
from nokvpy.wire import DecodeError, decode, encode

MAGIC = b"NOKVBAK1\n"
FORMAT = 1
_LEN = struct.Struct(">Q")
TXN_OPS = 128  # puts per restore transaction (the store's limit)
EXPORT_TIMEOUT = 60.0  # seconds one region's export may take (its image built in one go)
TXN_BYTES = 2 << 20  # keys and values per restore transaction (half the store's limit)


class BackupFormatError(NokvError):
    """The file is not a whole nokvpy backup (bad magic, truncated, checksum mismatch)."""

    reason = "bad_backup"


@dataclass(slots=True, frozen=True)
class BackupSummary:
    """What a backup or restore covered: regions, keys and bytes of keys and values."""

    path: str
    regions: int
    keys: int
    bytes: int
    cluster_id: str
    root_index: int


async def backup(client: Any, path: str | Path,
                 progress: Callable[[str], None] | None = None) -> BackupSummary:
    """Write every key of the cluster to `path` (written to `path.partial`, renamed when
    whole)."""
    path = Path(path)
    regions: list[bytes] = []
    keys = size = 0
    scan = await client.scan_regions(freshness=Freshness.STRONG)
    root_index = scan.witness.served_root_token.index
    cursor = b""
    while True:
        image = await _export(client, cursor)
        region: BackupRegion = decode(image)
        # the region may have split or merged since the list was read: keep what lies from
        # the cursor on (a merged region also holds keys already written from its source)
        pairs = [(k, v) for k, v in region.pairs if k >= cursor]
        region = BackupRegion(region.region_id, cursor, region.end_key, region.version,
                              region.applied_index, pairs)
        regions.append(encode(region))
        keys += len(pairs)
        size += sum(len(k) + len(v) for k, v in pairs)
        if progress is not None:
            progress(f"region {region.region_id} [{_show(cursor)}, {_show(region.end_key)}): "
                     f"{len(pairs)} keys at index {region.applied_index}")
        if not region.end_key:
            break
        cursor = region.end_key
    header = BackupHeader(FORMAT, str(client.cluster_id), time.time(), len(regions), root_index)
    body = bytearray(MAGIC)
    for record in (encode(header), *regions):
        body += _LEN.pack(len(record)) + record
    body += hashlib.sha256(body).digest()
    partial = path.with_name(path.name + ".partial")
    await trio.to_thread.run_sync(_write, partial, bytes(body))
    partial.replace(path)
    return BackupSummary(str(path), len(regions), keys, size, header.cluster_id, root_index)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def _export(client: Any, key: bytes) -> bytes:
    """The image of the region holding `key`, fetched whole and checked."""
    used: list[Any] = []
    first: RegionExportReply = await client._execute(  # building the image takes a while
        key, lambda ctx: RegionExportRequest(ctx, key), write=False, seen=used.append,
        timeout=max(client.timeout, EXPORT_TIMEOUT), attempt=EXPORT_TIMEOUT)
    chunks = [first.chunk]
    got = len(first.chunk)
    addr = await client._store_addr(first.store_id)
    d = used[-1]
    ctx = KvContext(d.region_id, d.epoch, first.store_id)
    while got < first.total:
        more: RegionExportReply = await client.rpc.call(
            addr, RegionExportRequest(ctx, key, first.export_id, got), timeout=client.timeout)
        if not more.chunk:
            raise NokvError(f"export of region {first.region_id} stopped at {got} of "
                            f"{first.total} bytes", "export_incomplete")
        chunks.append(more.chunk)
        got += len(more.chunk)
    image = b"".join(chunks)
    if hashlib.sha256(image).digest() != first.sha256:
        raise NokvError(f"export of region {first.region_id} arrived damaged (checksum)",
                        "export_damaged")
    return image


def read_backup(path: str | Path) -> tuple[BackupHeader, list[BackupRegion]]:
    """The header and regions of a backup file; BackupFormatError unless it is whole."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise BackupFormatError(f"{path}: not a nokvpy backup (no {MAGIC!r} at the start)")
    if len(data) < len(MAGIC) + 32 or hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise BackupFormatError(f"{path}: checksum mismatch (truncated or damaged)")
    records: list[Any] = []
    pos, end = len(MAGIC), len(data) - 32
    try:
        while pos < end:
            (n,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if pos + n > end:
                raise BackupFormatError(f"{path}: a record runs past the end")
            records.append(decode(data[pos:pos + n]))
            pos += n
    except (DecodeError, struct.error) as exc:
        raise BackupFormatError(f"{path}: undecodable record: {exc}") from None
    if not records or not isinstance(records[0], BackupHeader):
        raise BackupFormatError(f"{path}: no header record")
    header, regions = records[0], records[1:]
    if header.format != FORMAT:
        raise BackupFormatError(f"{path}: format {header.format}, this build reads {FORMAT}")
    if len(regions) != header.regions or not all(isinstance(r, BackupRegion) for r in regions):
        raise BackupFormatError(f"{path}: {header.regions} regions announced, "
                                f"{len(regions)} found")
    cursor = b""
    for r in regions:  # they tile the keyspace, in order
        if r.start_key != cursor:
            raise BackupFormatError(f"{path}: region {r.region_id} starts at "
                                    f"{_show(r.start_key)}, expected {_show(cursor)}")
        cursor = r.end_key
    if cursor:
        raise BackupFormatError(f"{path}: the regions end at {_show(cursor)}, not at the end")
    return header, regions


async def restore(client: Any, path: str | Path, split: Callable[[bytes], Any] | None = None,
                  progress: Callable[[str], None] | None = None,
                  workers: int = 16) -> BackupSummary:
    """Write the backup at `path` into the (empty) cluster of `client`: `await split(key)` at
    every region boundary first (when given), then every pair, one region's keys per
    transaction. Refused, with nothing written, when the file is not whole or the cluster
    holds a key."""
    header, regions = await trio.to_thread.run_sync(read_backup, path)
    if await client.scan(b"", b"", limit=1):
        raise InvalidRequestError("restore needs an empty cluster: this one holds keys")
    if split is not None:
        for r in regions[1:]:
            await split(r.start_key)
    batches: list[list[tuple[bytes, bytes]]] = []
    for r in regions:
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for k, v in r.pairs:
            if batch and (len(batch) >= TXN_OPS or size + len(k) + len(v) > TXN_BYTES):
                batches.append(batch)
                batch, size = [], 0
            batch.append((k, v))
            size += len(k) + len(v)
        if batch:
            batches.append(batch)
    keys = sum(len(r.pairs) for r in regions)
    done = [0]
    send, recv = trio.open_memory_channel(len(batches))
    for b in batches:
        send.send_nowait(b)
    send.close()

    async def worker() -> None:
        async for b in recv:
            await _write_batch(client, b)
            done[0] += len(b)
            if progress is not None:
                progress(f"{done[0]}/{keys} keys written")

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, workers)):
            nursery.start_soon(worker)
    size = sum(len(k) + len(v) for r in regions for k, v in r.pairs)
    return BackupSummary(str(path), len(regions), keys, size, header.cluster_id,
                         header.root_index)


async def _write_batch(client: Any, pairs: list[tuple[bytes, bytes]]) -> None:
    """One transaction of puts; a batch that turns out to span regions is written in halves
    (the restored cluster's regions need not match the backup's)."""
    try:
        await client.txn([], [TxnOp(TxnOpKind.PUT, k, v) for k, v in pairs], [])
    except NokvError as exc:
        if "cross_region" not in str(exc) or len(pairs) == 1:
            raise
        half = len(pairs) // 2
        await _write_batch(client, pairs[:half])
        await _write_batch(client, pairs[half:])


def _show(key: bytes) -> str:
    """A key for a message (b"": the keyspace's edge)."""
    return repr(key[:48]) if key else "(edge)"
