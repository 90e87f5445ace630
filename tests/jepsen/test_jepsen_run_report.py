"""jepsen-lite run reports on synthetic histories: op counts, checks, results, SVG plot, and
the ``run`` command line's error exits."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from jepsen_lite import cli
from jepsen_lite.history import History, Recorder
from jepsen_lite.report import (
    combine_valid,
    exit_code,
    nemesis_summary,
    op_counts,
    render_svg,
    summary_text,
    trim_check,
)
from jepsen_lite.runner import RunConfig, run_checks, transition_events, unlisted_churn

SVG = "{http://www.w3.org/2000/svg}"


class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self) -> int:
        self.t += 7_000_000  # 7 ms per event
        return self.t


def synthetic_history(lost_write: bool = False) -> History:
    """Two keys, writes/reads/cas with a fail and an info, a kill and a partition window,
    final reads. With ``lost_write`` the final read of k0 misses the last acked write."""
    rec = Recorder(clock=Clock())
    value = 0
    for i in range(60):
        key = f"k{i % 2}"
        if i == 10:
            rec.nemesis_start("kill", "store-1")
        if i == 30:
            rec.nemesis_stop("kill", "store-1")
            rec.nemesis_start("partition", "store-2", mode="isolate")
        if i == 50:
            rec.nemesis_stop("partition", "store-2")
        value += 1
        inv = rec.invoke(i % 3, "write", key, value)
        rec.ok(inv)
        inv = rec.invoke(i % 3, "read", key)
        rec.ok(inv, value)
    inv = rec.invoke(5, "cas", "k0", [1, 2])
    rec.fail(inv, error="mismatch")
    inv = rec.invoke(6, "write", "k1", 999)
    rec.info(inv, error="OutcomeUnknownError")
    finals = {"k0": 59 - (2 if lost_write else 0), "k1": 60}
    for n, (key, v) in enumerate(finals.items()):
        inv = rec.invoke(100 + n, "read", key, final=True)
        rec.ok(inv, v)
    return History(rec.history.events), finals


def test_op_counts_and_nemesis_summary():
    history, _ = synthetic_history()
    counts = op_counts(history)
    assert counts["total"] == 124 and counts["final_reads"] == 2
    assert counts["by_type"] == {"ok": 122, "fail": 1, "info": 1, "pending": 0}
    assert counts["by_f"]["cas"] == {"ok": 0, "fail": 1, "info": 0, "pending": 0}
    assert counts["errors"] == {"mismatch": 1, "OutcomeUnknownError": 1}
    windows = nemesis_summary(history)
    assert [(w["fault"], w["target"]) for w in windows] == [("kill", "store-1"),
                                                           ("partition", "store-2")]
    assert windows[0]["start_s"] < windows[0]["stop_s"] <= windows[1]["start_s"]
    assert windows[1]["details"] == {"mode": "isolate"}


def test_checks_valid_and_invalid():
    history, finals = synthetic_history()
    checks = run_checks("register", history, {"values": finals, "missing": []})
    assert {k: v["valid"] for k, v in checks.items()} == {
        "sanity": True, "linearizable": True, "recovery": True, "lost_writes": True}
    bad, finals = synthetic_history(lost_write=True)
    checks = run_checks("register", bad, {"values": finals, "missing": []})
    assert checks["linearizable"]["valid"] is False
    assert checks["linearizable"]["failing_key"] == "k0"
    sub = checks["linearizable"]["minimal_failing_subhistory"]
    assert sub and any(e.get("final") for e in sub)
    assert combine_valid(c["valid"] for c in checks.values()) is False
    missing = run_checks("register", history, {"values": {}, "missing": ["k0", "k1"]})
    assert missing["recovery"]["valid"] is False  # the cluster never served k0, k1 again
    assert missing["lost_writes"]["valid"] == "unknown"  # nothing to compare with


def test_sanity_check_needs_a_successful_operation():
    rec = Recorder(clock=Clock())
    inv = rec.invoke(0, "write", "k0", 1)
    rec.info(inv)
    checks = run_checks("register", History(rec.history.events), {"values": {}, "missing": []})
    assert checks["sanity"]["valid"] == "unknown"


def test_combine_valid_and_exit_code():
    assert combine_valid([True, True]) is True
    assert combine_valid([True, "unknown"]) == "unknown"
    assert combine_valid([True, "unknown", False]) is False
    assert combine_valid([]) == "unknown"
    assert [exit_code(v) for v in (True, False, "unknown")] == [0, 1, 2]


def test_trim_check_drops_bulky_parts():
    result = {"valid": False, "per_key": {"k": {"valid": False, "linearized_prefix": [1, 2]}},
              "minimal_failing_subhistory": [{"a": 1}, {"b": 2}],
              "violations": [{"kind": "x"}] * 60}
    trimmed = trim_check(result)
    assert trimmed["per_key"] == {"k": {"valid": False}}
    assert trimmed["minimal_failing_subhistory_events"] == 2
    assert len(trimmed["violations"]) == 50 and trimmed["violations_total"] == 60
    json.dumps(trimmed)


def test_svg_plot_is_well_formed_with_shaded_windows():
    history, _ = synthetic_history()
    svg = render_svg(history, title="synthetic <run> & co")
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    rects = root.findall(f"{SVG}rect")
    shaded = [r for r in rects if r.get("class") == "nemesis"]
    lanes = [r for r in rects if r.get("class") == "lane"]
    assert len(shaded) == 4 and len(lanes) == 2  # two windows x two panels; one lane bar each
    groups = {g.get("class"): g for g in root.findall(f"{SVG}g")}
    assert len(groups["latency-ok"]) == 122 and len(groups["latency-fail"]) == 1
    assert len(groups["latency-info"]) == 1
    lines = {p.get("class") for p in root.findall(f"{SVG}polyline")}
    assert lines == {"throughput-ok", "throughput-fail", "throughput-info"}
    texts = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "synthetic <run> & co" in texts and "kill" in texts and "partition" in texts


def test_svg_plot_of_an_empty_history():
    ET.fromstring(render_svg(History()))


def test_summary_text_shows_verdicts_counts_windows_and_reproduction():
    history, finals = synthetic_history(lost_write=True)
    checks = run_checks("register", history, {"values": finals, "missing": []})
    config = RunConfig(nemesis=["kill"], seed=4, dir="runs/x")
    results = {
        "config": {"workload": "register", "nemesis": ["kill"], "seed": 4, "time_limit": 60,
                   "rate": 30, "concurrency": 6},
        "checks": {k: trim_check(v) for k, v in checks.items()},
        "ops": op_counts(history),
        "nemesis_intervals": nemesis_summary(history),
        "valid": False,
        "exit_code": 1,
        "dir": "runs/x",
        "reproduce": config.reproduce(),
    }
    text = summary_text(results)
    assert "linearizable  INVALID  failing key k0" in text
    assert "total" in text and "partition" in text
    assert "result: INVALID (exit 1)" in text
    assert "--seed 4" in text and "--nemesis kill" in text and "runs/x-repro" in text


def test_run_cli_rejects_bad_arguments(tmp_path, capsys):
    assert cli.main(["run", "--nemesis", "bogus", "--dir", str(tmp_path / "r")]) == 2
    assert "unknown nemesis 'bogus'" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "history.jsonl").write_text("")
    assert cli.main(["run", "--nemesis", "none", "--dir", str(tmp_path / "used")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["run", "--fault-duration", "5,1"]) == 2  # argparse usage error


@pytest.mark.parametrize("workload", ["register", "append", "routes"])
def test_run_help_lists_workloads(workload, capsys):
    assert cli.main(["run", "--help"]) == 0
    assert workload in capsys.readouterr().out


def test_transition_events_per_instance():
    steps = [{"op": "split", "transition_id": "t1", "stage": "TERMINAL_PUBLISHED"},
             {"op": "split", "transition_id": "t9", "stage": "TERMINAL_FAILED"},
             {"op": "split", "error": "NOT_LEADER"},
             {"op": "transfer_leader", "transition_id": "x", "stage": "NOT_REQUIRED"},
             {"op": "merge", "transition_id": "y", "stage": "PLANNED", "outcome": "FAILED"}]
    entries = [{"transition_id": "t1", "source_index": 5, "phase": "COMPLETED", "kind": "SPLIT"},
               {"transition_id": "t1", "source_index": 40, "phase": "CANCELLED", "kind": "SPLIT"},
               {"transition_id": "t2", "source_index": 7, "phase": "PLANNED", "kind": "MERGE"}]
    events = transition_events(steps, entries)
    assert [(e["transition_id"], e["event"]) for e in events] == [
        ("t1@5", "planned"), ("t1@40", "planned"), ("t2@7", "planned"),
        ("t1@5", "terminal"), ("t1@40", "cancelled")]  # a reused id is two transitions
    assert unlisted_churn(steps, entries) == ["t9"]
    history, finals = synthetic_history()
    checks = run_checks("register", history, {"values": finals, "missing": []},
                        transitions=events)
    assert checks["transitions"]["valid"] is False  # t2 never reached an outcome
    assert [v["kind"] for v in checks["transitions"]["violations"]] == ["no_outcome"]
    both = transition_events([], [dict(entries[0]), dict(entries[0], phase="CANCELLED")])
    assert run_checks("register", history, {"values": finals, "missing": []},
                      transitions=both)["transitions"]["violations"][0]["kind"] == (
        "multiple_outcomes")
