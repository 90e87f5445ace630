"""nokvpy.wire: typed records <-> bytes. The only importer of msgpack.

Owns: the record codec (`encode`, `decode`, `decode_as`), its errors, length-prefixed
checksummed framing, the wire tags of the raft types (1-39), the raft transport records
(40-49) and the RPC envelope records (100-149). Never opens a socket (that is `nokvpy.rpc`).
"""

from nokvpy.wire import raft_codec as _raft_codec  # noqa: F401  (registers tags 1-39)
from nokvpy.wire.codec import (
    DEFAULT_LIMITS,
    DecodeLimits,
    decode,
    decode_as,
    encode,
    load_protocol_modules,
    peek_record,
    registered_types,
)
from nokvpy.wire.errors import DecodeError, EncodeError, FrameTooLargeError, WireSchemaError
from nokvpy.wire.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEADER_SIZE,
    FrameChecksumError,
    FrameDecoder,
    frame,
)
from nokvpy.wire.raft_msgs import METAROOT_GROUP_ID, RaftBatch, RaftEnvelope
from nokvpy.wire.rpc_msgs import (
    Cancel,
    Echo,
    ErrorReply,
    FaultRule,
    FaultRulesState,
    GetFaultRules,
    Handshake,
    HandshakeProof,
    HandshakeReply,
    HandshakeResult,
    Ping,
    Pong,
    Request,
    Response,
    SetFaultRules,
    StreamEnd,
    StreamItem,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER_SIZE",
    "METAROOT_GROUP_ID",
    "Cancel",
    "DecodeError",
    "DecodeLimits",
    "Echo",
    "EncodeError",
    "ErrorReply",
    "FaultRule",
    "FaultRulesState",
    "FrameChecksumError",
    "FrameDecoder",
    "FrameTooLargeError",
    "GetFaultRules",
    "Handshake",
    "HandshakeProof",
    "HandshakeReply",
    "HandshakeResult",
    "Ping",
    "Pong",
    "RaftBatch",
    "RaftEnvelope",
    "Request",
    "Response",
    "SetFaultRules",
    "StreamEnd",
    "StreamItem",
    "WireSchemaError",
    "decode",
    "decode_as",
    "peek_record",
    "encode",
    "frame",
    "load_protocol_modules",
    "registered_types",
]
