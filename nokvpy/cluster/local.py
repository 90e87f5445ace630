"""A local multi-process cluster under one directory.

Owns: the layout of a cluster directory (`cluster.json`, `pids/`, `logs/`, `data/`), starting
and stopping the `nokv ... serve` processes it describes, and finding them again by name.
Never talks to a running process over RPC (callers do that with the addresses it records) and
never touches files outside its directory.

Layout::

    DIR/cluster.json        cluster id, secret, every process: name, kind, id, address, args
                            (mode 0600: it holds the secret)
    DIR/pids/NAME.pid       pid of a running process (removed when it is stopped)
    DIR/logs/NAME.log       stdout and stderr of the process
    DIR/data/NAME/          LMDB environments of metaroot peers and stores
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nokvpy.cluster.ports import free_ports

KINDS = ("metaroot", "coordinator", "store")
SECRET_FILE_MODE = 0o600  # files holding the cluster secret (or, later, keys)


class ClusterError(Exception):
    """A cluster directory or process problem, with a one-line message for operators."""


@dataclass
class ProcessSpec:
    name: str  # metaroot-1, coordinator-2, store-3
    kind: str
    node_id: int
    address: str
    data_dir: str = ""
    extra_args: list[str] = field(default_factory=list)


@dataclass
class ClusterSpec:
    cluster_id: str
    secret: str
    replication: int
    processes: list[ProcessSpec]

    def of_kind(self, kind: str) -> list[ProcessSpec]:
        return [p for p in self.processes if p.kind == kind]

    def get(self, name: str) -> ProcessSpec:
        for p in self.processes:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.processes)
        raise ClusterError(f"no process named {name!r} in this cluster (have: {names})")

    def metaroot_addrs(self) -> list[str]:
        return [p.address for p in self.of_kind("metaroot")]

    def coordinator_addrs(self) -> list[str]:
        return [p.address for p in self.of_kind("coordinator")]


class LocalCluster:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    # ---- layout --------------------------------------------------------------------------

    @property
    def spec_path(self) -> Path:
        return self.root / "cluster.json"

    def pid_path(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def exists(self) -> bool:
        return self.spec_path.exists()

    def load(self) -> ClusterSpec:
        if not self.spec_path.exists():
            raise ClusterError(f"no cluster in {self.root} (run `nokv cluster up --dir {self.root}`)")
        _restrict_old_file(self.spec_path)
        try:
            raw = json.loads(self.spec_path.read_text())
            procs = [ProcessSpec(**p) for p in raw.pop("processes")]
            return ClusterSpec(processes=procs, **raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ClusterError(f"{self.spec_path} is not a valid cluster file: {exc}") from None

    def save(self, spec: ClusterSpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_secret_file(self.spec_path, json.dumps(asdict(spec), indent=2).encode())

    # ---- creation ------------------------------------------------------------------------

    def create(
        self, metaroots: int = 1, coordinators: int = 1, stores: int = 3, replication: int = 3
    ) -> ClusterSpec:
        if self.exists():
            raise ClusterError(f"a cluster already exists in {self.root}")
        if metaroots not in (1, 3, 5):
            raise ClusterError("--metaroot must be 1, 3 or 5")
        if coordinators < 1 or stores < 1:
            raise ClusterError("need at least one coordinator and one store")
        if replication < 1:
            raise ClusterError("--replication must be at least 1")
        replication = min(replication, stores)
        ports = iter(free_ports(metaroots + coordinators + stores))
        procs: list[ProcessSpec] = []
        for kind, count in (("metaroot", metaroots), ("coordinator", coordinators), ("store", stores)):
            for i in range(1, count + 1):
                name = f"{kind}-{i}"
                data = str(self.root / "data" / name) if kind != "coordinator" else ""
                procs.append(ProcessSpec(name, kind, i, f"127.0.0.1:{next(ports)}", data))
        spec = ClusterSpec(
            cluster_id=f"nokv-{secrets.token_hex(4)}",
            secret=secrets.token_hex(16),
            replication=replication,
            processes=procs,
        )
        self.save(spec)
        return spec

    # ---- processes -----------------------------------------------------------------------

    def command(self, spec: ClusterSpec, proc: ProcessSpec) -> list[str]:
        base = [sys.executable, "-m", "nokvpy.cli.main", proc.kind, "serve", "--id", str(proc.node_id),
                "--listen", proc.address, "--cluster-id", spec.cluster_id, "--enable-failpoints"]
        if proc.kind == "metaroot":
            for peer in spec.of_kind("metaroot"):
                base += ["--peer", f"{peer.node_id}={peer.address}"]
            base += ["--data", proc.data_dir]
        elif proc.kind == "coordinator":
            base += ["--metaroot", ",".join(spec.metaroot_addrs()),
                     "--replication", str(spec.replication)]
        else:
            base += ["--coordinator", ",".join(spec.coordinator_addrs()), "--data", proc.data_dir]
        return base + proc.extra_args

    def pid(self, name: str) -> int | None:
        """The pid of a running process of this cluster, None when it is not running (a pid
        file left behind by a crash, or whose pid now belongs to another program, is stale)."""
        try:
            pid = int(self.pid_path(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and self._is_ours(pid, name) else None

    def _is_ours(self, pid: int, name: str) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return True  # no /proc (or no permission): trust the pid file
        try:
            spec = self.load()
            address = spec.get(name).address.encode()
        except ClusterError:
            return b"nokvpy.cli.main" in argv
        return any(argv[i] == b"--listen" and argv[i + 1] == address for i in range(len(argv) - 1))

    def last_log_line(self, name: str) -> str:
        """The last non-empty line of a process's log ("" when there is none)."""
        try:
            with open(self.log_path(name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def start(self, spec: ClusterSpec, proc: ProcessSpec, env: dict[str, str] | None = None) -> int:
        if (pid := self.pid(proc.name)) is not None:
            return pid
        (self.root / "pids").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ)
        child_env["NOKV_CLUSTER_SECRET"] = spec.secret
        child_env.update(env or {})
        with open(self.log_path(proc.name), "ab") as log:
            child = subprocess.Popen(
                self.command(spec, proc),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env,
                start_new_session=True,  # a Ctrl-C in the terminal does not reach the cluster
            )
        self.pid_path(proc.name).write_text(str(child.pid))
        return child.pid

    def signal(self, name: str, sig: int) -> int | None:
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, sig)
        return pid

    def kill(self, name: str) -> int | None:
        """kill -9, as a crash: the pid file is removed, the data stays."""
        pid = self.signal(name, signal.SIGKILL)
        if pid is not None:
            wait_gone(pid, 5.0)
        self.pid_path(name).unlink(missing_ok=True)
        return pid

    def stop(self, name: str, grace: float = 5.0) -> int | None:
        """SIGTERM (graceful: grants sealed), then SIGKILL after `grace` seconds."""
        pid = self.pid(name)
        if pid is None:
            self.pid_path(name).unlink(missing_ok=True)
            return None
        try:
            os.kill(pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not wait_gone(pid, grace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_gone(pid, 5.0)
        self.pid_path(name).unlink(missing_ok=True)
        return pid

    def stop_all(self, spec: ClusterSpec, grace: float = 5.0) -> list[str]:
        stopped = []
        # stores first, metaroot last: nothing tries to publish into a dead root
        for proc in reversed(spec.processes):
            if self.stop(proc.name, grace) is not None:
                stopped.append(proc.name)
        return stopped


def write_secret_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, readable by its owner only: the temporary file
    is created with mode 0600 (never chmod-ed later, so no other user can open it at any
    moment), synced, then renamed over `path`."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SECRET_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _restrict_old_file(path: Path) -> None:
    """A cluster file written before files were created 0600: take the group and world bits
    away (best effort: the file may belong to someone else)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & ~0o077)
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is dead for our purposes
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)
