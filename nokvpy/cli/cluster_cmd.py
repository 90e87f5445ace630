"""`nokv cluster up | down | status | logs | kill | restart | stop | pause | resume | add-store`.

Owns: what these commands print and their exit status (`status` exits 3, like `systemctl
status`, when a process is down or unhealthy; it shows each process's metrics URL, `nokv
metrics NAME` prints what is served there). Never changes an existing cluster's shape:
`up` on an existing directory refuses flags that disagree with its cluster.json. `add-store`
grows a running cluster by one store (a new entry in cluster.json, started like the others);
the scheduler places new replicas on it (least loaded first).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from nokvpy.cli.common import CliError
from nokvpy.cli.output import Progress, print_json, table
from nokvpy.cluster.local import LOOPBACK, ClusterSpec, LocalCluster

STATUS_UNHEALTHY = 3  # `cluster status` when a process is down or unhealthy (systemctl's "not running")
# `cluster up` flags that shape a new cluster: flag -> (process kind, noun, default)
SHAPE = {"metaroot": ("metaroot", "metaroot peer", 1), "coordinators": ("coordinator", "coordinator", 1),
         "stores": ("store", "store", 3)}
DEFAULT_REPLICATION = 3


def run(args) -> int:
    cluster = LocalCluster(Path(args.dir))
    action = args.action
    if action == "up":
        return up(cluster, args)
    if action == "down":
        return down(cluster, args)
    if action == "status":
        return status(cluster, args)
    if action == "logs":
        return logs(cluster, args)
    if action == "add-store":
        return add_store(cluster, args)
    spec = cluster.load()
    proc = spec.get(args.name)
    if action == "kill":
        pid = cluster.kill(proc.name)
        result = {"name": proc.name, "pid": pid, "action": "killed with SIGKILL" if pid else "not running"}
    elif action == "stop":
        pid = cluster.stop(proc.name)
        result = {"name": proc.name, "pid": pid, "action": "stopped" if pid else "not running"}
    elif action == "restart":
        if cluster.pid(proc.name) is not None:
            cluster.stop(proc.name)
        pid = cluster.start(spec, proc)
        wait_serving(cluster, spec, proc, timeout=30.0)
        result = {"name": proc.name, "pid": pid, "action": "started"}
    elif action == "pause":
        pid = cluster.signal(proc.name, signal.SIGSTOP)
        result = {"name": proc.name, "pid": pid, "action": "paused with SIGSTOP" if pid else "not running"}
    else:
        pid = cluster.signal(proc.name, signal.SIGCONT)
        result = {"name": proc.name, "pid": pid, "action": "resumed with SIGCONT" if pid else "not running"}
    if args.json:
        print_json(result)
    else:
        print(f"{result['name']}: {result['action']}" + (f" (pid {pid})" if pid else ""))
    return 0


def up(cluster: LocalCluster, args) -> int:
    created = not cluster.exists()
    if created:
        spec = cluster.create(metaroots=given(args, "metaroot"), coordinators=given(args, "coordinators"),
                              stores=given(args, "stores"), replication=given(args, "replication"),
                              tls=bool(getattr(args, "tls", False)),
                              host=getattr(args, "host", None) or LOOPBACK)
    else:
        spec = cluster.load()
        refuse_shape_change(cluster, spec, args)
    progress = Progress("cluster up", enabled=not args.json)
    progress.update(f"{'creating' if created else 'starting'} cluster {spec.cluster_id} in {cluster.root}")
    if not created and cluster.add_metrics_ports(spec):
        progress.update("its cluster.json predates metrics: gave every process a metrics port")
    if spec.tls:
        if not created and cluster.renew_tls(spec):
            progress.update(f"TLS certificates were about to expire: issued new ones in {spec.tls['dir']}")
        else:
            progress.update(f"TLS with certificates in {spec.tls['dir']}")
    full, spec = spec, spec.serving()  # a retired store is never started again
    for proc in spec.processes:
        running = cluster.pid(proc.name)
        pid = cluster.start(full, proc)
        progress.update(f"{proc.name} {'already running' if running else 'started'} "
                        f"(pid {pid}, {proc.address})")
    from nokvpy.client.admin import wait_cluster_ready

    def check() -> None:
        for proc in spec.processes:
            if cluster.pid(proc.name) is None:
                raise CliError(exited_message(cluster, proc.name))

    try:
        wait_cluster_ready(spec, timeout=args.wait, on_progress=progress.update, check=check)
    except CliError:
        progress.done("failed")
        raise
    except Exception as exc:
        progress.done("failed")
        raise CliError(f"cluster did not become ready within {args.wait:g}s: {exc} "
                       f"(logs in {cluster.root / 'logs'}; stop it with "
                       f"`nokv cluster down --dir {args.dir}`)") from None
    progress.done("serving")
    rows = process_rows(cluster, full)
    if args.json:
        print_json({"dir": str(cluster.root), "created": created, "cluster_id": spec.cluster_id,
                    "tls": bool(spec.tls), "processes": rows})
    else:
        print(table(rows, ["name", "kind", "role", "pid", "address", "health"]))
        print(f"\ncluster {spec.cluster_id} in {cluster.root} (data in {cluster.root / 'data'}, "
              f"logs in {cluster.root / 'logs'})")
        if spec.tls:
            print(f"TLS with mutual authentication: CA and certificates in {spec.tls['dir']}")
        print(f"stop it with `nokv cluster down --dir {args.dir}`")
    return 0


def given(args, flag: str) -> int:
    """A shape flag's value, or its default when it was left out (parsed as None)."""
    value = getattr(args, flag)
    if value is not None:
        return value
    return DEFAULT_REPLICATION if flag == "replication" else SHAPE[flag][2]


