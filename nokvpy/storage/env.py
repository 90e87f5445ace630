"""One LMDB environment: named databases, short reads, and group-committed fsynced writes.

Owns: the `lmdb.Environment`, the single writer thread discipline, map-size growth, and the
`WriteBatch` / group-commit machinery. Never knows what the bytes mean (raftlog, kv and
localmeta encode their own records) and never holds a read transaction across an `await`.

Writes. Every write transaction of an environment runs inside one
`trio.to_thread.run_sync(..., limiter=CapacityLimiter(1))` call (plus a threading lock, so the
blocking `commit_sync` is safe too): a write transaction and its cursors belong to one thread.
`await env.commit(batch)` enqueues the batch; the first caller becomes the committer, yields
once so batches submitted in the same loop turn join it, then drains everything queued into
one transaction and one fsync (group commit). Batches that arrive while a transaction is in
flight form the next group; leadership passes to the first of them, so no caller waits for
more than the group after its own. `on_commit` callbacks run in the trio thread, in commit
order, after the fsync and before the committing callers wake.

Failure rules: if applying one batch's operations fails (bad key, a `write(fn)` raising), the
group is retried batch by batch so only the offending batch fails. If the commit itself fails
(the fsync), the environment is marked failed and every later write raises
`StorageFailedError`: a failed fsync is never retried. `lmdb.MapFullError` doubles the map
size (up to `max_map_size`) and retries the transaction, inside the writer thread, after
waiting out active readers (LMDB requires no live transaction during `set_mapsize`).

Failpoints: `storage.before_commit` (after the operations, before commit+fsync; `raise`
simulates a failed fsync) and `storage.after_commit` (durable but not yet acknowledged;
`exit` simulates a crash between fsync and ack).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb
import trio

from nokvpy import failpoints
from nokvpy.storage.diskfaults import raise_injected
from nokvpy.storage.errors import (
    EnvClosedError,
    InvalidKeyError,
    StorageFailedError,
    StorageFullError,
    UnknownDatabaseError,
)
from nokvpy.storage.schema import ALL_DBS, MAX_KEY_SIZE

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 1 << 40

# WriteBatch operation codes.
_PUT = 0
_PUT_MANY = 1
_DELETE = 2
_DELETE_RANGE = 3
_CALL = 4


class WriteBatch:
    """Operations to apply atomically in one write transaction, plus commit callbacks.

    Operations apply in the order they were added; `on_commit` callbacks run in the order they
    were added, only if the transaction committed. A batch is committed once.
    """

    __slots__ = ("ops", "callbacks", "aborts", "journal")

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.callbacks: list[Callable[[], object]] = []
        self.aborts: list[Callable[[], object]] = []
        # Raft log records bound for a write-ahead log (see `RaftLogStore.commit`); an
        # environment refuses a batch that still carries them.
        self.journal: Any = None

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.ops.append((_PUT, db, key, value))

    def put_many(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        """Put several (key, value) pairs (cheaper than many put() calls)."""
        if items:
            self.ops.append((_PUT_MANY, db, items, None))

    def delete(self, db: str, key: bytes) -> None:
        self.ops.append((_DELETE, db, key, None))

    def delete_range(self, db: str, lo: bytes, hi: bytes | None) -> None:
        """Delete every key k with lo <= k < hi (hi None or b"": to the end of the database)."""
        self.ops.append((_DELETE_RANGE, db, lo, hi or None))

    def call(self, fn: Callable[[Env, lmdb.Transaction], object]) -> None:
        """Run fn(env, txn) inside the transaction, in the writer thread. fn must only touch
        the transaction: it may run more than once (map growth, group retry)."""
        self.ops.append((_CALL, None, fn, None))

    def on_commit(self, callback: Callable[[], object]) -> None:
        self.callbacks.append(callback)

    def on_abort(self, callback: Callable[[], object]) -> None:
        """Run `callback` (in the trio thread) if this batch fails to commit."""
        self.aborts.append(callback)

    def extend(self, other: WriteBatch) -> None:
        """Append another batch's operations and callbacks to this one."""
        if other.journal is not None:
            raise ValueError("cannot merge a batch carrying WAL records")
        self.ops.extend(other.ops)
        self.callbacks.extend(other.callbacks)
        self.aborts.extend(other.aborts)

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops or self.callbacks or self.journal)


