"""`nokv metrics NAME`: a process's Prometheus metrics, fetched from its metrics endpoint.

Owns: finding the endpoint (a process of a `--dir` cluster by name, from the metrics address
its cluster.json records; or an endpoint's host:port given directly) and printing what it
serves: the text as it came, or with `--json` the parsed families (`nokvpy.metrics.parse`).
Never opens a connection itself (`nokvpy.rpc.metrics_http.fetch_metrics` does) and never
starts or changes a process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nokvpy.cli.common import CliError
from nokvpy.cli.output import print_json


def run(args) -> int:
    import trio

    from nokvpy.rpc.metrics_http import MetricsFetchError, fetch_metrics

    addr, label, hint = endpoint(args)
    try:
        text = trio.run(fetch_metrics, addr, args.timeout)
    except MetricsFetchError as exc:
        raise CliError(f"{exc}{hint}" if label == addr else f"{label}: {exc}{hint}") from None
    if not args.json:
        sys.stdout.write(text)
        return 0
    from nokvpy import metrics

    try:
        families = metrics.parse(text)
    except ValueError as exc:
        raise CliError(f"{label}: the answer of {addr} is not Prometheus text: {exc}") from None
    print_json({"process": label, "address": addr, "url": f"http://{addr}/metrics",
                "families": [f.as_dict() for f in families]})
    return 0


def endpoint(args) -> tuple[str, str, str]:
    """(host:port, what to call it in messages, a hint for a failed fetch)."""
    from nokvpy.cluster.local import LocalCluster

    name = args.name
    cluster = LocalCluster(Path(args.dir))
    if not cluster.exists() and _is_address(name):
        return name, name, ""
    spec = cluster.load()
    if _is_address(name) and not any(p.name == name for p in spec.processes):
        return name, name, ""
    proc = spec.get(name)
    if not proc.metrics_address:
        raise CliError(f"{proc.name} has no metrics endpoint: {cluster.spec_path} was written "
                       "before processes served metrics (stop the cluster with `nokv cluster "
                       f"down --dir {args.dir}` and start it again with `nokv cluster up --dir "
                       f"{args.dir}`: it gets metrics ports then)")
    if cluster.pid(proc.name) is None:
        raise CliError(f"{proc.name} is not running (killed or stopped); start it with "
                       f"`nokv cluster restart {proc.name} --dir {args.dir}`")
    return proc.metrics_address, proc.name, f" (log: {cluster.log_path(proc.name)})"


def _is_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())
