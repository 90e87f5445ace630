"""Where a client connects: a local cluster directory, or coordinator addresses.

Owns: turning `nokv cluster up`'s directory (its cluster.json) or a list of addresses into the
`Client(...)` arguments `coordinators`, `cluster_id`, `secret` and, for a TLS cluster, `tls`
(cluster.json's admin client certificate, or NOKV_TLS_CERT, NOKV_TLS_KEY and NOKV_TLS_CA with
addresses). Never opens a connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nokvpy.rpc import parse_addr


def cluster_dir_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`coordinators`, `cluster_id` and `secret` of the local cluster in `path` (the
    directory given to `nokv cluster up --dir`, or its cluster.json). Raises ClusterError
    when there is no cluster there."""
    from nokvpy.cluster.local import LocalCluster

    path = Path(path)
    if path.name == "cluster.json" and path.is_file():
        path = path.parent
    spec = LocalCluster(path).load()
    settings = {"coordinators": spec.coordinator_addrs(), "cluster_id": spec.cluster_id,
                "secret": spec.secret.encode() if spec.secret else None}
    tls = spec.tls_files()
    if tls:  # `nokv cluster up --tls`: the local admin client's certificate
        settings["tls"] = tls
    return settings


def address_settings(addresses: str | list[str], cluster_id: str | None = None,
                     secret: str | bytes | None = None) -> dict[str, Any]:
    """`coordinators`, `cluster_id` and `secret` from `host:port[,host:port]` (or a list);
    the id and secret default to NOKV_CLUSTER_ID and NOKV_CLUSTER_SECRET, as for the `nokv`
    command's `--coordinator`, and `tls` is added when NOKV_TLS_CERT, NOKV_TLS_KEY and
    NOKV_TLS_CA are set. Raises ValueError for an address without a port."""
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    coordinators = [a.strip() for a in addresses if a.strip()]
    if not coordinators:
        raise ValueError("no coordinator address given: expected host:port[,host:port]")
    for addr in coordinators:
        parse_addr(addr)  # ValueError: bad address 'localhost': expected host:port
    if cluster_id is None:
        cluster_id = os.environ.get("NOKV_CLUSTER_ID", "nokv")
    if secret is None:
        secret = os.environ.get("NOKV_CLUSTER_SECRET") or None
    if isinstance(secret, str):
        secret = secret.encode()
    settings = {"coordinators": coordinators, "cluster_id": cluster_id, "secret": secret}
    tls = env_tls()
    if tls:
        settings["tls"] = tls
    return settings


def env_tls() -> dict[str, str] | None:
    """{"cert", "key", "ca"} from NOKV_TLS_CERT, NOKV_TLS_KEY and NOKV_TLS_CA (None when none
    is set; ValueError when only some are)."""
    files = {k: os.environ.get(f"NOKV_TLS_{k.upper()}", "") for k in ("cert", "key", "ca")}
    if not any(files.values()):
        return None
    missing = [f"NOKV_TLS_{k.upper()}" for k, v in files.items() if not v]
    if missing:
        raise ValueError(f"NOKV_TLS_CERT, NOKV_TLS_KEY and NOKV_TLS_CA go together "
                         f"(missing {', '.join(missing)})")
    return files


def target_settings(target: str | os.PathLike[str] | list[str], **kwargs: Any) -> dict[str, Any]:
    """`nokvpy.connect`'s arguments as `Client(...)` arguments. `target` is a cluster
    directory (or its cluster.json), or coordinator addresses (`"host:port,host:port"` or a
    list). A string is a directory when one exists at that path or when it has no `:`.
    `kwargs` are passed on (with addresses, `cluster_id` and `secret` are read first)."""
    if isinstance(target, list | tuple):
        addresses: str | list[str] = list(target)
    else:
        text = os.fspath(target)
        if isinstance(target, os.PathLike) or Path(text).exists() or ":" not in text:
            return cluster_dir_settings(text) | kwargs
        addresses = text
    settings = address_settings(addresses, kwargs.pop("cluster_id", None), kwargs.pop("secret", None))
    return settings | kwargs
