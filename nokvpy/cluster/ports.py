"""Free ports for local clusters and tests, and the host a local cluster listens on.

Owns: picking ports, and checking the `--host` of `nokv cluster up` (an address of this
machine, never a wildcard). Binding a socket is the only way to find a free one, and DESIGN gives
socket opening to `nokvpy.rpc`, so this asks rpc for them.
"""

from __future__ import annotations


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    from nokvpy.rpc.ports import free_ports as _free

    return _free(count, host)


class ClusterError(Exception):
    """A cluster directory or process problem, with a one-line message for operators
    (nokvpy.cluster.local raises it too and exports it)."""


def check_host(host: str) -> str:
    """`host` as processes will listen on and advertise it: an IPv4 address or a name of this
    machine, never a wildcard (no other process could reach an address like 0.0.0.0)."""
    host = host.strip()
    if not host:
        raise ClusterError("--host needs an address, e.g. 10.0.0.5")
    if host in ("0.0.0.0", "*") or ":" in host:
        raise ClusterError(f"--host {host}: give the IPv4 address or name other hosts reach this "
                           f"one by (processes advertise the address they listen on, so not a "
                           f"wildcard; IPv6 is not supported)")
    return host


def join(host: str, port: int) -> str:
    return f"{host}:{port}"


def host_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free on `host`; ClusterError when this machine cannot listen
    there (not one of its addresses)."""
    try:
        return free_ports(count, host)
    except OSError as exc:
        raise ClusterError(f"cannot listen on {host}: {exc.strerror or exc} (is it an address "
                           f"of this machine?)") from None
