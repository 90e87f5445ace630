"""`nokv metaroot add-peer --dir DIR` and `nokv metaroot remove-peer ID --dir DIR`.

Owns: changing the metaroot group of a local cluster one peer at a time, and what these
commands print (progress on stderr, the result on stdout, `--json`).

- add-peer: asks the metaroot leader for the membership (refused while a change is pending,
  or when cluster.json disagrees with it), takes the next id (above every id cluster.json or
  metaroot ever used: a removed id is never reused) and two free loopback ports, records the
  peer in cluster.json (`--join`) and starts it empty, adds it as a learner, waits until it
  applied the log up to the leader's commit index, promotes it to voter and waits until it
  applied its promotion. A refusal before the group knew of the peer undoes the start (the
  process is stopped, its entry and data dir removed): nothing changed.
- remove-peer: checks the id against the membership (unknown, already removed, last voter,
  another change pending: refused, nothing changed), proposes the removal, waits until the
  removed peer (if it runs) says it knows, then stops it and records it retired in
  cluster.json (never started again).

One command at a time per cluster directory (a lock on DIR/.metaroot-change.lock). Never
decides whether a change is safe: metaroot (metaroot.members) refuses what is not.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from nokvpy.cli.common import CliError, one_line_errors, remote_text
from nokvpy.cli.output import Progress, print_json
from nokvpy.client.admin import identity_for
from nokvpy.client.meta import MetaClient
from nokvpy.cluster.local import (
    ClusterError,
    ClusterSpec,
    LocalCluster,
    ProcessSpec,
    pid_alive,
    wait_gone,
)
from nokvpy.protocol.metaroot_rpc import (
    MetarootConfChangeReply,
    MetarootConfChangeRequest,
    MetarootStatus,
    MetarootStatusRequest,
)
from nokvpy.rpc import RemoteError, RpcClient

POLL = 0.2  # seconds between status polls
LOCK_FILE = ".metaroot-change.lock"  # in the cluster directory (flock)
REMOVED_NOTICE_WAIT = 5.0  # seconds a removed peer gets to say it knows, before it is stopped
# refusals of a conf change that mean "nothing was proposed"
REFUSED = {"invalid_change", "conf_change_pending", "already_member", "id_retired",
           "address_in_use", "not_a_learner", "learner_behind", "unknown_peer", "last_voter"}


def run(args) -> int:
    cluster = LocalCluster(Path(args.dir))
    cluster.load()  # ClusterError: "no cluster in DIR" (one line)
    with change_lock(cluster):
        spec = cluster.load()  # as it is now that no other change runs
        if args.action == "add-peer":
            return trio.run(add_peer, cluster, spec, args)
        return trio.run(remove_peer, cluster, spec, args)


@contextmanager
def change_lock(cluster: LocalCluster) -> Iterator[None]:
    """One metaroot change at a time per cluster directory (two add-peers would pick the
    same id, and one's undo would remove the other's entry and data dir)."""
    with open(cluster.root / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(f"another `nokv metaroot` change runs on {cluster.root}; try again "
                           "when it has finished") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Root:
    """The metaroot group of a local cluster, seen by an operator (the admin role)."""

    def __init__(self, spec: ClusterSpec, wait: float):
        self.rpc = RpcClient(identity_for(spec))
        self.meta = MetaClient(self.rpc, spec.metaroot_addrs(), timeout=wait)
        self.wait = wait

    async def status(self, addr: str, timeout: float = 1.0) -> MetarootStatus | None:
        try:
            return await self.rpc.call(addr, MetarootStatusRequest(), timeout=timeout)
        except Exception:  # noqa: BLE001 - "not answering" is the answer
            return None

    async def leader(self) -> MetarootStatus:
        """The leader's status (the newest term when two peers claim to lead)."""
        deadline = trio.current_time() + self.wait
        while True:
            found = [st for st in (await self.meta.status_all()).values()
                     if isinstance(st, MetarootStatus) and st.is_leader and not st.removed]
            if found:
                return max(found, key=lambda st: st.term)
            if trio.current_time() >= deadline:
                raise CliError(f"no metaroot leader answered within {self.wait:g}s "
                               f"(asked {', '.join(self.meta.addrs)})")
            await trio.sleep(POLL)

    async def change(self, kind: str, node_id: int, address: str = "") -> MetarootConfChangeReply:
        return await self.meta.call(MetarootConfChangeRequest(kind, node_id, address),
                                    timeout=self.wait)

    async def aclose(self) -> None:
        await self.rpc.aclose()


