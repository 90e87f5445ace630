"""A blocking wrapper around the async client, for scripts and notebooks.

Owns: one background thread running a trio loop and the portal calls into it. Never changes
the client's semantics: every method is the async one, awaited on that loop.
"""

from __future__ import annotations

import threading
from typing import Any

import trio

from nokvpy.client.kv import Client


class SyncClient:
    def __init__(self, coordinators: list[str], **kwargs: Any):
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._client: Client | None = None
        self._thread = threading.Thread(target=self._run, args=(coordinators, kwargs),
                                        name="nokv-client", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self, coordinators, kwargs) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._client = Client(coordinators, **kwargs)
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self._client.aclose()

        trio.run(main)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._client, name)
        return trio.from_thread.run(lambda: method(*args, **kwargs), trio_token=self._token)

    def get(self, key: bytes, **kw: Any) -> bytes | None:
        return self._call("get", key, **kw)

    def batch_get(self, keys: list[bytes], **kw: Any) -> dict[bytes, bytes | None]:
        return self._call("batch_get", keys, **kw)

    def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 100, **kw: Any):
        return self._call("scan", start, end, limit, **kw)

    def put(self, key: bytes, value: bytes, **kw: Any) -> int:
        return self._call("put", key, value, **kw)

    def delete(self, key: bytes, **kw: Any) -> int:
        return self._call("delete", key, **kw)

    def compare_and_swap(self, key: bytes, expected: bytes | None, new: bytes | None, **kw: Any):
        return self._call("compare_and_swap", key, expected, new, **kw)

    def route(self, key: bytes, *args: Any, **kw: Any):
        return self._call("route", key, *args, **kw)

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
