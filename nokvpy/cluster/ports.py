"""Free loopback ports for local clusters and tests.

Owns: picking ports. Binding a socket is the only way to find a free one, and DESIGN gives
socket opening to `nokvpy.rpc`, so this asks rpc for them.
"""

from __future__ import annotations


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    from nokvpy.rpc.ports import free_ports as _free

    return _free(count, host)
