"""nokvpy: a Raft-replicated, range-partitioned key-value store.

`nokvpy.connect(...)`, `nokvpy.Client` and `nokvpy.SyncClient` are the client library
(nokvpy.client; docs/client.md). They are imported on first use, so a server process that
imports nokvpy's other packages does not load the client.
"""

from __future__ import annotations

from typing import Any

_CLIENT_NAMES = ("Client", "SyncClient", "NokvError")


def connect(target: Any, **kwargs: Any) -> Any:
    """A blocking client (`SyncClient`) of the cluster in directory `target` (as given to
    `nokv cluster up --dir`) or at coordinator addresses `"host:port,..."`; see
    nokvpy.client.sync.connect."""
    from nokvpy.client import connect as client_connect

    return client_connect(target, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import nokvpy.client

        return getattr(nokvpy.client, name)
    raise AttributeError(f"module 'nokvpy' has no attribute {name!r}")


__all__ = ["connect", *_CLIENT_NAMES]
