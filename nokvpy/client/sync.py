"""A blocking client for scripts, notebooks and asyncio programs.

Owns: one background thread running a trio loop with one async `Client` in it, and the calls
into that loop (`trio.from_thread.run`). Never changes the client's semantics: every method
is the async one, awaited on that loop, with the same deadlines, retries and typed errors.
Calls may come from several threads at once; each blocks only its caller.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio

from nokvpy.client.backup import BackupSummary, backup, restore
from nokvpy.client.kv import Client, DeleteRangeResult, ScanResult, TxnResponse
from nokvpy.client.settings import cluster_dir_settings, target_settings
from nokvpy.client.watch import WAIT_MS, Watch, WatchEvent, WatchSegment
from nokvpy.protocol import Freshness, RootToken
from nokvpy.protocol.coordinator_rpc import RouteReply, ScanRegionsReply
from nokvpy.protocol.store_rpc import ReadMode, TxnCompare, TxnOp

T = TypeVar("T")


class SyncClient:
    """Blocking counterpart of `Client`: the same arguments, methods and errors.

    `with SyncClient.from_cluster_dir("./c") as c: c.put(b"k", b"v")`. `close()` (or the
    `with` block) stops the background thread; a closed client raises RuntimeError."""

    def __init__(self, coordinators: list[str], **kwargs: Any):
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._client: Client | None = None
        self._nursery: trio.Nursery | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(coordinators, kwargs),
                                        name="nokv-sync-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:  # Client(...) refused its arguments
            self._thread.join()
            self._closed = True
            raise self._error

    @classmethod
    def from_cluster_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> SyncClient:
        """A client of the local cluster in `path` (`nokv cluster up --dir path`): its
        coordinators, cluster id and secret come from path/cluster.json."""
        return cls(**(cluster_dir_settings(path) | kwargs))

    def _run(self, coordinators: list[str], kwargs: dict[str, Any]) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._client = Client(coordinators, **kwargs)
            try:
                async with trio.open_nursery() as nursery:  # open watches run here
                    self._nursery = nursery
                    self._ready.set()
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._client.aclose()

        try:
            trio.run(main)
        except BaseException as exc:
            if not self._ready.is_set():  # Client(...) refused its arguments
                self._error = exc
            else:
                raise
        finally:
            self._ready.set()

    # ---- calls into the loop -----------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(client, *args)` on the client's loop, where `client` is the async
        `Client`: for anything this class does not wrap. Blocks until it returns."""
        if self._closed:
            raise RuntimeError("this SyncClient is closed")
        if trio.lowlevel.in_trio_task():
            raise RuntimeError("SyncClient blocks its caller and cannot be used from a trio "
                               "task: under trio use nokvpy.Client, the async client "
                               "(or call SyncClient through trio.to_thread.run_sync)")
        try:
            return trio.from_thread.run(fn, self._client, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise RuntimeError("this SyncClient is closed") from None

    def get(self, key: bytes, read_mode: ReadMode = ReadMode.LINEARIZABLE,
            timeout: float | None = None) -> bytes | None:
        """The value of `key`, None when absent (linearizable unless `read_mode` says)."""
        return self.call(Client.get, key, read_mode, timeout)

    def batch_get(self, keys: list[bytes], timeout: float | None = None) -> dict[bytes, bytes | None]:
        return self.call(Client.batch_get, keys, timeout)

    def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 100,
             timeout: float | None = None) -> ScanResult:
        """Keys in [start, end) in order, across regions, at most `limit` (b"": unbounded):
        a list of (key, value) with `more` (the limit cut it) and `next_key`."""
        return self.call(Client.scan, start, end, limit, timeout)

    def put(self, key: bytes, value: bytes, timeout: float | None = None, *,
            lease: int = 0) -> int:
        """Write `key`; returns the raft index it applied at. With `lease` (from `grant`)
        the key lives only while the lease does."""
        async def put(client: Client) -> int:
            return await client.put(key, value, timeout, lease=lease)

        return self.call(put)

    def backup(self, path: str | os.PathLike[str]) -> BackupSummary:
        """Write every key of the cluster to `path` (nokvpy.client.backup.backup)."""
        async def run(client: Client) -> BackupSummary:
            return await backup(client, path)

        return self.call(run)

    def restore(self, path: str | os.PathLike[str]) -> BackupSummary:
        """Write the backup at `path` into this (empty) cluster, one region's keys per
        transaction (nokvpy.client.backup.restore; `nokv restore` also splits first)."""
        async def run(client: Client) -> BackupSummary:
            return await restore(client, path)

        return self.call(run)

    def grant(self, ttl: float, timeout: float | None = None) -> int:
        """A new lease of `ttl` seconds; returns its id (see `Client.grant`)."""
        return self.call(Client.grant, ttl, timeout)

    def keep_alive(self, lease_id: int, timeout: float | None = None) -> float:
        """Extend the lease by its TTL; returns the TTL (LeaseNotFoundError: it is gone)."""
        return self.call(Client.keep_alive, lease_id, timeout)

    def revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """End the lease now: its keys are deleted."""
        return self.call(Client.revoke, lease_id, timeout)

    def leases(self, timeout: float | None = None) -> dict[int, float]:
        """Every lease alive now: id -> TTL in seconds."""
        return self.call(Client.leases, timeout)

    def delete(self, key: bytes, timeout: float | None = None) -> int:
        return self.call(Client.delete, key, timeout)

    def compare_and_swap(self, key: bytes, expected: bytes | None, new: bytes | None,
                         timeout: float | None = None) -> tuple[bool, bytes | None]:
        """Set `key` to `new` (None deletes) iff its value is `expected` (None: absent).
        Returns (succeeded, the value seen when it failed)."""
        return self.call(Client.compare_and_swap, key, expected, new, timeout)

    def txn(self, compare: Iterable[TxnCompare] = (), success: Iterable[TxnOp] = (),
            failure: Iterable[TxnOp] = (), timeout: float | None = None) -> TxnResponse:
        """If every compare holds run `success`, else `failure`, atomically in the one region
        holding every key (see `Client.txn`; `Compare` and `Op` build the parts)."""
        return self.call(Client.txn, list(compare), list(success), list(failure), timeout)

    def delete_range(self, start: bytes, end: bytes, limit: int | None = None,
                     timeout: float | None = None) -> DeleteRangeResult:
        """Delete the keys of [start, end), region by region, at most `limit` (see
        `Client.delete_range`): how many, per region, and whether the limit cut it."""
        return self.call(Client.delete_range, start, end, limit, timeout)

    def route(self, key: bytes, freshness: Freshness = Freshness.BOUNDED,
              max_root_lag: int | None = None,
              required_root_token: RootToken | int | None = None) -> RouteReply:
        """The region holding `key` with the coordinator's freshness witness."""
        return self.call(Client.route, key, freshness, max_root_lag, required_root_token)

    def scan_regions(self, start: bytes = b"", end: bytes = b"", limit: int = 1000,
                     freshness: Freshness = Freshness.BEST_EFFORT) -> ScanRegionsReply:
        return self.call(Client.scan_regions, start, end, limit, freshness)

    def watch(self, start: bytes, end: bytes = b"", *, prefix: bool = False,
              since: tuple[int, int] | None = None, resume: list[WatchSegment] | None = None,
              wait_ms: int = WAIT_MS) -> SyncWatch:
        """Watch a range (see `Client.watch`): `with c.watch(b"app/", prefix=True) as w:
        for ev in w: ...`; `w.next(timeout)` returns None when nothing came in time. The
        watch runs on the client's loop until closed."""
        assert self._client is not None
        w = self._client.watch(start, end, prefix=prefix, since=since, resume=resume,
                               wait_ms=wait_ms)
        return SyncWatch(self, w)

    # ---- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and stop the background thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            try:  # (run_sync_soon, not from_thread: close() may be called from a trio task)
                self._token.run_sync_soon(self._stop.set)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(target: str | os.PathLike[str] | list[str], **kwargs: Any) -> SyncClient:
    """A blocking client of a cluster.

    `target` is a cluster directory (`nokv cluster up --dir`, or its cluster.json), or
    coordinator addresses, `"host:port,host:port"` or a list; with addresses, `cluster_id`
    and `secret` default to NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET. Other keyword arguments
    are `Client`'s (`timeout`, `attempt_timeout`, ...)."""
    return SyncClient(**target_settings(target, **kwargs))