def members_of(st: MetarootStatus) -> set[int]:
    return set(st.voters) | set(st.learners)


def refused(exc: Exception) -> bool:
    return isinstance(exc, RemoteError) and exc.reason in REFUSED


async def poll(what: str, timeout: float, check) -> Any:
    """Call `check()` until it returns something truthy; CliError naming `what` after
    `timeout` seconds."""
    deadline = trio.current_time() + timeout
    while True:
        found = await check()
        if found:
            return found
        if trio.current_time() >= deadline:
            raise CliError(f"gave up after {timeout:g}s waiting for {what}")
        await trio.sleep(POLL)


# ---- add-peer -----------------------------------------------------------------------------


async def add_peer(cluster: LocalCluster, spec: ClusterSpec, args) -> int:
    progress = Progress("metaroot add-peer", enabled=not args.json)
    root = Root(spec, args.wait)
    try:
        with one_line_errors():
            st = await root.leader()
            if st.learners:
                raise CliError(f"metaroot-{st.learners[0]} is joining as a learner: a change "
                               "is pending (remove it with `nokv metaroot remove-peer "
                               f"{st.learners[0]}` or wait for its add-peer to finish)")
            listed = {p.node_id for p in spec.of_kind("metaroot") if not p.retired}
            if listed != members_of(st):
                raise CliError(f"{cluster.spec_path} lists metaroot peers {sorted(listed)} "
                               f"but the metaroot group has {sorted(members_of(st))}: "
                               "refusing to change a group it does not describe")
            used = {p.node_id for p in spec.of_kind("metaroot")} | members_of(st) | \
                set(st.removed_ids)
            node_id = max(used) + 1
            try:
                proc = cluster.add_metaroot(spec, node_id)
            except ClusterError as exc:
                raise CliError(str(exc)) from None
            progress.update(f"{proc.name}: starting empty at {proc.address}")
            await start_and_add(cluster, spec, root, proc, progress)
            result = await catch_up_and_promote(root, proc, progress)
    except CliError:
        if progress.last is not None:  # a refusal before any progress is one line
            progress.done("failed")
        raise
    finally:
        await root.aclose()
    progress.done(f"{proc.name} is a voter")
    pid = cluster.pid(proc.name)
    out = {"name": proc.name, "peer_id": node_id, "address": proc.address, "pid": pid,
           "data_dir": proc.data_dir, "metrics_address": proc.metrics_address,
           "voters": list(result.voters), "learners": list(result.learners),
           "conf_index": result.conf_index, "action": "added"}
    if args.json:
        print_json(out)
    else:
        print(f"{proc.name}: added (peer id {node_id}, {proc.address}, pid {pid}, data "
              f"{proc.data_dir}); metaroot voters now {', '.join(map(str, result.voters))}")
    return 0


async def start_and_add(cluster: LocalCluster, spec: ClusterSpec, root: Root, proc: ProcessSpec,
                        progress: Progress) -> None:
    """Start the new peer and add it as a learner; undo everything if the group refused
    (or never learned of) it."""
    pid = None
    try:
        pid = cluster.start(spec, proc)

        async def answers() -> bool:
            # (not cluster.pid: right after exec the process's cmdline may read empty)
            if not pid_alive(pid):
                last = cluster.last_log_line(proc.name)
                raise CliError(f"{proc.name} exited during start-up" + (f": {last}" if last else ""))
            return await root.status(proc.address) is not None

        await poll(f"{proc.name} to answer", root.wait, answers)
        progress.update(f"{proc.name}: adding as a learner (it receives the log, it does not "
                        "vote)")
        try:
            await root.change("add_learner", proc.node_id, proc.address)
        except Exception as exc:
            # a retried request (the first one's outcome unknown) may find itself applied:
            # the leader's membership says
            if proc.node_id not in members_of(await root.leader()):
                if refused(exc):
                    raise CliError(f"metaroot refused to add {proc.name}: "
                                   f"{remote_text(exc)}") from None
                raise
    except BaseException:
        if pid is not None:
            stop_pid(pid)
        cluster.pid_path(proc.name).unlink(missing_ok=True)
        cluster.forget(spec, proc.name)
        shutil.rmtree(proc.data_dir, ignore_errors=True)
        raise


