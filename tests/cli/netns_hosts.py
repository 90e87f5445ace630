"""Hosts for multi-host tests: network namespaces on one machine, each with its own address.

`Hosts(n)` makes a bridge in the test's own network namespace and `n` namespaces, each joined
to the bridge by a veth pair and given an address of a /24 subnet nobody on this machine
routes (10.A.B.0/24, picked at random); the bridge has `.254`, so the test process reaches
every host. `popen(i, argv)` starts a process inside host i. Leaving the `with` kills every
process started there (by pid, SIGKILL, and waits for it), then deletes the namespaces and
the bridge (the veth pairs go with the namespaces). Needs root and iproute2: `unavailable()`
says why not, for a skip. (A uniquely named module: tests/ has no packages.)
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from pathlib import Path


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"nokv-probe-{os.getpid()}"
    made = ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", name, check=False)
    return None


def free_subnet(rng: random.Random) -> str:
    """A 10.A.B.0/24 that no route of this machine covers (overlapping one would misroute)."""
    routes = [line.split()[0] for line in ip("-4", "route", "show", "table", "all").stdout.splitlines()
              if line and line.split()[0][0].isdigit()]
    taken = []
    for r in routes:
        try:
            taken.append(ipaddress.ip_network(r, strict=False))
        except ValueError:
            continue
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise RuntimeError("no free 10.x.y.0/24 subnet")


class Hosts:
    def __init__(self, count: int, seed: int | None = None):
        self.count = count
        self.rng = random.Random(seed)
        self.tag = f"{os.getpid() % 100000}{self.rng.randrange(16 ** 3):03x}"
        self.bridge = f"nkb{self.tag}"
        self.names = [f"nokv-{self.tag}-{i}" for i in range(1, count + 1)]
        self.prefix = ""  # "10.A.B." once made
        self.procs: list[subprocess.Popen] = []

    def address(self, i: int) -> str:
        """The address of host i (1-based)."""
        return f"{self.prefix}{i}"

    def __enter__(self) -> Hosts:
        net = free_subnet(self.rng)
        self.prefix = net.rsplit(".", 1)[0] + "."
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.prefix}254/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i, ns in enumerate(self.names, start=1):
                veth = f"nkv{self.tag}{i}"
                ip("netns", "add", ns)
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", veth, "master", self.bridge)
                ip("link", "set", veth, "up")
                ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def popen(self, i: int, argv: list[str], *, env: dict[str, str], cwd: Path,
              log: Path) -> subprocess.Popen:
        """Start `argv` inside host i (`ip netns exec` execs it: the pid is the process's)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.names[i - 1], *argv], env=env,
                                    cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for ns in self.names:
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.bridge, check=False)

    def __exit__(self, *exc) -> None:
        self.close()
