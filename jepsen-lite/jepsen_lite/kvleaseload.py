"""The ``kvlease`` workload: keys that live only while their lease does, read as leases come
and go.

Owns: the lessees (:class:`KvLeaseSession`, ``lessees`` of them, default 4, each on its own
client for the whole run), the readers' key choice, the key layout and the summary of a
run's leases. A lessee, over and over: ``grant(ttl)`` (default 3 s) a lease it names
``L<n>`` (the label is the ``key`` of its ``grant``, ``keep-alive`` and ``revoke``
operations; the id is in the grant's completion), one keep-alive at once (as etcd's
clients do), then ``put`` the lease's ``--keys`` keys ``l/<n>/<j>`` with unique integer
values and ``lease=`` the lease (the label in the invoke's ``lease`` field); keeps it alive
every TTL / 3 for 0 to ``keep_max`` seconds (default 2 TTL, seeded), then revokes it
(``revoke_share``, default 0.3) or lets it expire, and starts the next. The readers are the
run's client workers: each operation is a linearizable ``get`` of a key of a lease still of
interest (kept alive, or ended less than TTL + ``bound`` + ``linger`` seconds ago), a lease
chosen first so a lease with many keys is not favoured. Every operation is recorded with
its invoke and completion (monotonic, the history's clock) and ``ok`` / ``fail`` / ``info``
as :func:`~jepsen_lite.workloads.perform` maps errors; ``LeaseNotFoundError`` (from a
keep-alive, or from a put's lease check) is a definite ``fail`` labelled
``lease_not_found``.

Beside them a sampler asks the coordinators every ``sample_every`` seconds which store
leads the region of the lease records (the authority, raftstore/leases.py) and the one of
the keys, and writes each change to ``RUN/kvlease-events.jsonl`` (after a ``config``
record), so the check can count the fault windows that hit them. The nemesis reaches both
through its ``:leader`` target (``--leader-share``): :meth:`KvLeaseWorkload.split_keys`
are the keys' prefix and the lease records' prefix.

The end (:meth:`KvLeaseSession.finish`, after the heal): the lessees stop keeping anything
alive; once TTL + ``bound`` + 0.5 s passed since the last keep-alive, every key written is
read once more (``"final": true``, failed reads retried for up to ``final_timeout`` s) and
the leases are listed once (``leases``): by then no key of this run may be found.

Options (``--workload-option NAME=VALUE``): ``ttl`` (s, default 3), ``bound`` (s a key may
outlive TTL past its last keep-alive, default 2), ``failover`` (1: judge by the
documented failover rules, a new authority restarts the TTL and a new leader of the keys'
region sweeps afresh; default 0, the strict bound), ``clock_drift`` (default 0.02 of the TTL), ``lessees``, ``keep_max``,
``revoke_share``, ``linger``, ``sample_every``, ``final_timeout``. ``--keys`` is the number
of keys per lease. The limits go to the ``config`` record, where the check reads them.

Never decides whether what was read is right (:mod:`.kvleasecheck`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .kvleasecheck import KVLEASE_EVENTS, check_run_dir
from .workloads import (
    WORKLOADS,
    Op,
    Outcome,
    RecordingSession,
    Workload,
    decode_int,
    encode_int,
    perform,
)

LEASE_PREFIX = b"\xff\xfflease/"  # nokvpy.protocol.leases.LEASE_PREFIX: the records
KEY_PREFIX = "l/"
LESSEE_PROCESS_BASE = 4_000_000  # a lessee's operations (a fresh process after each info)
FINAL_PROCESS_BASE = 4_900_000  # the reads and the listing of the end
LESSEE_CLIENT_BASE = 300  # client identity index of lessee i (the sampler: 299)


@dataclass
class LeaseState:
    label: str
    keys: list[str]
    lease_id: int | None = None
    ended: float = float("inf")  # trio time the lessee stopped keeping it alive
    outcome: str = "kept"  # kept / expire / revoked / revoke_unknown / lost / not_granted


class KvLeaseWorkload(Workload):
    """Linearizable reads of keys written with leases that lessees grant, keep alive, let
    expire and revoke (:class:`KvLeaseSession`)."""

    name = "kvlease"
    model = None  # the keys vanish by expiry: checks["kvlease"], not linearizability

    def __init__(self, *, keys: int = 2, seed: int = 0, ttl: float = 3.0, bound: float = 2.0,
                 lessees: int = 4, keep_max: float | None = None, revoke_share: float = 0.3,
                 linger: float = 2.0, clock_drift: float = 0.02, sample_every: float = 0.5,
                 final_timeout: float = 30.0, failover: int = 0):
        super().__init__(keys=keys, seed=seed)
        if keys < 1 or lessees < 1 or not 1.0 <= ttl <= 86400 or bound < 0:
            raise ValueError("the kvlease workload needs keys, lessees >= 1, 1 <= ttl <= "
                             "86400 and bound >= 0")
        self.ttl = float(ttl)
        self.bound = float(bound)
        self.n_lessees = int(lessees)
        self.keep_max = float(2 * ttl if keep_max is None else keep_max)
        self.revoke_share = float(revoke_share)
        self.linger = float(linger)
        self.clock_drift = float(clock_drift)
        self.sample_every = float(sample_every)
        self.final_timeout = float(final_timeout)
        self.failover = bool(failover)
        self._labels = itertools.count()
        self.leases: dict[str, LeaseState] = {}  # every lease of the run, by label
        self._key_lease: dict[str, int] = {}  # key -> the id of the lease it is written with
        self.last_activity = -float("inf")  # trio time the latest lessee operation ended

    def new_lease(self) -> LeaseState:
        n = next(self._labels)
        state = LeaseState(f"L{n:05d}", [f"{KEY_PREFIX}{n:05d}/{j}" for j in range(self.n_keys)])
        self.leases[state.label] = state
        return state

    def keys(self) -> list[str]:
        return [k for state in self.leases.values() for k in state.keys]

    def split_keys(self) -> list[bytes]:
        """``:leader`` targets (and churn's split points): the keys' region, the records'."""
        return [KEY_PREFIX.encode(), LEASE_PREFIX]

    def final_keys(self) -> list[str]:
        return []  # the session reads every key at its end

    def interesting(self, now: float) -> list[LeaseState]:
        """Leases whose keys the readers read: granted, and kept alive or ended recently."""
        horizon = self.ttl + self.bound + self.linger
        return [s for s in self.leases.values()
                if s.lease_id is not None and now <= s.ended + horizon]

    def next_op(self, rng: random.Random, state: dict) -> Op:
        leases = self.interesting(trio.current_time())
        if not leases:
            return Op("read", f"{KEY_PREFIX}00000/0", None, False)
        return Op("read", rng.choice(rng.choice(leases).keys), None, False)

    async def invoke(self, client: Any, op: Op, timeout: float) -> Outcome:
        from nokvpy.client import LeaseNotFoundError

        try:
            if op.f == "read":
                return Outcome("ok", decode_int(await client.get(op.key.encode(),
                                                                 timeout=timeout)))
            if op.f == "grant":
                lease_id = await client.grant(op.value, timeout=timeout)
                self.leases[op.key].lease_id = lease_id
                return Outcome("ok", op.value, {"lease_id": lease_id})
            if op.f == "keep-alive":
                ttl = await client.keep_alive(op.value, timeout=timeout)
                return Outcome("ok", op.value, {"ttl": ttl})
            if op.f == "revoke":
                await client.revoke(op.value, timeout=timeout)
                return Outcome("ok", op.value)
            if op.f == "put":
                index = await client.put(op.key.encode(), encode_int(op.value), timeout=timeout,
                                         lease=self._key_lease[op.key])
                return Outcome("ok", op.value, {"applied_index": index})
            if op.f == "leases":
                ids = await client.leases(timeout=timeout)
                labels = sorted(s.label for s in self.leases.values() if s.lease_id in ids)
                return Outcome("ok", labels, {"others": len(ids) - len(labels)})
        except LeaseNotFoundError as exc:
            return Outcome("fail", op.value, {"error": "lease_not_found",
                                              "message": str(exc)[:200]})
        raise ValueError(f"kvlease workload has no f {op.f!r}")

    def session(self, new_client: Callable[[int], Any], recorder: Any, run_dir: str | Path,
                log: Callable[[str], None], op_timeout: float = 2.0) -> KvLeaseSession:
        return KvLeaseSession(self, new_client, recorder, Path(run_dir), log, op_timeout)

    @staticmethod
    def run_checks(history: Any, run_dir: str | Path) -> dict[str, dict]:
        return {"kvlease": check_run_dir(history, run_dir)}


@dataclass
class Lessee:
    index: int
    process: int
    rng: random.Random
    client: Any = None


class KvLeaseSession(RecordingSession):
    """The lessees and the leader sampler of one run: ``async with`` starts them (before the
    readers); :meth:`finish` stops the lessees and reads every key once more; leaving the
    block stops whatever still runs."""

    def __init__(self, workload: KvLeaseWorkload, new_client: Callable[[int], Any],
                 recorder: Any, run_dir: Path, log: Callable[[str], None], op_timeout: float):
        super().__init__(new_client, run_dir / KVLEASE_EVENTS)
        self.workload = workload
        self.recorder = recorder
        self.log = log
        self.op_timeout = op_timeout
        self.lessees = [Lessee(i, LESSEE_PROCESS_BASE + i,
                               random.Random(f"{workload.seed}-kvlease-{i}"))
                        for i in range(workload.n_lessees)]
        self._stopping = False
        self._lessees_done = trio.Event()
        self._running = 0

    async def __aenter__(self) -> KvLeaseSession:
        wl = self.workload
        nursery = await self._open({"type": "config", "ttl": wl.ttl, "bound": wl.bound,
                                    "clock_drift": wl.clock_drift, "lessees": wl.n_lessees,
                                    "keys_per_lease": wl.n_keys, "keep_max": wl.keep_max,
                                    "revoke_share": wl.revoke_share, "failover": wl.failover})
        nursery.start_soon(self._sample_leaders)
        self._running = len(self.lessees)
        for lessee in self.lessees:
            lessee.client = self._client(LESSEE_CLIENT_BASE + lessee.index)
            nursery.start_soon(self._run_lessee, lessee)
        self.log(f"kvlease: {len(self.lessees)} lessees, TTL {wl.ttl:g} s, {wl.n_keys} keys "
                 f"per lease, bound {wl.bound:g} s")
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        await self._close()
        return False

    # ---- the lessees ---------------------------------------------------------------------

    async def _op(self, lessee: Lessee, op: Op, **extra: Any) -> Outcome:
        outcome = await perform(self.workload, lessee.client, self.recorder, lessee.process, op,
                                self.op_timeout, **extra)
        self.workload.last_activity = trio.current_time()
        if outcome.type == "info":
            lessee.process += len(self.lessees)
        return outcome

    async def _keep_alive(self, lessee: Lessee, state: LeaseState) -> bool:
        """Send one keep-alive; whether the lease was found gone."""
        outcome = await self._op(lessee, Op("keep-alive", state.label, state.lease_id, True))
        return outcome.extra.get("error") == "lease_not_found"

    async def _run_lessee(self, lessee: Lessee) -> None:
        try:
            while not self._stopping:
                await self._one_lease(lessee)
        finally:
            self._running -= 1
            if self._running == 0:
                self._lessees_done.set()

    async def _one_lease(self, lessee: Lessee) -> None:
        wl, rng = self.workload, lessee.rng
        state = wl.new_lease()
        grant = await self._op(lessee, Op("grant", state.label, wl.ttl, True))
        if grant.type != "ok":
            state.outcome, state.ended = "not_granted", trio.current_time()
            await trio.sleep(0.3)
            return
        sent = trio.current_time()
        lost = await self._keep_alive(lessee, state)
        for key in state.keys:
            if lost or self._stopping:
                break
            wl._key_lease[key] = state.lease_id
            put = await self._op(lessee, Op("put", key, wl.next_value(), True), lease=state.label)
            lost = put.extra.get("error") == "lease_not_found"
        until = trio.current_time() + rng.uniform(0.0, wl.keep_max)
        while not lost and not self._stopping:
            await trio.sleep_until(min(sent + wl.ttl / 3, until))
            if trio.current_time() >= until or self._stopping:
                break
            sent = trio.current_time()
            lost = await self._keep_alive(lessee, state)
        state.ended = trio.current_time()
        if lost:
            state.outcome = "lost"
        elif not self._stopping and rng.random() < wl.revoke_share:
            revoke = await self._op(lessee, Op("revoke", state.label, state.lease_id, True))
            state.outcome = "revoked" if revoke.type == "ok" else "revoke_unknown"
        else:
            state.outcome = "expire"
        await trio.sleep(rng.uniform(0.0, wl.ttl / 3))

    async def _sample_leaders(self) -> None:
        """Which store leads the lease records' region and the keys' region, on change."""
        from nokvpy.protocol import Freshness

        client = self._client(LESSEE_CLIENT_BASE - 1)
        last: dict[str, Any] = {}
        roles = (("authority", LEASE_PREFIX), ("keys", KEY_PREFIX.encode()))
        while True:
            for role, key in roles:
                with trio.move_on_after(1.0):
                    try:
                        reply = await client.route(key, Freshness.BEST_EFFORT)
                    except Exception:  # noqa: BLE001 - a coordinator down: ask again later
                        continue
                    d = reply.descriptor
                    now = (reply.leader_store_id, None if d is None else d.region_id)
                    if last.get(role) != now:
                        last[role] = now
                        self._write({"type": "leader", "role": role, "store": now[0],
                                     "region": now[1], "time": time.monotonic_ns()})
            await trio.sleep(self.workload.sample_every)

    # ---- the end -------------------------------------------------------------------------

    async def finish(self) -> dict:
        """Stop the lessees, wait until every lease they held is past TTL + bound, then read
        every key once and list the leases."""
        wl = self.workload
        t0 = trio.current_time()
        self._stopping = True
        with trio.move_on_after(4 * self.op_timeout + 5):
            await self._lessees_done.wait()
        await trio.sleep_until(wl.last_activity + wl.ttl + wl.bound + 0.5)
        client = self._client(LESSEE_CLIENT_BASE - 2)
        process = itertools.count(FINAL_PROCESS_BASE)
        deadline = trio.current_time() + wl.final_timeout
        found: list[str] = []
        unread: list[str] = []
        for state in list(wl.leases.values()):
            if state.lease_id is None:
                continue
            for key in state.keys:
                if key not in wl._key_lease:
                    continue
                outcome = await self._final(client, process, Op("read", key, None, False),
                                            deadline)
                if outcome is None:
                    unread.append(key)
                elif outcome.value is not None:
                    found.append(key)
        listing = await self._final(client, process, Op("leases", None, None, False), deadline)
        outcomes: dict[str, int] = {}
        for state in wl.leases.values():
            outcomes[state.outcome] = outcomes.get(state.outcome, 0) + 1
        summary = {"leases": len(wl.leases), "outcomes": outcomes, "found_at_end": found[:20],
                   "unread": unread[:20], "listed_at_end": None if listing is None
                   else listing.value, "wait_s": round(trio.current_time() - t0, 3)}
        self.log(f"kvlease: {len(wl.leases)} leases {outcomes}; at the end {len(found)} keys "
                 f"still found, {len(unread)} never read, listing "
                 f"{'failed' if listing is None else listing.value}")
        return summary

    async def _final(self, client: Any, process: Any, op: Op, deadline: float) -> Outcome | None:
        while True:
            outcome = await perform(self.workload, client, self.recorder, next(process), op,
                                    self.op_timeout, final=True)
            if outcome.type == "ok":
                return outcome
            if trio.current_time() >= deadline:
                return None
            await trio.sleep(0.3)


WORKLOADS["kvlease"] = KvLeaseWorkload

__all__ = ["KvLeaseSession", "KvLeaseWorkload", "LeaseState"]