async def catch_up_and_promote(root: Root, proc: ProcessSpec,
                               progress: Progress) -> MetarootConfChangeReply:
    name = f"{proc.name} (a learner: `nokv metaroot remove-peer {proc.node_id}` undoes the add)"
    target = (await root.leader()).raft_commit

    async def caught_up() -> bool:
        st = await root.status(proc.address)
        if st is None:
            return False
        progress.update(f"{proc.name}: catching up, raft index {st.raft_applied} of {target}")
        return st.raft_applied >= target and proc.node_id in st.learners + st.voters

    await poll(f"{name} to catch up to raft index {target}", root.wait, caught_up)
    progress.update(f"{proc.name}: caught up; promoting to voter")

    async def promoted() -> MetarootConfChangeReply | None:
        try:
            return await root.change("promote", proc.node_id)
        except RemoteError as exc:
            if exc.reason == "learner_behind":
                return None
            if exc.reason == "not_a_learner" and proc.node_id in (await root.leader()).voters:
                return await root.leader()  # a retried promotion that had applied
            raise

    await poll(f"{name} to be promoted", root.wait, promoted)

    async def knows() -> MetarootStatus | None:
        st = await root.status(proc.address)
        return st if st is not None and proc.node_id in st.voters else None

    st = await poll(f"{proc.name} to apply its promotion", root.wait, knows)
    return MetarootConfChangeReply(st.conf_index, st.voters, st.learners, st.peers,
                                   st.removed_ids)


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process we started, SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, wait):
            return


# ---- remove-peer --------------------------------------------------------------------------


async def remove_peer(cluster: LocalCluster, spec: ClusterSpec, args) -> int:
    node_id = args.peer_id
    name = f"metaroot-{node_id}"
    progress = Progress("metaroot remove-peer", enabled=not args.json)
    root = Root(spec, args.wait)
    try:
        with one_line_errors():
            st = await root.leader()
            members = members_of(st)
            if node_id not in members:
                if node_id in st.removed_ids:
                    raise CliError(f"{name} was removed from the metaroot group already")
                raise CliError(f"no metaroot peer {node_id} (members: "
                               f"{', '.join(map(str, sorted(members)))})")
            if st.voters == (node_id,):
                raise CliError(f"{name} is the last voter of the metaroot group: removing it "
                               "would leave a group that can never elect a leader")
            pending = [i for i in st.learners if i != node_id]
            if pending:
                raise CliError(f"metaroot-{pending[0]} is joining as a learner: a change is "
                               "pending (finish or undo it first)")
            proc = next((p for p in spec.of_kind("metaroot") if p.node_id == node_id), None)
            addr = st.peers.get(node_id, "")
            progress.update(f"{name}: removing from the metaroot group")
            try:
                reply = await root.change("remove", node_id)
            except RemoteError as exc:
                now = await root.leader()  # a retried removal may find itself applied
                if node_id not in now.removed_ids:
                    if refused(exc):
                        raise CliError(f"metaroot refused to remove {name}: "
                                       f"{remote_text(exc)}") from None
                    raise
                reply = MetarootConfChangeReply(now.conf_index, now.voters, now.learners,
                                                now.peers, now.removed_ids)
            if addr and (proc is None or cluster.pid(proc.name) is not None):
                progress.update(f"{name}: removed; waiting until it knows")

                async def knows() -> bool:
                    st = await root.status(addr)
                    return st is None or st.removed

                try:
                    await poll(f"{name} to apply its removal", REMOVED_NOTICE_WAIT, knows)
                except CliError:
                    progress.update(f"{name} did not confirm; it learns of its removal from "
                                    "the others when it next starts")
    except CliError:
        if progress.last is not None:  # a refusal before any progress is one line
            progress.done("failed")
        raise
    finally:
        await root.aclose()
    stopped = None
    if proc is not None:
        stopped = cluster.retire(spec, proc.name)
    progress.done(f"{name} removed")
    out = {"name": name, "peer_id": node_id, "stopped_pid": stopped,
           "voters": list(reply.voters), "learners": list(reply.learners),
           "removed_ids": list(reply.removed_ids), "conf_index": reply.conf_index,
           "action": "removed"}
    if args.json:
        print_json(out)
    else:
        print(f"{name}: removed from the metaroot group" +
              (f"; stopped (pid {stopped})" if stopped else "") +
              ("; cluster.json records it retired (never started again)" if proc else "") +
              f"; metaroot voters now {', '.join(map(str, reply.voters))}")
    return 0
