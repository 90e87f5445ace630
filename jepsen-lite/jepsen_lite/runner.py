"""The jepsen-lite run: cluster + workload + nemesis + final reads + checkers + report.

Owns the order of a run (:func:`run`):

1. create a local cluster in ``RUN/cluster`` and wait until it serves (empty store);
2. build the seeded nemesis schedule (``RUN/schedule.json``);
3. run ``concurrency`` client workers for ``time_limit`` seconds while the nemesis opens and
   heals its windows; every operation and nemesis window goes to ``RUN/history.jsonl`` as it
   happens;
4. heal everything (resume, restart, clear rules and failpoints; after churn membership
   changes, add or remove peers until every region has the replication factor), wait until
   the cluster serves, check that the topology recovered (every region has exactly
   ``replication`` voters on live stores and every store hosts exactly the catalog's peers,
   polled for up to ``recovery_timeout`` seconds:
   :func:`jepsen_lite.topology.check_topology_recovery`), read every key once
   (recorded, ``"final": true``), and compare the replicas: every region's voters must
   reach one applied index and then hold the same data there
   (:func:`jepsen_lite.convergence.check_convergence`, ``checks["convergence"]``);
5. stop the cluster (its data and logs stay in ``RUN/cluster``), run the checkers, write
   ``RUN/plot.svg``, ``RUN/failing-subhistory.jsonl`` when invalid, ``RUN/results.json``
   and the page ``RUN/index.html`` (:mod:`.htmlindex`).

The verdict is ``True`` only when every checker says valid; ``False`` when any says invalid;
otherwise ``"unknown"`` (time budget, a crash of the harness, a cluster that never came
back, or no successful operation at all). Never parses command lines (``run_cli``).
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from .checkers import check_acknowledged_writes, check_route_reads, check_transitions
from .convergence import check_convergence
from .disk import DISK_FAULTS
from .disk import check_history as check_disk
from .history import History, Recorder, is_nemesis
from .hostile import check_history as check_hostile
from .htmlindex import write_results
from .linearizable import check_linearizable
from .membership import MEMBERSHIP_FAULTS
from .membership import check_history as check_membership
from .nemesis import Nemesis, ScheduleOptions, build_schedule, parse_faults
from .report import (
    combine_valid,
    exit_code,
    nemesis_summary,
    op_counts,
    render_svg,
    trim_check,
    write_json,
    write_subhistory,
)
from .topology import check_topology_recovery, membership_counts
from .watchload import WORKLOADS, make_workload  # every workload, watch included
from .workloads import final_reads, run_worker

FINAL_PROCESS_BASE = 1_000_000


@dataclass
class RunConfig:
    workload: str = "register"
    nemesis: list[str] = field(default_factory=list)
    time_limit: float = 60.0
    rate: float = 30.0
    concurrency: int = 6
    seed: int = 0
    dir: str = "runs/latest"
    keys: int = 5
    op_timeout: float = 2.0
    metaroots: int = 1
    coordinators: int = 1
    stores: int = 3
    replication: int = 3
    env: dict[str, str] = field(default_factory=dict)
    check_time_limit: float = 120.0
    ready_timeout: float = 60.0
    final_read_timeout: float = 60.0
    fault_duration: tuple[float, float] = (3.0, 8.0)
    fault_quiet: tuple[float, float] = (2.0, 5.0)
    leader_share: float = 0.35
    lease_modes: tuple[str, ...] = ("store", "metaroot", "coordinator")
    lease_isolate: float = 0.5
    recovery_timeout: float = 30.0
    churn_store_fault: float = 0.5
    keep_cluster: bool = False
    workload_options: dict[str, Any] = field(default_factory=dict)  # e.g. watch: watchers

    def schedule_options(self) -> ScheduleOptions:
        tail = min(3.0, max(self.time_limit * 0.1, 0.5))
        return ScheduleOptions(
            duration=tuple(self.fault_duration),
            quiet=tuple(self.fault_quiet),
            tail=tail,
            leader_share=self.leader_share,
            lease_modes=tuple(self.lease_modes),
            lease_isolate=self.lease_isolate,
            churn_store_fault=self.churn_store_fault,
            first_fault=(min(2.0, self.time_limit * 0.1), min(4.0, self.time_limit * 0.2)),
        )

    def reproduce(self) -> str:
        args = [
            "python", "-m", "jepsen_lite", "run",
            "--workload", self.workload,
            "--nemesis", ",".join(self.nemesis) or "none",
            "--time-limit", f"{self.time_limit:g}",
            "--rate", f"{self.rate:g}",
            "--concurrency", str(self.concurrency),
            "--keys", str(self.keys),
            "--seed", str(self.seed),
            "--stores", str(self.stores),
            "--metaroots", str(self.metaroots),
            "--coordinators", str(self.coordinators),
            "--leader-share", f"{self.leader_share:g}",
            "--replication", str(self.replication),
            "--op-timeout", f"{self.op_timeout:g}",
            "--fault-duration", ",".join(f"{x:g}" for x in self.fault_duration),
            "--fault-quiet", ",".join(f"{x:g}" for x in self.fault_quiet),
            "--dir", f"{self.dir.rstrip('/')}-repro",
        ]
        if tuple(self.lease_modes) != RunConfig.lease_modes:
            args += ["--lease-modes", ",".join(self.lease_modes)]
        if self.lease_isolate != RunConfig.lease_isolate:
            args += ["--lease-isolate", f"{self.lease_isolate:g}"]
        if self.recovery_timeout != RunConfig.recovery_timeout:
            args += ["--recovery-timeout", f"{self.recovery_timeout:g}"]
        if self.churn_store_fault != RunConfig.churn_store_fault:
            args += ["--churn-store-fault", f"{self.churn_store_fault:g}"]
        for k, v in sorted(self.env.items()):
            args += ["--env", f"{k}={v}"]
        for k, v in sorted(self.workload_options.items()):
            args += ["--workload-option", f"{k}={v}"]
        return " ".join(shlex.quote(a) for a in args)


class LoggingRecorder(Recorder):
    """A Recorder that also reports nemesis events through ``log``."""

    def __init__(self, *args: Any, log: Callable[[str], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._log = log

    def nemesis(self, f: str, fault: str, target: Any = None, **extra: Any) -> dict:
        event = super().nemesis(f, fault, target, **extra)
        shown = {k: v for k, v in extra.items() if k in ("op", "key", "error", "outcome", "planned")}
        self._log(f"nemesis {f} {fault} {target or ''} {json.dumps(shown, default=str) if shown else ''}")
        return event


def _stderr_log(t0: float) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.2f}s] {msg}", file=sys.stderr, flush=True)

    return log


def run(config: RunConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Run ``config`` end to end and return the results dict (also in results.json)."""
    started = time.monotonic()
    log = log or _stderr_log(started)
    run_dir = Path(config.dir)
    if (run_dir / "history.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run (history.jsonl); pick another --dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.nemesis = parse_faults(config.nemesis)
    write_json(run_dir / "config.json", asdict(config))

    from .control import ClusterControl

    control = ClusterControl(
        run_dir / "cluster",
        metaroots=config.metaroots,
        coordinators=config.coordinators,
        stores=config.stores,
        replication=config.replication,
        env=config.env,
        seed=config.seed,
        log=log,
    )
    results: dict[str, Any] = {
        "dir": str(run_dir),
        "config": asdict(config),
        "reproduce": config.reproduce(),
        "seed": config.seed,
    }
    state: dict[str, Any] = {}
    history_path = run_dir / "history.jsonl"
    previous = _sigterm_as_interrupt()
    try:
        control.create()
        for proc in control.spec.of_kind("store"):  # e.g. watch: a tiny --watch-keep
            proc.extra_args += WORKLOADS[config.workload].store_args(config.workload_options)
        control.cluster.save(control.spec)
        schedule = build_schedule(
            config.nemesis, config.time_limit, config.seed, control.names(),
            config.schedule_options(),
        )
        write_json(run_dir / "schedule.json", [w.to_dict() for w in schedule])
        log(f"cluster in {control.root}; {len(schedule)} nemesis windows; seed {config.seed}")
        with open(history_path, "w", encoding="utf-8") as sink:
            recorder = LoggingRecorder(sink, log=log)
            trio.run(_run_async, config, control, recorder, schedule, state, log)
    except BaseException as exc:  # noqa: BLE001 - the run is reported, then re-raised if fatal
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["traceback"] = traceback.format_exc()
        log(f"run failed: {results['error']}")
        if isinstance(exc, KeyboardInterrupt):
            _stop(control, config, log)
            raise
    finally:
        _stop(control, config, log)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    results["timing"] = {"run_s": round(time.monotonic() - started, 3), **state.get("timing", {})}
    return _check_and_report(config, run_dir, history_path, state, results, log)


def _sigterm_as_interrupt() -> Any:
    """While a run lasts, SIGTERM stops it like ^C: the cluster it started is stopped (each
    process by its pid) before this process exits. Without it, a run killed by `kill` or a
    timeout left its cluster running. Returns the previous handler (None off the main
    thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _stop(control: Any, config: RunConfig, log: Callable[[str], None]) -> None:
    if config.keep_cluster or getattr(control, "_stopped", False):
        return
    try:
        stopped = control.stop_all()
        log(f"stopped {len(stopped)} processes; data and logs in {control.root}")
    except Exception as exc:  # noqa: BLE001
        log(f"stopping the cluster failed: {exc}")
    control._stopped = True


async def _run_async(
    config: RunConfig,
    control: Any,
    recorder: Recorder,
    schedule: list,
    state: dict,
    log: Callable[[str], None],
) -> None:
    from nokvpy.client import Client
    from nokvpy.rpc import RpcClient

    timing: dict[str, float] = {}
    state["timing"] = timing
    run_dir = Path(config.dir)
    ready_s = await control.start_all(config.ready_timeout)
    timing["cluster_ready_s"] = round(ready_s, 3)
    log(f"cluster serving after {ready_s:.1f}s: {', '.join(control.names())}")

    workload = make_workload(config.workload, keys=config.keys, seed=config.seed,
                             **config.workload_options)
    state["workload"] = workload

    def new_client(index: int) -> Client:
        rpc = RpcClient(control.client_identity(index), seed=config.seed * 1000 + index)
        return Client(control.coordinator_addrs(), rpc=rpc, timeout=config.op_timeout,
                      rng=random.Random(f"{config.seed}-client-{index}"))

    clients = [new_client(i + 1) for i in range(config.concurrency)]
    t0 = trio.current_time()
    until = t0 + config.time_limit
    nemesis = Nemesis(
        control, recorder, keys=workload.split_keys(), seed=config.seed,
        clock=lambda: trio.current_time() - t0, log=log, workload=workload,
        op_timeout=config.op_timeout, restore_timeout=config.recovery_timeout,
    )
    state["nemesis"] = nemesis
    state["t0_ns"] = time.monotonic_ns()
    worker_stats: list = []

    async def worker(i: int) -> None:
        stats = await run_worker(
            workload, clients[i], recorder, index=i, concurrency=config.concurrency,
            rng=random.Random(f"{config.seed}-worker-{i}"), until=until, rate=config.rate,
            op_timeout=config.op_timeout,
        )
        worker_stats.append(stats)

    async def nemesis_task() -> None:
        with trio.move_on_at(until):
            await nemesis.run(schedule)

    log(f"workload {workload.name}: {config.concurrency} clients, {config.rate:g} ops/s, "
        f"{config.time_limit:g}s")
    try:
        async with workload.session(new_client, recorder, run_dir, log,
                                    config.op_timeout) as side:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nemesis_task)
                for i in range(config.concurrency):
                    nursery.start_soon(worker, i)
            timing["workload_s"] = round(trio.current_time() - t0, 3)
            log(f"workload done: {sum(s.ops for s in worker_stats)} ops; healing")
            heal_t = trio.current_time()
            heal = await nemesis.heal_all()
            timing["heal_s"] = round(trio.current_time() - heal_t, 3)
            state["heal"] = heal
            if heal.get("error"):
                log(f"heal: {heal['error']}")
            if (heal.get("replication") or {}).get("error"):
                log(f"heal: {heal['replication']['error']}")
            topo_t = trio.current_time()
            state["topology"] = await check_topology_recovery(
                control, control.replication, config.recovery_timeout,
                repair=getattr(control, "restore_replication", None))
            timing["topology_recovery_s"] = round(trio.current_time() - topo_t, 3)
            log(f"topology recovery: {'ok' if state['topology']['valid'] is True else 'FAILED'}: "
                f"{state['topology']['note']}")
            state["session"] = await side.finish()  # e.g. watch: the markers, the watchers end
            reader = new_client(0)
            clients.append(reader)
            final_t = trio.current_time()
            state["final"] = await final_reads(
                workload, reader, recorder, first_process=FINAL_PROCESS_BASE,
                timeout=config.final_read_timeout, op_timeout=config.op_timeout,
            )
            timing["final_reads_s"] = round(trio.current_time() - final_t, 3)
            if {"churn", "publish-fail"} & set(config.nemesis):
                state["transitions"] = await collect_transitions(control, nemesis.events)
            log(f"final reads: {len(state['final']['values'])} keys read, "
                f"missing {state['final']['missing'] or 'none'}")
            conv_t = trio.current_time()
            try:
                state["convergence"] = await check_convergence(control)
            except Exception as exc:  # noqa: BLE001 - the check is unknown, the run goes on
                state["convergence"] = {"valid": "unknown",
                                        "note": f"not checked: {type(exc).__name__}: {exc}"[:300]}
            timing["convergence_s"] = round(trio.current_time() - conv_t, 3)
            log(f"convergence: {state['convergence']['valid']}: {state['convergence']['note']}")
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001, S110
                    pass
            await control.aclose()


SETTLED_PHASES = {"COMPLETED": "terminal", "CANCELLED": "cancelled", "ABORTED": "cancelled",
                  "SUPERSEDED": "cancelled", "CONFLICTED": "cancelled"}


def instance_id(entry: dict) -> str:
    """A transition instance: its id plus the root index of its plan (ids are reused when the
    same split is planned again after a merge)."""
    source = entry.get("source_index")
    return entry["transition_id"] if source is None else f"{entry['transition_id']}@{source}"


def transition_events(churn_steps: list[dict], entries: list[dict]) -> list[dict]:
    """Transition outcome events for ``check_transitions``, one transition per instance
    (:func:`instance_id`) the coordinators list: ``planned``, then the outcome they report
    (``COMPLETED`` -> terminal, ``CANCELLED``/``ABORTED``/... -> cancelled). An instance
    still pending after healing has no outcome. (``churn_steps`` are not used: the admin
    replies carry no plan index; :func:`unlisted_churn` reports the ones no coordinator
    lists.)"""
    events: list[dict] = []
    seen: set[str] = set()
    for entry in entries:
        iid = instance_id(entry)
        if iid not in seen:
            seen.add(iid)
            events.append({"transition_id": iid, "event": "planned", "kind": entry.get("kind")})
    for entry in entries:
        outcome = SETTLED_PHASES.get(entry.get("phase", ""))
        if outcome is not None:
            events.append({"transition_id": instance_id(entry), "event": outcome,
                           "phase": entry["phase"], "kind": entry.get("kind")})
    return events


def unlisted_churn(churn_steps: list[dict], entries: list[dict]) -> list[str]:
    """Ids of splits/merges the churn got past their planned publish that no coordinator
    lists (a coordinator keeps a bounded history and loses it when it restarts)."""
    listed = {e["transition_id"] for e in entries}
    out: list[str] = []
    for step in churn_steps:
        if step.get("op") == "transfer_leader":
            continue
        # a move or a fault re-add holds its admin replies under "add" / "remove"
        for reply in (step, step.get("add"), step.get("remove")):
            if not isinstance(reply, dict):
                continue
            tid = reply.get("transition_id")
            stage = str(reply.get("stage") or "").rsplit(".", 1)[-1]
            if stage in ("", "NOT_REQUIRED", "PLANNED"):
                continue
            if tid and tid not in listed and tid not in out:
                out.append(tid)
    return out


async def collect_transitions(control: Any, churn_steps: list[dict], settle: float = 15.0) -> dict:
    """Wait up to ``settle`` seconds for the coordinators to report no pending transition,
    then return ``{"entries": [...], "events": [...]}``."""
    deadline = trio.current_time() + settle
    entries: list[dict] = []
    while True:
        try:
            entries = await control.list_transitions()
        except Exception:  # noqa: BLE001
            entries = []
        settled = {instance_id(e) for e in entries if e.get("phase") in SETTLED_PHASES}
        pending = [e for e in entries if instance_id(e) not in settled]
        if not pending or trio.current_time() >= deadline:
            break
        await trio.sleep(0.5)
    return {"entries": entries, "events": transition_events(churn_steps, entries),
            "unlisted": unlisted_churn(churn_steps, entries)}


def run_checks(workload_name: str, history: History, final: dict | None,
               check_time_limit: float = 120.0, transitions: list[dict] | None = None,
               run_dir: Path | None = None) -> dict[str, dict]:
    """The checkers of a workload's history (with its final reads already recorded)."""
    model = WORKLOADS[workload_name].model
    checks: dict[str, dict] = {}
    ops = history.operations()
    ok_ops = sum(1 for op in ops if op.status == "ok" and not op.invoke.get("final"))
    checks["sanity"] = (
        {"valid": True, "note": f"{ok_ops} successful operations"}
        if ok_ops
        else {"valid": "unknown", "note": "no operation succeeded: the run exercised nothing"}
    )
    if model is not None:
        t = time.monotonic()
        lin = check_linearizable(history, model, time_limit=check_time_limit)
        lin["elapsed_s"] = round(time.monotonic() - t, 3)
        checks["linearizable"] = lin
        if final is None:
            checks["recovery"] = {"valid": "unknown", "note": "no final reads (run aborted)"}
        else:
            missing = final.get("missing") or []
            checks["recovery"] = (
                {"valid": True, "note": f"{len(final['values'])} keys read after healing"}
                if not missing
                else {"valid": False, "note": f"keys never served after healing: {missing}"}
            )
            lost = check_acknowledged_writes(history, final["values"], model)
            if missing:  # keys never read are the recovery check's failure, not lost writes
                lost["violations"] = [
                    v for v in lost["violations"] if v["kind"] != "missing_final_read"
                ]
                lost["valid"] = False if lost["violations"] else "unknown"
                lost["note"] = f"{len(missing)} keys could not be read"
            checks["lost_writes"] = lost
    if any(op.f in ("route", "root-confirm") for op in ops):
        checks["routes"] = check_route_reads(history)
    if transitions:
        checks["transitions"] = check_transitions(transitions)
    for name, faults, check in (("hostile", ("hostile",), check_hostile),
                                ("disk", DISK_FAULTS, check_disk),
                                ("membership", MEMBERSHIP_FAULTS, check_membership)):
        if any(is_nemesis(e) and isinstance(e.get("value"), dict)
               and e["value"].get("fault") in faults for e in history.events):
            checks[name] = check(history.events)
    if run_dir is not None:
        checks.update(WORKLOADS[workload_name].run_checks(history, run_dir))
    return checks


def _check_and_report(
    config: RunConfig,
    run_dir: Path,
    history_path: Path,
    state: dict,
    results: dict,
    log: Callable[[str], None],
) -> dict:
    history = None
    try:
        history = History.load(history_path) if history_path.exists() else History()
    except Exception as exc:  # noqa: BLE001
        results["error"] = results.get("error") or f"history unreadable: {exc}"
    checks: dict[str, dict] = {}
    if history is not None and len(history):
        t = time.monotonic()
        try:
            transitions = (state.get("transitions") or {}).get("events")
            checks = run_checks(config.workload, history, state.get("final"),
                                config.check_time_limit, transitions, run_dir)
        except Exception as exc:  # noqa: BLE001
            results["error"] = results.get("error") or f"checker failed: {type(exc).__name__}: {exc}"
            results["traceback"] = traceback.format_exc()
        results.setdefault("timing", {})["check_s"] = round(time.monotonic() - t, 3)
        results["ops"] = op_counts(history)
        nemesis = state.get("nemesis")
        summary = nemesis_summary(history)
        if nemesis is not None:  # add what only the nemesis knows (errors of each window)
            records: dict[tuple, list] = {}
            for record in nemesis.intervals:
                records.setdefault((record.fault, record.target), []).append(record)
            for iv in summary:
                queue = records.get((iv["fault"], iv["target"]))
                if queue:
                    record = queue.pop(0)
                    iv["errors"] = record.errors
                    # what the injection itself reported (pids, the lease sequence's reads)
                    result = {k: v for k, v in record.details.items() if k not in iv["details"]}
                    if result:
                        iv["result"] = result
            results["churn_steps"] = nemesis.events[:500]
            if nemesis.events:
                results["churn"] = {
                    "steps": len(nemesis.events),
                    "ok": sum(1 for e in nemesis.events
                              if not e.get("error") and e.get("op") != "none"
                              and not e.get("skipped")),
                    "errors": sum(1 for e in nemesis.events if e.get("error")),
                    "unsupported": any(e.get("unsupported") for e in nemesis.events),
                    "membership": membership_counts(nemesis.events),
                }
        results["nemesis_intervals"] = summary
        try:
            title = (f"jepsen-lite {config.workload} / {','.join(config.nemesis) or 'no nemesis'} "
                     f"/ seed {config.seed}")
            (run_dir / "plot.svg").write_text(render_svg(history, title=title))
        except Exception as exc:  # noqa: BLE001
            log(f"plot failed: {exc}")
    results["heal"] = state.get("heal")
    heal_error = (state.get("heal") or {}).get("error")
    if heal_error and "recovery" in checks:
        checks["recovery"]["note"] = f"{checks['recovery'].get('note', '')}; heal: {heal_error}"
    if state.get("topology") is not None:
        checks["topology-recovery"] = dict(state["topology"])
        restore = (state.get("heal") or {}).get("replication") or {}
        if restore.get("error"):
            checks["topology-recovery"]["restore_error"] = restore["error"]
    elif checks:
        checks["topology-recovery"] = {"valid": "unknown",
                                       "note": "not checked: the run ended before healing"}
    if state.get("convergence") is not None:
        checks["convergence"] = dict(state["convergence"])
    elif checks:
        checks["convergence"] = {"valid": "unknown",
                                 "note": "not checked: the run ended before the final reads"}
    if state.get("transitions") is not None:
        with open(run_dir / "transitions.jsonl", "w", encoding="utf-8") as fh:
            for event in state["transitions"]["events"]:
                fh.write(json.dumps(event, default=str) + "\n")
        results["transitions"] = {"listed": len(state["transitions"]["entries"]),
                                  "events": len(state["transitions"]["events"]),
                                  "entries": state["transitions"]["entries"][:1000],
                                  "unlisted_churn": state["transitions"].get("unlisted", [])}
        if "transitions" in checks and state["transitions"].get("unlisted"):
            checks["transitions"]["note"] = (
                f"{len(state['transitions']['unlisted'])} churn transitions not listed by any "
                f"coordinator (bounded history, or lost when a coordinator restarted)")
    if state.get("final") is not None:
        final = state["final"]
        results["final_reads"] = {"keys": len(final["values"]), "missing": final["missing"],
                                  "attempts": final["attempts"]}
    sub = (checks.get("linearizable") or {}).get("minimal_failing_subhistory")
    if sub:
        write_subhistory(run_dir / "failing-subhistory.jsonl", sub)
        results["failing_subhistory"] = "failing-subhistory.jsonl"
        results["failing_subhistory_events"] = sub
    results["checks"] = {name: trim_check(c) for name, c in checks.items()}
    verdicts = [c.get("valid") for c in checks.values()]
    if results.get("error") and not any(v is False for v in verdicts):
        verdicts.append("unknown")
    results["valid"] = combine_valid(verdicts)
    results["exit_code"] = exit_code(results["valid"])
    results["files"] = {
        name: name for name in ("history.jsonl", "results.json", "plot.svg", "schedule.json",
                                "config.json", "failing-subhistory.jsonl", "transitions.jsonl",
                                "watch-events.jsonl", "cluster")
        if (run_dir / name).exists() or name == "results.json"
    }
    return write_results(run_dir, results, log)  # results.json, index.html, the closing line


__all__ = ["RunConfig", "run", "run_checks", "transition_events", "unlisted_churn"]
