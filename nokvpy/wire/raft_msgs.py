"""Records of the raft transport: how raft messages travel between stores.

Owns: tags 40-49. A `RaftEnvelope` addresses one raft `Message` to one group on one store and
carries the sender's view of the region epoch so the receiver can gate stale traffic; a
`RaftBatch` is everything one store sends another in one transport turn. Group id 0 is
reserved for the metaroot group; store groups use their region id. Never holds behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nokvpy.protocol.base import wire_type
from nokvpy.raft.types import Message

METAROOT_GROUP_ID = 0


@wire_type(40)
@dataclass(slots=True)
class RaftEnvelope:
    group_id: int
    from_store: int
    to_store: int
    epoch_version: int
    epoch_conf_ver: int
    message: Message


@wire_type(41)
@dataclass(slots=True)
class RaftBatch:
    from_store: int
    to_store: int
    envelopes: list[RaftEnvelope] = field(default_factory=list)