class _Pending:
    __slots__ = ("batch", "wake", "done", "error", "result")

    def __init__(self, batch: WriteBatch):
        self.batch = batch
        self.wake = trio.Event()
        self.done = False
        self.error: BaseException | None = None
        self.result: object = None


class _Depth(threading.local):
    depth = 0  # read transactions this thread has open (reads may nest)


class _ReadGuard:
    """Counts live read transactions so map growth can wait until there are none.

    Writer preference: while a resize waits, new outermost reads wait too (otherwise a busy
    reader thread starves the resize); nested reads proceed so they cannot deadlock.
    """

    __slots__ = ("cond", "readers", "resizing", "local")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.readers = 0
        self.resizing = False
        self.local = _Depth()


@dataclass(slots=True)
class EnvStats:
    transactions: int = 0  # committed write transactions (= fsyncs when sync=True)
    batches: int = 0  # committed WriteBatches
    failed_batches: int = 0
    map_resizes: int = 0
    txn_seconds: float = 0.0  # writer-thread time in write transactions (ops + commit)
    sync_seconds: float = 0.0  # of which in txn.commit() (the fsyncs)


class _CommitFailed(Exception):
    """Internal: the commit (fsync) of a write transaction failed."""


class Env:
    """An open LMDB environment with named databases and one writer thread at a time."""

    def __init__(
        self,
        env: lmdb.Environment,
        path: str,
        dbs: dict[str, Any],
        *,
        sync: bool,
        max_map_size: int,
    ):
        self._env = env
        self.path = path
        self.sync = sync
        self.max_map_size = max_map_size
        self._dbs = dbs
        self._names = tuple(dbs)
        self._guard = _ReadGuard()
        self._wlock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._queue: list[_Pending] = []
        self._committing = False  # Invariant: True while some task leads a group commit.
        self._failed: BaseException | None = None
        self._closed = False
        self.stats = EnvStats()
        # Called (synchronously) before any batch joins the queue: a caller holding staged
        # writes back (the raft driver's deferred apply) enqueues them first, so writes always
        # reach LMDB in the order they were staged.
        self.before_submit: Callable[[], None] | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        dbs: Iterable[str] = ALL_DBS,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        max_dbs: int | None = None,
        sync: bool = True,
        max_readers: int = 126,
    ) -> Env:
        """Open (creating if needed) the environment in directory `path` with databases `dbs`.

        sync=True fsyncs every commit (data and meta pages). The map grows by doubling when
        full, up to max_map_size; an existing environment keeps its larger stored size.
        """
        path = os.fspath(path)
        names = tuple(dict.fromkeys(dbs))
        os.makedirs(path, exist_ok=True)
        env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=max_dbs if max_dbs is not None else len(names) + 2,
            sync=sync,
            metasync=sync,
            readahead=False,
            max_readers=max_readers,
            subdir=True,
        )
        try:
            handles = {name: env.open_db(name.encode(), create=True) for name in names}
        except BaseException:
            env.close()
            raise
        return cls(env, path, handles, sync=sync, max_map_size=max(max_map_size, map_size))

    def close(self) -> None:
        """Close the environment. Call after every commit has returned."""
        if not self._closed:
            self._closed = True
            self._env.close()

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def db_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def map_size(self) -> int:
        return self._env.info()["map_size"]

    def db(self, name: str) -> Any:
        """The LMDB handle of a declared database (for use inside read()/call() functions)."""
        try:
            return self._dbs[name]
        except KeyError:
            raise UnknownDatabaseError(name, self._names) from None

    # ------------------------------------------------------------------ reads

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run fn(txn) in a short read transaction, synchronously, and return its result.

        Values are copied out (buffers=False). Never call from fn anything that awaits.
        """
        if self._closed:
            raise EnvClosedError(f"environment {self.path} is closed")
        guard = self._guard
        local = guard.local
        with guard.cond:
            while guard.resizing and not local.depth:
                guard.cond.wait()
            guard.readers += 1
        local.depth += 1
        try:
            with self._env.begin(buffers=False) as txn:
                return fn(txn)
        finally:
            local.depth -= 1
            with guard.cond:
                guard.readers -= 1
                if not guard.readers and guard.resizing:
                    guard.cond.notify_all()

    def get(self, db: str, key: bytes) -> bytes | None:
        handle = self.db(db)
        return self.read(lambda txn: txn.get(key, db=handle))

    # ------------------------------------------------------------------ writes

    async def commit(self, batch: WriteBatch) -> None:
        """Durably apply `batch` (one fsynced transaction, possibly shared with other batches).

        Not cancellable: once called it returns only when the batch is durable (and its
        on_commit callbacks have run) or has failed.
        """
        await self._submit(batch)

    async def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run fn(txn) in a write transaction in the writer thread; return its result.

        fn must only touch the transaction (it may be re-run after map growth or a failed
        group). The transaction is committed with fsync (group-committed with other batches).
        """
        batch = WriteBatch()
        batch.call(lambda env, txn: fn(txn))
        return await self._submit(batch)  # type: ignore[return-value]

    def commit_sync(self, batch: WriteBatch) -> None:
        """Blocking commit for code outside trio (tools, tests); runs callbacks inline."""
        p = _Pending.__new__(_Pending)
        p.batch, p.done, p.error, p.result = batch, False, None, None
        self._check_batch(batch)
        self._check_writable()
        self._write_group([p])
        self._finish([p])
        if p.error is not None:
            raise p.error

    def _check_batch(self, batch: WriteBatch) -> None:
        if batch.journal is not None:
            raise ValueError("batch carries WAL records: commit it with RaftLogStore.commit")

    def _check_writable(self) -> None:
        if self._closed:
            raise EnvClosedError(f"environment {self.path} is closed")
        if self._failed is not None:
            raise StorageFailedError(
                f"environment {self.path} refuses writes after a failed commit: {self._failed!r}"
            ) from self._failed

    def enqueue(self, batch: WriteBatch) -> _Pending:
        """Put `batch` in the commit queue now (its place in the commit order is fixed at
        this call) without waiting; `await wait_committed(handle)` makes sure it commits."""
        self._check_batch(batch)
        self._check_writable()
        p = _Pending(batch)
        self._queue.append(p)
        return p

    async def wait_committed(self, p: _Pending) -> None:
        """Wait until an `enqueue`d batch is durable (leading its group commit if needed);
        raises what its commit raised."""
        with trio.CancelScope(shield=True):
            if not p.done:
                if self._committing:
                    await p.wake.wait()
                else:
                    self._committing = True
                    await trio.lowlevel.checkpoint()
                if not p.done:
                    await self._lead_one_group()
        if p.error is not None:
            raise p.error

    async def _submit(self, batch: WriteBatch) -> object:
        self._check_batch(batch)
        if self.before_submit is not None:
            self.before_submit()
        self._check_writable()
        p = _Pending(batch)
        self._queue.append(p)
        with trio.CancelScope(shield=True):
            if self._committing:
                await p.wake.wait()  # either our group finished, or we were made leader
            else:
                self._committing = True
                await trio.lowlevel.checkpoint()  # let same-turn batches join the group
            if not p.done:
                await self._lead_one_group()
        if p.error is not None:
            raise p.error
        return p.result

    async def _lead_one_group(self) -> None:
        group, self._queue = self._queue, []
        try:
            if self._failed is not None or self._closed:
                err = StorageFailedError(f"environment {self.path} refuses writes")
                for p in group:
                    p.error = err
            else:
                await trio.to_thread.run_sync(self._write_group, group, limiter=self._limiter)
            self._finish(group)
        finally:
            for p in group:
                if not p.done:  # an unexpected BaseException escaped: fail, never hang
                    p.done = True
                    p.error = p.error or StorageFailedError("group commit aborted")
                p.wake.set()
            if self._queue:
                self._queue[0].wake.set()  # hand leadership to the next group
            else:
                self._committing = False

    def _finish(self, group: list[_Pending]) -> None:
        """Trio thread: run callbacks of committed batches in order, then mark all done."""
        for p in group:
            if p.error is None:
                for cb in p.batch.callbacks:
                    try:
                        cb()
                    except Exception as exc:  # the batch is durable; report to its caller
                        p.error = exc
                        break
            else:
                for cb in p.batch.aborts:
                    try:
                        cb()
                    except Exception:  # the caller gets the commit's own error
                        log.exception("abort callback of a failed batch raised")
            p.done = True

    # ------------------------------------------------------------ writer thread

    def _write_group(self, group: list[_Pending]) -> None:
        """Writer thread: commit the whole group in one transaction; isolate failures."""
        with self._wlock:
            if self._failed is not None:
                err = StorageFailedError(f"environment {self.path} refuses writes")
                for p in group:
                    p.error = err
                return
            try:
                self._run_txn(group)
                self.stats.batches += len(group)
                return
            except _CommitFailed as exc:
                for p in group:
                    p.error = exc.args[0]
                self.stats.failed_batches += len(group)
                return
            except Exception as exc:
                if len(group) == 1:
                    group[0].error = exc
                    self.stats.failed_batches += 1
                    return
            for p in group:  # retry one by one so only the offending batch fails
                try:
                    self._run_txn([p])
                    self.stats.batches += 1
                except _CommitFailed as exc:
                    p.error = exc.args[0]
                    self.stats.failed_batches += 1
                except Exception as exc:
                    p.error = exc
                    self.stats.failed_batches += 1

    def _run_txn(self, group: list[_Pending]) -> None:
        t0 = time.perf_counter()
        try:
            self._run_txn_timed(group)
        finally:
            self.stats.txn_seconds += time.perf_counter() - t0

    def _run_txn_timed(self, group: list[_Pending]) -> None:
        while True:
            txn = self._env.begin(write=True)
            try:
                for p in group:
                    p.result = self._apply(txn, p.batch)
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
                continue
            except BaseException:
                txn.abort()
                raise
            try:
                raise_injected("storage.before_commit")
                t1 = time.perf_counter()
                txn.commit()
                self.stats.sync_seconds += time.perf_counter() - t1
            except lmdb.MapFullError:
                self._abort_quietly(txn)
                self._grow()
                continue
            except BaseException as exc:
                self._abort_quietly(txn)
                if isinstance(exc, Exception):
                    self._failed = exc
                    err = StorageFailedError(
                        f"commit of {self.path} failed ({exc!r}); environment now refuses writes"
                    )
                    err.__cause__ = exc
                    raise _CommitFailed(err) from exc
                raise
            self.stats.transactions += 1
            failpoints.check("storage.after_commit")
            return

    @staticmethod
    def _abort_quietly(txn: lmdb.Transaction) -> None:
        try:
            txn.abort()
        except lmdb.Error:
            pass

    def _apply(self, txn: lmdb.Transaction, batch: WriteBatch) -> object:
        dbs = self._dbs
        result = None
        try:
            for op, name, a, b in batch.ops:
                if op == _PUT:
                    txn.put(a, b, db=dbs[name])
                elif op == _PUT_MANY:
                    with txn.cursor(db=dbs[name]) as cur:
                        cur.putmulti(a)
                elif op == _DELETE:
                    txn.delete(a, db=dbs[name])
                elif op == _DELETE_RANGE:
                    _delete_range(txn, dbs[name], a, b)
                else:
                    result = a(self, txn)
        except KeyError as exc:
            if isinstance(exc.args[0], str) and exc.args[0] not in dbs:
                raise UnknownDatabaseError(exc.args[0], self._names) from None
            raise
        except lmdb.BadValsizeError as exc:
            raise InvalidKeyError(
                f"key must be 1..{MAX_KEY_SIZE} bytes (LMDB limit): {exc}"
            ) from None
        return result

    def _grow(self) -> None:
        current = self._env.info()["map_size"]
        new = min(current * 2, self.max_map_size)
        if new <= current:
            raise StorageFullError(
                f"LMDB map of {self.path} is full at {current} bytes (max_map_size reached)"
            )
        guard = self._guard
        with guard.cond:
            guard.resizing = True
            try:
                while guard.readers:
                    guard.cond.wait()
                self._env.set_mapsize(new)  # no reader can start while we hold the lock
            finally:
                guard.resizing = False
                guard.cond.notify_all()
        self.stats.map_resizes += 1


def _delete_range(txn: lmdb.Transaction, db: Any, lo: bytes, hi: bytes | None) -> None:
    with txn.cursor(db=db) as cur:
        if not cur.set_range(lo):
            return
        if hi is None:
            while cur.delete():
                pass
            return
        while cur.key() < hi:
            if not cur.delete():
                break
