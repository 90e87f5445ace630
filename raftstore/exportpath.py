"""The export path of a store: `RegionExportRequest`, a region's data at one applied index,
for backups.

Owns: admission of an export (a READ of the region's leader), the linearizable read barrier
before the image is built (so the image holds every write acknowledged before the request:
it is built at an applied index at or after the barrier's read index), building the image in a
worker thread from ONE read transaction (descriptor, replay pointer and the range's pairs
together, the values without their stored header), and handing it out in chunks from a small
cache (a client fetches the rest by export id from this store). Never writes.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import TYPE_CHECKING, Any

import trio

from nokvpy.protocol import AdmissionClass, AdmissionReason
from nokvpy.protocol.backup import (
    EXPORT_CHUNK,
    BackupRegion,
    RegionExportReply,
    RegionExportRequest,
)
from nokvpy.protocol.store_rpc import ReadMode
from nokvpy.wire import encode
from raftstore.admission import rejection
from raftstore.apply import decode_descriptor
from raftstore.kvformat import unpack_stored
from raftstore.reads import ReadRefusedError, read_barrier

if TYPE_CHECKING:
    from raftstore.store import Store

R = AdmissionReason
CACHE_TTL = 120.0  # seconds an image stays fetchable
CACHE_IMAGES = 4  # images kept at most (the oldest goes first)


class ExportPath:
    """The export handler of one store."""

    def __init__(self, store: Store):
        self.store = store
        self._ids = itertools.count(1)
        # export id -> (image, sha256, built at)
        self._images: dict[int, tuple[bytes, bytes, int, float]] = {}

    async def on_export(self, req: RegionExportRequest, ctx: Any) -> RegionExportReply:
        store = self.store
        if not isinstance(req.export_id, int) or not isinstance(req.offset, int) or \
                req.export_id < 0 or req.offset < 0 or not isinstance(req.start_key, bytes):
            raise store.refuse(AdmissionClass.READ, R.INVALID, "bad export request")
        if req.export_id:
            return self._chunk(req.export_id, req.offset)
        deadline = getattr(ctx, "deadline", None)
        deadline = float("inf") if deadline is None else deadline
        adm = store.admit(AdmissionClass.READ, req.ctx, deadline, scan_start=req.start_key)
        if not adm.accepted:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(adm)
        rid = req.ctx.region_id
        peer = store.peers[rid]
        try:
            await read_barrier(store.driver, peer, ReadMode.LINEARIZABLE, deadline)
        except ReadRefusedError as exc:
            raise store.refuse(AdmissionClass.READ, exc.reason, exc.detail, peer) from None
        image = await trio.to_thread.run_sync(self._build, rid)
        if image is None:
            raise store.refuse(AdmissionClass.READ, R.NOT_HOSTED,
                               f"region {rid} left this store during the export")
        export_id = next(self._ids)
        self._images[export_id] = (image, hashlib.sha256(image).digest(), rid,
                                   trio.current_time())
        self._expire()
        store.counters["regions_exported"] += 1
        return self._chunk(export_id, 0)

    def _build(self, rid: int) -> bytes | None:
        """The region's image from one read transaction (in a worker thread)."""
        store = self.store
        meta, kv = store.meta, store.kv

        def read(txn: Any) -> tuple[Any, Any, list[tuple[bytes, bytes]]] | None:
            raw = meta.region(rid, txn=txn)
            ptr = meta.replay_pointer(rid, txn=txn)
            if raw is None or ptr is None:
                return None
            desc = decode_descriptor(raw)
            pairs = kv.export_range(desc.start_key, desc.end_key or None, txn=txn)
            return desc, ptr, pairs

        got = store.env.read(read)
        if got is None:
            return None
        desc, ptr, pairs = got
        return encode(BackupRegion(rid, desc.start_key, desc.end_key, desc.epoch.version,
                                   ptr.applied_index,
                                   [(k, unpack_stored(v)[0]) for k, v in pairs]))

    def _chunk(self, export_id: int, offset: int) -> RegionExportReply:
        store = self.store
        got = self._images.get(export_id)
        if got is None:
            raise store.refuse(AdmissionClass.READ, R.INVALID,
                               f"export {export_id} is unknown here or expired (start again)")
        image, sha, rid, _ = got
        if offset > len(image):
            raise store.refuse(AdmissionClass.READ, R.INVALID,
                               f"offset {offset} is past the image's {len(image)} bytes")
        chunk = image[offset:offset + EXPORT_CHUNK]
        if offset + len(chunk) >= len(image):
            self._images.pop(export_id, None)  # fetched whole
        return RegionExportReply(export_id, store.store_id, rid, len(image), offset, chunk, sha)

    def _expire(self) -> None:
        now = trio.current_time()
        for eid, (_, _, _, built) in list(self._images.items()):
            if now - built > CACHE_TTL:
                del self._images[eid]
        while len(self._images) > CACHE_IMAGES:
            del self._images[min(self._images)]