def refuse_shape_change(cluster: LocalCluster, spec: ClusterSpec, args) -> None:
    """`cluster up` on an existing directory starts the cluster its cluster.json describes: a
    shape flag that disagrees with it is an error, never silently ignored."""
    conflicts = []
    for flag, (kind, noun, _) in SHAPE.items():
        want, have = getattr(args, flag), len(spec.of_kind(kind))
        if want is not None and want != have:
            conflicts.append(f"--{flag} {want} but it has {have} {noun}{'' if have == 1 else 's'}")
    want = args.replication
    if want is not None and min(want, len(spec.of_kind("store"))) != spec.replication:
        conflicts.append(f"--replication {want} but it has replication {spec.replication}")
    if getattr(args, "tls", False) and not spec.tls:
        conflicts.append("--tls but it was created without TLS")
    host = getattr(args, "host", None)
    if host is not None and host != spec.host:
        conflicts.append(f"--host {host} but its processes listen on {spec.host}")
    if conflicts:
        raise CliError(f"{cluster.root} already holds cluster {spec.cluster_id}: "
                       f"{'; '.join(conflicts)} (`cluster up` starts an existing cluster as it is: "
                       "leave the flag out, or use another --dir)")


def add_store(cluster: LocalCluster, args) -> int:
    """Add one store to the cluster in `cluster`, start it and wait until it answers."""
    spec = cluster.load()
    proc = cluster.add_store(spec)
    pid = cluster.start(spec, proc)
    wait_serving(cluster, spec, proc, timeout=args.wait)
    result = {"name": proc.name, "store_id": proc.node_id, "address": proc.address,
              "metrics_address": proc.metrics_address, "data_dir": proc.data_dir, "pid": pid,
              "action": "added and started"}
    if args.json:
        print_json(result)
    else:
        print(f"{proc.name}: added and started (store id {proc.node_id}, {proc.address}, "
              f"pid {pid}, data {proc.data_dir})")
    return 0


def down(cluster: LocalCluster, args) -> int:
    spec = cluster.load()
    stopped = cluster.stop_all(spec)
    result = {"stopped": stopped, "dir": str(cluster.root), "data": str(cluster.root / "data"),
              "logs": str(cluster.root / "logs")}
    if args.json:
        print_json(result)
    else:
        print(f"stopped {len(stopped)} process(es): {', '.join(stopped) or '-'}")
        print(f"data kept in {result['data']}, logs in {result['logs']}")
        print(f"start it again with `nokv cluster up --dir {args.dir}`")
    return 0


def process_rows(cluster: LocalCluster, spec) -> list[dict]:
    from nokvpy.client.admin import probe_processes

    probes = probe_processes(spec, timeout=1.5, pids={p.name: cluster.pid(p.name) for p in spec.processes})
    rows = []
    for proc in spec.processes:
        pid = cluster.pid(proc.name)
        probe = probes.get(proc.name, {})
        if proc.retired:
            rows.append({"name": proc.name, "kind": proc.kind, "role": "-", "pid": pid,
                         "address": proc.address, "health": "retired", "healthy": pid is None,
                         "metrics": None})
            continue
        rows.append({
            "name": proc.name, "kind": proc.kind, "role": probe.get("role", "-"), "pid": pid,
            "address": proc.address,
            "health": probe.get("health", "down" if pid is None else "unreachable"),
            "healthy": healthy(proc.kind, probe),
            "metrics": proc.metrics_url or None,
        })
    return rows


