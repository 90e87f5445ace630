"""The nokvpy client: async `Client` (trio), blocking `SyncClient`, `connect`, typed errors.

docs/client.md shows them in scripts, trio and asyncio programs.
"""

from nokvpy.client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NokvError,
    OutcomeUnknownError,
    RejectedError,
    RouteRejectedError,
    UnavailableError,
)
from nokvpy.client.kv import (
    Client,
    Compare,
    DeleteRangeResult,
    Op,
    RegionDeleted,
    ScanResult,
    TxnResponse,
)
from nokvpy.client.leases import LeaseNotFoundError
from nokvpy.client.loopcheck import WrongEventLoopError
from nokvpy.client.sync import SyncClient, connect
from nokvpy.client.watch import Watch, WatchCompactedError, WatchEvent, WatchSegment
from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import ReadMode, TxnGetResult

__all__ = [
    "Client", "SyncClient", "connect", "NokvError", "RejectedError", "RouteRejectedError",
    "OutcomeUnknownError", "UnavailableError", "DeadlineExceededError", "InvalidRequestError",
    "WrongEventLoopError", "Freshness", "ReadMode",
    "Compare", "Op", "TxnResponse", "TxnGetResult", "ScanResult", "DeleteRangeResult",
    "RegionDeleted", "LeaseNotFoundError", "Watch", "WatchEvent", "WatchSegment", "WatchCompactedError",
]
