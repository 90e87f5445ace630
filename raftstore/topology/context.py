"""What the topology operations may use of their store and of each other (part of the
topology runtime).

Owns: `StoreContext`, the store as the operations see it (exactly the members they use:
hosted peers and tombstones, the driver, localmeta / raft log / KV / env, the RPC client and
store addresses, counters, the execution tracker and limits, admission and refusal, starting
and destroying a replica); `RootLink`, the coordinator link they publish through;
`ApplyContext`, what apply handlers see of the runtime; `Operation`, the base of the
operations over the runtime (split, merge, membership, compensation); the failure types of
execution and the time budgets. Never does I/O and never holds state: a
`raftstore.store.Store` is a `StoreContext`, a `raftstore.topology.runtime.Runtime` an
`ApplyContext`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from nokvpy.protocol import Admission, AdmissionClass, AdmissionReason, RegionDescriptor

if TYPE_CHECKING:
    import trio

    from nokvpy.protocol.raftstore_cmds import RegionTombstone
    from nokvpy.protocol.store_rpc import KvContext
    from nokvpy.replication.driver import Driver
    from nokvpy.rpc import RemoteError, RpcClient
    from nokvpy.storage import KV, ChangeTable, Env, LocalMeta, RaftLogStore
    from raftstore.admission import Limits
    from raftstore.execution import ExecutionTracker
    from raftstore.peer import Peer
    from raftstore.topology.lifecycle import Lifecycle
    from raftstore.topology.outbox import Publisher
    from raftstore.topology.runtime import Runtime

PROPOSE_TIMEOUT = 20.0
# A planned publish whose answer did not come (timeout, coordinator unreachable) may be in
# root: it is published again (idempotent: the pending plan is found) this long.
PLAN_PUBLISH_TIMEOUT = 10.0
# How long a new learner may take to catch up before the addition is compensated
# (NOKV_CATCH_UP_TIMEOUT seconds overrides it).
CATCH_UP_TIMEOUT = float(os.environ.get("NOKV_CATCH_UP_TIMEOUT", "120"))
FREEZE_TIMEOUT = 30.0
TRANSFER_TIMEOUT = 8.0
WAIT_TERMINAL = 2.0  # wait=True: how long to wait for the terminal publish after apply


class ExecutionFailedError(Exception):
    """Execution of a planned transition failed before (known or possibly) applying."""

    def __init__(self, evidence: str, known_not_applied: bool = True):
        super().__init__(evidence)
        self.evidence = evidence
        self.known_not_applied = known_not_applied


class ForwardToLeaderError(Exception):
    """This store does not lead the region; `leader_store` does (forward the request once)."""

    def __init__(self, leader_store: int):
        super().__init__(f"forward to store {leader_store}")
        self.leader_store = leader_store


class StoreContext(Protocol):
    """The store as the topology operations see it (raftstore.store.Store)."""

    store_id: int
    peers: dict[int, Peer]
    tombstones: dict[int, RegionTombstone]
    destroying: set[int]  # region ids whose raft traffic is dropped (see Store.destroying)
    store_addrs: dict[int, str]
    counters: Counter[str]
    driver: Driver
    env: Env
    kv: KV
    changes: ChangeTable  # each region's recent writes (raftstore.changelog)
    meta: LocalMeta
    raftlog: RaftLogStore
    rpc: RpcClient
    tracker: ExecutionTracker
    limits: Limits  # the publisher sets `scheduler_degraded`
    heartbeat_wake: trio.Event
    outbox_backlog: int  # refreshed by the publisher
    blocked_events: int
    topology: Any

    def admit(self, cls: AdmissionClass, kvctx: KvContext | None,
              deadline: float) -> Admission: ...

    def refuse(self, cls: AdmissionClass, reason: AdmissionReason, detail: str,
               peer: Peer | None = None) -> RemoteError: ...

    def start_peer(self, rid: int, peer_id: int, desc: RegionDescriptor | None, applied: int,
                   applied_term: int, bootstrap: list[int] | None) -> Peer: ...

    async def destroy_region(self, rid: int, reason: str, peer_id: int = 0) -> bool: ...


class RootLink(Protocol):
    """The coordinator link (raftstore.heartbeat.CoordinatorLink): root calls go through it."""

    async def call(self, request: Any) -> Any: ...


class ApplyContext(Protocol):
    """What the apply handlers (raftstore.topology.apply) use of the runtime."""

    store: StoreContext
    lifecycle: Lifecycle
    publisher: Publisher

    def on_split_applied(self, parent_id: int, right: RegionDescriptor) -> None: ...

    def on_local_peer_removed(self, rid: int, tid: str, peer_id: int) -> None: ...


class Operation:
    """An operation over the shared runtime `rt` of one store (and that store, `store`)."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.store = rt.store
