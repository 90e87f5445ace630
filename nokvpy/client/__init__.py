"""The nokvpy client: async `Client`, blocking `SyncClient`, typed errors."""

from nokvpy.client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NokvError,
    OutcomeUnknownError,
    RejectedError,
    RouteRejectedError,
    UnavailableError,
)
from nokvpy.client.kv import Client
from nokvpy.client.sync import SyncClient

__all__ = [
    "Client", "SyncClient", "NokvError", "RejectedError", "RouteRejectedError",
    "OutcomeUnknownError", "UnavailableError", "DeadlineExceededError", "InvalidRequestError",
]
