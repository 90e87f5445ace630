"""Free loopback ports, for local clusters and tests.

Owns: finding ports nobody listens on, by binding port 0 (the only reliable way, and socket
opening belongs to `nokvpy.rpc`). All `count` sockets are held open together so the ports are
distinct, then closed; another process may still grab one before it is used (a race inherent
to the approach: callers should retry on "address in use").
"""

from __future__ import annotations

import socket


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
