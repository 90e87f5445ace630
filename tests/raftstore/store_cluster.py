"""In-process store clusters for tests: N stores + the fake coordinator in one trio run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio
from fake_coordinator import FakeCoordinator

from nokvpy.client import Client
from raftstore.main import serve
from raftstore.store import Store


@dataclass
class StoreHandle:
    store_id: int
    data: Path
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    store: Store | None = None
    stopped: trio.Event = field(default_factory=trio.Event)


class InProcCluster:
    def __init__(self, nursery: trio.Nursery, root: Path, n: int = 3, tick: float = 0.05,
                 heartbeat: float = 0.2, options: dict | None = None):
        self.options = options or {}
        self.extra_coordinators: list[str] = []  # e.g. dead addresses listed first
        self.nursery = nursery
        self.root = root
        self.n = n
        self.tick = tick
        self.heartbeat = heartbeat
        self.coord = FakeCoordinator(n)
        self.handles: dict[int, StoreHandle] = {}

    async def start(self, stores: list[int] | None = None) -> None:
        await self.nursery.start(self.coord.serve)
        for sid in stores or range(1, self.n + 1):
            await self.start_store(sid)

    async def start_store(self, sid: int) -> Store:
        data = self.root / f"store-{sid}"
        handle = StoreHandle(sid, data)
        self.handles[sid] = handle

        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with handle.scope:
                    await serve(sid, "127.0.0.1:0",
                                [*self.extra_coordinators, self.coord.address], str(data),
                                tick_interval=self.tick, heartbeat_interval=self.heartbeat,
                                options=self.options, task_status=task_status)
            finally:
                handle.stopped.set()

        handle.store = await self.nursery.start(runner)
        return handle.store

    async def kill(self, sid: int) -> None:
        h = self.handles[sid]
        h.scope.cancel()
        await h.stopped.wait()

    def store(self, sid: int) -> Store:
        s = self.handles[sid].store
        assert s is not None
        return s

    def live(self) -> list[Store]:
        return [h.store for h in self.handles.values()
                if h.store is not None and not h.stopped.is_set()]

    def leader(self, rid: int = 1) -> Store | None:
        for s in self.live():
            p = s.peers.get(rid)
            if p is not None and p.is_leader:
                return s
        return None

    async def wait_leader(self, rid: int = 1, timeout: float = 15.0) -> Store:
        with trio.fail_after(timeout):
            while True:
                s = self.leader(rid)
                if s is not None:
                    return s
                await trio.sleep(0.02)

    def client(self, timeout: float = 10.0) -> Client:
        return Client([self.coord.address], timeout=timeout)