def healthy(kind: str, probe: dict) -> bool:
    """Whether a process serves as it should now: it answered, a coordinator is HEALTHY, a
    store's current state is READY. (A store's health column shows its restart state as
    found at start; a store that started DEGRADED and has caught up since is healthy.)"""
    health = probe.get("health", "")
    if not health.startswith("up"):
        return False
    if kind == "store":
        status = probe.get("status") or {}
        current = (status.get("current_state") or {}).get("state")
        restart = (status.get("restart_state") or {}).get("state")
        return (current or restart) == "READY"
    return health == "up"


def status(cluster: LocalCluster, args) -> int:
    spec = cluster.load()
    rows = process_rows(cluster, spec)
    ok = all(r["healthy"] for r in rows)
    if args.json:
        print_json({"dir": str(cluster.root), "cluster_id": spec.cluster_id, "healthy": ok,
                    "processes": rows})
    else:
        print(table(rows, ["name", "kind", "role", "pid", "address", "health", "metrics"]))
        if not ok:
            bad = ", ".join(f"{r['name']} {r['health']}" for r in rows if not r["healthy"])
            print(f"\nnot healthy: {bad}")
    return 0 if ok else STATUS_UNHEALTHY


def logs(cluster: LocalCluster, args) -> int:
    spec = cluster.load()
    names = [spec.get(args.name).name] if args.name else [p.name for p in spec.processes]
    offsets: dict[str, int] = {}
    for name in names:
        path = cluster.log_path(name)
        if not path.exists():
            print(f"== {name}: no log yet ({path})")
            continue
        data = path.read_bytes()
        offsets[name] = len(data)
        lines = data.decode(errors="replace").splitlines()
        lines = lines[-args.lines:] if args.lines else []
        print(f"== {name} ({path})")
        if lines:
            print("\n".join(lines))
    if getattr(args, "follow", False):
        follow(cluster, names, offsets, prefix=len(names) > 1)
    return 0


FOLLOW_POLL = 0.25  # seconds between looks at the logs under `cluster logs -f`


def follow(cluster: LocalCluster, names: list[str], offsets: dict[str, int], prefix: bool,
           rounds: int | None = None) -> None:
    """`cluster logs -f`: print each complete line appended to the logs of `names` as it
    comes (prefixed with the process name when there are several), until Ctrl-C. A log
    that shrinks (a new file) is read again from its start. `rounds` bounds the polls."""
    partial: dict[str, bytes] = {}
    n = 0
    try:
        while rounds is None or n < rounds:
            n += 1
            for name in names:
                path = cluster.log_path(name)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                start = offsets.get(name, 0)
                if size < start:  # truncated or replaced: from the start again
                    start, partial[name] = 0, b""
                if size == start:
                    continue
                with open(path, "rb") as fh:
                    fh.seek(start)
                    chunk = fh.read(size - start)
                offsets[name] = start + len(chunk)
                *complete, partial[name] = (partial.get(name, b"") + chunk).split(b"\n")
                for line in complete:
                    text = line.decode(errors="replace")
                    print(f"{name} | {text}" if prefix else text, flush=True)
            time.sleep(FOLLOW_POLL)
    except KeyboardInterrupt:
        pass


def exited_message(cluster: LocalCluster, name: str) -> str:
    last = cluster.last_log_line(name)
    return (f"{name} exited during start-up" + (f": {last}" if last else "")
            + f" (log: {cluster.log_path(name)})")


def wait_serving(cluster: LocalCluster, spec, proc, timeout: float) -> None:
    """Wait until a (re)started process answers its status request; fail if it exits."""
    from nokvpy.client.admin import probe_processes

    deadline = time.monotonic() + timeout
    while True:
        if cluster.pid(proc.name) is None:
            raise CliError(exited_message(cluster, proc.name))
        one = type(spec)(spec.cluster_id, spec.secret, spec.replication, [proc], tls=spec.tls)
        health = probe_processes(one, timeout=1.0).get(proc.name, {}).get("health", "")
        if health.startswith("up"):
            return
        if time.monotonic() >= deadline:
            raise CliError(f"{proc.name} started but did not answer within {timeout:g}s "
                           f"(log: {cluster.log_path(proc.name)})")
        time.sleep(0.1)