class SyncWatch:
    """A watch opened by `SyncClient.watch`: iterate it for `WatchEvent`s (blocking)."""

    def __init__(self, sync: SyncClient, watch: Watch):
        self._sync = sync
        self._watch = watch
        self._done: trio.Event | None = None
        self._closed = False

        async def open_it(_client: Client) -> None:
            assert sync._nursery is not None
            await sync._nursery.start(self._hold)

        sync.call(open_it)

    async def _hold(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._done = trio.Event()
        async with self._watch:
            task_status.started()
            await self._done.wait()

    def next(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event; with `timeout`, None when none came within it."""
        w = self._watch

        async def one(_client: Client) -> WatchEvent | None:
            if timeout is None:
                return await w.__anext__()
            return await w.next(timeout)

        return self._sync.call(one)

    def segments(self) -> list[WatchSegment]:
        """The resume token (see `Watch.segments`)."""
        return self._watch.segments()

    def __iter__(self) -> SyncWatch:
        return self

    def __next__(self) -> WatchEvent:
        ev = self.next()
        assert ev is not None
        return ev

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        done = self._done

        async def stop(_client: Client) -> None:
            if done is not None:
                done.set()

        try:
            self._sync.call(stop)
        except RuntimeError:
            pass  # the client is closed: its loop stopped every watch

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
