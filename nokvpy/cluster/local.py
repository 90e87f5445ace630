"""A local multi-process cluster under one directory.

Owns: the layout of a cluster directory (`cluster.json`, `pids/`, `logs/`, `data/`), starting
and stopping the `nokv ... serve` processes it describes, and finding them again by name.
`add_store` grows a cluster by one store (`nokv cluster add-store`, jepsen-lite's `join`);
`retire` records a store retired in root, or a metaroot peer removed from the metaroot group
(`retired` in cluster.json), and stops it: it is never started again. `add_metaroot` records
a new metaroot peer that joins the running group (`--join`; `nokv metaroot add-peer`).
Never talks to a running process over RPC (callers do that with the addresses it records) and
never touches files outside its directory.

Layout::

    DIR/cluster.json        cluster id, secret, every process: name, kind, id, address,
                            metrics address, args (mode 0600: it holds the secret)
    DIR/pids/NAME.pid       pid of a running process (removed when it is stopped)
    DIR/logs/NAME.log       stdout and stderr of the process
    DIR/data/NAME/          LMDB environments of metaroot peers and stores
    DIR/tls/                with `create(tls=True)` (`nokv cluster up --tls`): ca.pem (a
                            throwaway CA), NAME.pem + NAME.key for every process and
                            admin.pem + admin.key for the local CLI and clients (keys 0600)

Every process serves Prometheus metrics on its own loopback port (`metrics_address`, passed as
`--metrics-addr`; plain HTTP, also in a TLS cluster). A cluster.json written before metrics
has none: it still loads, and `cluster up` gives its processes metrics ports when none of
them runs (`add_metrics_ports`).

A TLS cluster records its files in cluster.json (`tls`: dir, ca, and the admin client's cert
and key); loading it makes them the TLS of every RpcServer / RpcClient of that cluster id in
this process (`nokvpy.rpc.tls.configure`), so the CLI, `Client.from_cluster_dir` and
jepsen-lite use TLS without being told.
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
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nokvpy.cluster.ports import ClusterError, check_host, host_ports, join

KINDS = ("metaroot", "coordinator", "store")
SECRET_FILE_MODE = 0o600  # files holding the cluster secret or a private key
TLS_VALID_DAYS = 5  # certificates of `cluster up --tls`: a throwaway cluster's
TLS_RENEW_WITHIN = timedelta(days=1)  # `cluster up` of a stopped cluster reissues them then
ADMIN_TLS_NAME = "admin"  # the certificate of the local CLI / admin client
LOOPBACK = "127.0.0.1"  # where a local cluster's processes listen unless `--host` says otherwise


@dataclass
class ProcessSpec:
    name: str  # metaroot-1, coordinator-2, store-3
    kind: str
    node_id: int
    address: str
    data_dir: str = ""
    extra_args: list[str] = field(default_factory=list)
    metrics_address: str = ""  # host:port of its metrics endpoint ("": none, an older file)
    retired: bool = False  # a retired store / removed metaroot peer: never started again

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}/metrics" if self.metrics_address else ""


@dataclass
class ClusterSpec:
    cluster_id: str
    secret: str
    replication: int
    processes: list[ProcessSpec]
    # TLS files (absolute paths): {"dir", "ca", "cert", "key"} (cert and key: the admin
    # client's); None: plain TCP
    tls: dict[str, str] | None = None
    # the address every process listens on and advertises (`cluster up --host`); an older
    # cluster.json has none: loopback
    host: str = "127.0.0.1"

    def tls_files(self, name: str = ADMIN_TLS_NAME) -> dict[str, str] | None:
        """{"cert", "key", "ca"} of process `name` (default: the admin client), or None."""
        if not self.tls:
            return None
        if name == ADMIN_TLS_NAME:
            return {"cert": self.tls["cert"], "key": self.tls["key"], "ca": self.tls["ca"]}
        directory = Path(self.tls["dir"])
        return {"cert": str(directory / f"{name}.pem"), "key": str(directory / f"{name}.key"),
                "ca": self.tls["ca"]}

    def of_kind(self, kind: str) -> list[ProcessSpec]:
        return [p for p in self.processes if p.kind == kind]

    def get(self, name: str) -> ProcessSpec:
        for p in self.processes:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.processes)
        raise ClusterError(f"no process named {name!r} in this cluster (have: {names})")

    def serving(self) -> ClusterSpec:
        """This spec without its retired processes (what `cluster up` starts and waits for)."""
        return replace(self, processes=[p for p in self.processes if not p.retired])

    def metaroot_addrs(self) -> list[str]:
        return [p.address for p in self.of_kind("metaroot") if not p.retired]

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
            spec = ClusterSpec(processes=procs, **raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ClusterError(f"{self.spec_path} is not a valid cluster file: {exc}") from None
        use_tls(spec)
        return spec

    def save(self, spec: ClusterSpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_secret_file(self.spec_path, json.dumps(asdict(spec), indent=2).encode())

    # ---- creation ------------------------------------------------------------------------

    def create(
        self, metaroots: int = 1, coordinators: int = 1, stores: int = 3, replication: int = 3,
        tls: bool = False, host: str = LOOPBACK,
    ) -> ClusterSpec:
        if self.exists():
            raise ClusterError(f"a cluster already exists in {self.root}")
        host = check_host(host)
        if metaroots not in (1, 3, 5):
            raise ClusterError("--metaroot must be 1, 3 or 5")
        if coordinators < 1 or stores < 1:
            raise ClusterError("need at least one coordinator and one store")
        if replication < 1:
            raise ClusterError("--replication must be at least 1")
        replication = min(replication, stores)
        # one RPC port and one metrics port per process, all distinct
        ports = iter(host_ports(host, 2 * (metaroots + coordinators + stores)))
        procs: list[ProcessSpec] = []
        for kind, count in (("metaroot", metaroots), ("coordinator", coordinators), ("store", stores)):
            for i in range(1, count + 1):
                name = f"{kind}-{i}"
                data = str(self.root / "data" / name) if kind != "coordinator" else ""
                procs.append(ProcessSpec(name, kind, i, join(host, next(ports)), data,
                                         metrics_address=join(host, next(ports))))
        spec = ClusterSpec(
            cluster_id=f"nokv-{secrets.token_hex(4)}",
            secret=secrets.token_hex(16),
            replication=replication,
            processes=procs,
            host=host,
        )
        if tls:
            self.root.mkdir(parents=True, exist_ok=True)
            spec.tls = issue_tls(self.root / "tls", spec)
        self.save(spec)
        use_tls(spec)
        return spec

    def add_metrics_ports(self, spec: ClusterSpec) -> list[str]:
        """Give every process without a metrics address (a cluster.json written before
        metrics) a free loopback port, when none of the cluster's processes runs (a running
        one would not serve it); saves the file. Returns the names that got one."""
        missing = [p for p in spec.processes if not p.metrics_address]
        if not missing or any(self.pid(p.name) is not None for p in spec.processes):
            return []
        taken = {p.address for p in spec.processes} | {p.metrics_address for p in spec.processes}
        ports = [port for port in host_ports(spec.host, 2 * len(missing))
                 if join(spec.host, port) not in taken][: len(missing)]
        if len(ports) < len(missing):
            return []
        for proc, port in zip(missing, ports, strict=True):
            proc.metrics_address = join(spec.host, port)
        self.save(spec)
        return [p.name for p in missing]

    def add_store(self, spec: ClusterSpec) -> ProcessSpec:
        """Add a store to `spec` (the next free store id, two free loopback ports, its data
        directory) and save cluster.json; the caller starts it (`start`). A store id is
        never reused: a retired store keeps its entry. Refused for a TLS cluster (its CA
        key is not kept, so no certificate can be issued for a new process)."""
        if spec.tls:
            raise ClusterError("adding a store to a TLS cluster is not supported: its CA key "
                               "is not kept, so the new store could get no certificate")
        node_id = max((p.node_id for p in spec.of_kind("store")), default=0) + 1
        name = f"store-{node_id}"
        taken = {p.address for p in spec.processes} | \
            {p.metrics_address for p in spec.processes}
        ports = [port for port in host_ports(spec.host, 4) if join(spec.host, port) not in taken][:2]
        if len(ports) < 2:
            raise ClusterError(f"no free ports on {spec.host} for a new store")
        proc = ProcessSpec(name, "store", node_id, join(spec.host, ports[0]),
                           str(self.root / "data" / name),
                           metrics_address=join(spec.host, ports[1]))
        spec.processes.append(proc)
        self.save(spec)
        return proc

    def retire(self, spec: ClusterSpec, name: str, grace: float = 5.0) -> int | None:
        """Record that store `name` was retired (rooted STORE_RETIRED: it may never host a
        replica again) and stop it; `start` refuses it from now on. Returns the pid stopped."""
        proc = spec.get(name)
        if proc.kind not in ("store", "metaroot"):
            raise ClusterError(f"{name} is not a store or a metaroot peer")
        proc.retired = True
        self.save(spec)
        return self.stop(name, grace)

    def add_metaroot(self, spec: ClusterSpec, node_id: int) -> ProcessSpec:
        """Record metaroot peer `node_id` (two free loopback ports, its data directory; it
        starts with `--join`: empty, waiting to be added to the running group) and save
        cluster.json; the caller starts it. Refused for a TLS cluster (see add_store)."""
        if spec.tls:
            raise ClusterError("adding a metaroot peer to a TLS cluster is not supported: its "
                               "CA key is not kept, so the new peer could get no certificate")
        name = f"metaroot-{node_id}"
        if any(p.name == name for p in spec.processes):
            raise ClusterError(f"{name} is already in {self.spec_path}")
        taken = {p.address for p in spec.processes} | \
            {p.metrics_address for p in spec.processes}
        ports = [port for port in host_ports(spec.host, 4) if join(spec.host, port) not in taken][:2]
        if len(ports) < 2:
            raise ClusterError(f"no free ports on {spec.host} for a new metaroot peer")
        proc = ProcessSpec(name, "metaroot", node_id, join(spec.host, ports[0]),
                           str(self.root / "data" / name), extra_args=["--join"],
                           metrics_address=join(spec.host, ports[1]))
        spec.processes.append(proc)
        self.save(spec)
        return proc

    def forget(self, spec: ClusterSpec, name: str) -> None:
        """Drop process `name` from cluster.json (undoing an add that was refused)."""
        spec.processes = [p for p in spec.processes if p.name != name]
        self.save(spec)

    def renew_tls(self, spec: ClusterSpec, within: timedelta = TLS_RENEW_WITHIN) -> bool:
        """Issue a new CA and certificates when one of the cluster's expires within `within`
        (or is missing) and none of its processes runs; True when it did."""
        if not spec.tls or any(self.pid(p.name) is not None for p in spec.processes):
            return False
        if tls_expiry(spec) - datetime.now(UTC) > within:
            return False
        spec.tls = issue_tls(self.root / "tls", spec)
        self.save(spec)
        use_tls(spec, reload=True)
        return True

    # ---- processes -----------------------------------------------------------------------

    def command(self, spec: ClusterSpec, proc: ProcessSpec) -> list[str]:
        base = [sys.executable, "-m", "nokvpy.cli.main", proc.kind, "serve", "--id", str(proc.node_id),
                "--listen", proc.address, "--cluster-id", spec.cluster_id, "--enable-failpoints"]
        if proc.kind == "metaroot":
            # seeds a fresh data dir only: an existing one serves with its own membership
            for peer in spec.of_kind("metaroot"):
                if not peer.retired:
                    base += ["--peer", f"{peer.node_id}={peer.address}"]
            base += ["--data", proc.data_dir]
        elif proc.kind == "coordinator":
            base += ["--metaroot", ",".join(spec.metaroot_addrs()),
                     "--replication", str(spec.replication)]
        else:
            base += ["--coordinator", ",".join(spec.coordinator_addrs()), "--data", proc.data_dir]
        if proc.metrics_address:
            base += ["--metrics-addr", proc.metrics_address]
        tls = spec.tls_files(proc.name)
        if tls:
            base += ["--tls-cert", tls["cert"], "--tls-key", tls["key"], "--tls-ca", tls["ca"]]
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
        if proc.retired:
            how = ("`nokv metaroot add-peer`" if proc.kind == "metaroot"
                   else "`nokv cluster add-store`")
            raise ClusterError(f"{proc.name} is retired: it cannot be started again (add a "
                               f"new one with {how})")
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


def use_tls(spec: ClusterSpec, reload: bool = False) -> None:
    """Make the admin client's TLS files of `spec` the TLS of every RpcServer and RpcClient of
    its cluster id in this process (nothing for a plain cluster). `reload`: drop contexts
    built from the files before they were reissued."""
    files = spec.tls_files()
    if files is None:
        return
    from nokvpy.rpc import tls

    if reload:
        tls.configure(None, spec.cluster_id)
    tls.configure(files, spec.cluster_id)


def issue_tls(directory: Path, spec: ClusterSpec) -> dict[str, str]:
    """A throwaway CA and, signed by it, a certificate and key for every process of `spec`
    and for the admin client, in `directory` (mode 0700); keys are written 0600 (created with
    that mode, see write_secret_file). Certificates name 127.0.0.1 (and the host of each
    process's address) and `localhost`, allow both TLS client and server use, and are valid
    for TLS_VALID_DAYS. Returns cluster.json's `tls` entry. Files of an earlier issue are
    replaced (each key by a new file, renamed over the old one)."""
    import ipaddress

    # certificate generation for local TLS clusters only: the RPC layer uses the standard
    # library's ssl; `cryptography` is imported here, when `cluster up --tls` needs it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.now(UTC)
    not_before, not_after = now - timedelta(minutes=5), now + timedelta(days=TLS_VALID_DAYS)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nokvpy"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(path: Path, data: bytes, secret: bool) -> None:
        if secret:
            write_secret_file(path, data)
        else:
            path.write_bytes(data)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"nokvpy local CA {spec.cluster_id}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)

    hosts = {"127.0.0.1"} | {p.address.rpartition(":")[0].strip("[]") for p in spec.processes}
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in sorted(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    for holder in [p.name for p in spec.processes] + [ADMIN_TLS_NAME]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(f"{holder} {spec.cluster_id}"))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write(directory / f"{holder}.key", key_pem(key), secret=True)
        write(directory / f"{holder}.pem", cert.public_bytes(serialization.Encoding.PEM),
              secret=False)
    return {"dir": str(directory), "ca": str(ca_path),
            "cert": str(directory / f"{ADMIN_TLS_NAME}.pem"),
            "key": str(directory / f"{ADMIN_TLS_NAME}.key")}


def tls_expiry(spec: ClusterSpec) -> datetime:
    """When the first of a TLS cluster's certificates expires (now, when one is missing or
    unreadable: time to issue new ones)."""
    from cryptography import x509

    now = datetime.now(UTC)
    paths = [Path(spec.tls["ca"])] + [Path(spec.tls_files(n)["cert"]) for n in
                                      [p.name for p in spec.processes] + [ADMIN_TLS_NAME]]
    first = None
    for path in paths:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return now
        expires = getattr(cert, "not_valid_after_utc", None) or \
            cert.not_valid_after.replace(tzinfo=UTC)  # cryptography < 42
        if first is None or expires < first:
            first = expires
    return first or now


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
