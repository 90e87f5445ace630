"""The soak command without a cluster: the command of each run, the record of a run's
results.json, the summary over runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from jepsen_lite import soak


def args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    soak.configure(parser)
    ns = parser.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_shapes_and_run_command():
    assert soak._shapes("1x1,3x2") == [(1, 1), (3, 2)]
    with pytest.raises(argparse.ArgumentTypeError):
        soak._shapes("2x1")
    ns = args(env=["NOKV_UNSAFE_LEASE=1"], run_args=["--", "--rate", "60"])
    cmd = soak.run_command(ns, 7, (3, 2), Path("/tmp/x/seed-0007"))
    text = " ".join(cmd)
    assert "-m jepsen_lite run" in text and "--seed 7" in text
    assert "--metaroots 3 --coordinators 2" in text
    assert "--nemesis lease,kill,partition,slow-net,churn" in text
    assert "--env NOKV_UNSAFE_LEASE=1" in text and cmd[-2:] == ["--rate", "60"]


RESULTS = {
    "valid": False,
    "checks": {"sanity": {"valid": True}, "linearizable": {"valid": False, "failing_key": "k0"},
               "routes": {"valid": False, "violations": [{"kind": "confirm_stale"}]}},
    "ops": {"by_type": {"ok": 10, "fail": 2, "info": 1}},
    "nemesis_intervals": [
        {"fault": "lease", "result": {"probe_reads": {"ok": 16, "fail": 0, "info": 0}}},
        {"fault": "lease", "result": {"confirms_after": {"ok": 1, "fail": 15, "info": 0}}},
        {"fault": "tick-stretch", "result": {"stalls": [{"probe_reads": {"ok": 2, "fail": 6}}]}},
        {"fault": "kill", "result": {"pid": 3}},
        {"fault": "heal"},
    ],
    "reproduce": "python -m jepsen_lite run --seed 3",
}


def test_a_run_record_and_the_summary(tmp_path):
    record = {"seed": 3, "shape": "1x1", "seconds": 20.0, **soak.summarize(RESULTS)}
    assert record["faults"] == {"lease": 2, "tick-stretch": 1, "kill": 1}
    assert record["probe_reads"] == {"ok": 19, "fail": 21, "info": 0}
    assert record["problems"] == {"linearizable": "k0", "routes": ["confirm_stale"]}
    good = {"seed": 4, "shape": "3x2", "seconds": 25.0, "valid": True, "ops": {"ok": 5},
            "faults": {"kill": 1}}
    odd = {"seed": 5, "shape": "1x1", "seconds": 300.0, "valid": "unknown", "error": "timeout"}
    path = tmp_path / "soak.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (record, good, odd)) + "not json\n")
    records = soak.load_records(path)
    s = soak.summary(records)
    assert (s["runs"], s["valid"], s["invalid"], s["unknown"]) == (3, 1, 1, 1)
    assert s["invalid_seeds"] == [3] and s["unknown_seeds"] == [5]
    assert set(s["problems"]) == {"3", "5"}
    assert s["problems"]["3"]["reproduce"] == RESULTS["reproduce"]
    assert s["fault_windows"] == {"kill": 2, "lease": 2, "tick-stretch": 1}
    assert s["ops"]["ok"] == 15
    line = soak._line(1, 3, records[0], s)
    assert "seed 3" in line and "INVALID" in line and "probe reads ok/fail 19/21" in line
