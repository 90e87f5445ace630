"""nokvpy.rpc: the only opener of sockets. Trio RPC server and client.

Owns: connections (TCP or in-memory), the authenticated handshake, request/response and
server-streaming calls with deadlines, typed errors, seeded fault injection, and the raft
transport between stores. Never interprets service records (services register handlers).

    server = RpcServer(Identity("c1", "store", 2, secret=b"..."))
    server.register(Get, on_get)                     # async def on_get(req, ctx) -> GetReply
    host, port = await nursery.start(server.serve, "127.0.0.1", 0)
    client = RpcClient(Identity("c1", "client", 7, secret=b"..."))
    reply = await client.call(f"{host}:{port}", Get(b"k"), timeout=1.0)
"""

from nokvpy.rpc.client import RpcClient, RpcStream
from nokvpy.rpc.errors import (
    HandshakeRefusedError,
    RemoteError,
    RpcError,
    RpcTimeoutError,
    RpcUnavailableError,
)
from nokvpy.rpc.faults import FaultRules, FaultVerdict
from nokvpy.rpc.handshake import PROTOCOL_VERSION
from nokvpy.rpc.identity import Counters, Identity, PeerIdentity, format_addr, parse_addr
from nokvpy.rpc.memory import MemoryNetwork
from nokvpy.rpc.network import Network, TcpNetwork
from nokvpy.rpc.raft_transport import RaftTransport
from nokvpy.rpc.server import CallContext, RpcServer

__all__ = [
    "PROTOCOL_VERSION",
    "CallContext",
    "Counters",
    "FaultRules",
    "FaultVerdict",
    "HandshakeRefusedError",
    "Identity",
    "MemoryNetwork",
    "Network",
    "PeerIdentity",
    "RaftTransport",
    "RemoteError",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcStream",
    "RpcTimeoutError",
    "RpcUnavailableError",
    "TcpNetwork",
    "format_addr",
    "parse_addr",
]
