"""Which role may call which RPC (issue: one shared secret made every holder a full peer).

Owns: `POLICY`, the roles allowed to send each request type, per serving process kind where
one type is served by two kinds (raft batches: region raft between stores, metaroot raft
between metaroot peers), and `allowed(server_kind, role, request_type_name)`. Every request
type a process registers must be listed (tests/security/test_roles.py checks it): an
unlisted type is refused, never allowed by default.

Roles are the node kinds a connection proves in the handshake (`nokvpy.rpc.identity.ROLES`):
`metaroot`, `coordinator`, `store` (the processes), `client` (applications: KV and route
reads), `admin` (operators: the CLI, jepsen-lite's control; topology commands, failpoints,
fault rules, diagnostics that change something). Failpoints and fault rules also need the
process to have been started with `--enable-failpoints` (`FAULT_RPCS`; the RPC server checks
it). Never does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

METAROOT, COORDINATOR, STORE, CLIENT, ADMIN = "metaroot", "coordinator", "store", "client", "admin"
ANY = frozenset({METAROOT, COORDINATOR, STORE, CLIENT, ADMIN})
KV_CALLERS = frozenset({CLIENT, ADMIN})

# request type name -> roles, or {serving process kind -> roles}
POLICY: Mapping[str, frozenset[str] | Mapping[str, frozenset[str]]] = {
    # built in (every server)
    "Ping": ANY,
    "Echo": ANY,
    "GetFaultRules": ANY,
    "SetFaultRules": frozenset({ADMIN}),
    "FailpointListRequest": ANY,
    "FailpointSetRequest": frozenset({ADMIN}),
    "FailpointClearRequest": frozenset({ADMIN}),
    # raft: only the members' own kind
    "RaftBatch": {STORE: frozenset({STORE}), METAROOT: frozenset({METAROOT})},
    # metaroot
    "AppendRequest": frozenset({COORDINATOR}),
    "GrantRequest": frozenset({COORDINATOR}),
    "FenceAllocatorRequest": frozenset({COORDINATOR}),
    "ConfirmTokenRequest": frozenset({COORDINATOR, ADMIN}),
    "WatchRequest": frozenset({COORDINATOR, ADMIN}),
    "SnapshotRequest": frozenset({COORDINATOR, ADMIN}),
    "MetarootStatusRequest": ANY,
    "MetarootConfChangeRequest": frozenset({ADMIN}),  # metaroot membership: operators only
    # coordinator
    "GetRegionByKeyRequest": ANY,
    "ScanRegionsRequest": ANY,
    "ListStoresRequest": ANY,
    "ListTransitionsRequest": ANY,
    "DiagnosticsRequest": ANY,
    "AllocIdRequest": frozenset({CLIENT, ADMIN, STORE}),
    "TsoRequest": frozenset({CLIENT, ADMIN, STORE}),
    "StoreJoinRequest": frozenset({STORE}),
    "StoreHeartbeatRequest": frozenset({STORE}),
    # stores publish transitions; an operator may too (the coordinator assesses either)
    "PublishRootEventRequest": frozenset({STORE, ADMIN}),
    "AssessRootEventRequest": frozenset({STORE, ADMIN}),
    "RemoveRegionRequest": frozenset({STORE}),
    "PauseCatchUpRequest": frozenset({ADMIN}),
    "RetireStoreRequest": frozenset({ADMIN}),
    # stores
    "GetRequest": KV_CALLERS,
    "BatchGetRequest": KV_CALLERS,
    "ScanRequest": KV_CALLERS,
    "PutRequest": KV_CALLERS,
    "DeleteRequest": KV_CALLERS,
    "CasRequest": KV_CALLERS,
    "TxnRequest": KV_CALLERS,
    "DeleteRangeRequest": KV_CALLERS,
    "KvWatchRequest": KV_CALLERS,
    # read-only, but it reads every key of a region: KV callers (a backup)
    "RegionExportRequest": KV_CALLERS,
    "LeaseKeepAliveRequest": KV_CALLERS,
    # a store's sweeper asks the lease's authority before deleting the lease's keys
    "LeaseAliveRequest": frozenset({CLIENT, ADMIN, STORE}),
    "AdminRequest": frozenset({ADMIN, STORE}),  # stores forward to a region's leader
    "ExecutionStatusRequest": ANY,
    "OutboxRequest": frozenset({ADMIN}),
    # read-only, but it reads (a hash of) every key of a region, as a scan would: KV callers
    "RegionDigestRequest": KV_CALLERS,
}

# RPCs that inject faults: refused unless the process runs with --enable-failpoints
FAULT_RPCS = frozenset({"SetFaultRules", "FailpointSetRequest", "FailpointClearRequest"})


def allowed_roles(server_kind: str, request_type: str) -> frozenset[str]:
    entry = POLICY.get(request_type)
    if entry is None:
        return frozenset()
    if isinstance(entry, frozenset):
        return entry
    return entry.get(server_kind, frozenset())


def allowed(server_kind: str, role: str, request_type: str) -> bool:
    return role in allowed_roles(server_kind, request_type)
