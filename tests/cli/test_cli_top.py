"""`nokv top`: the rows of a frame computed from hand-written metric texts (rates over the
elapsed time, a counter that went down or a restarted process never gives a negative rate, a
process that did not answer is a `down` row), how frames are printed (in place on a
terminal, one after another otherwise, JSON lines), and the command against the shared local
cluster of the CLI tests (tests/cli/conftest.py)."""

from __future__ import annotations

import io
import json
import os

from cli_harness import nokv, ok, one_line_error

from nokvpy import metrics
from nokvpy.cli.top_cmd import (
    CLEAR,
    Scrape,
    Screen,
    by_name,
    frame_rows,
    process_row,
    render_table,
)

RATES = ("cpu_percent", "rpc_per_s", "rpc_errors_per_s", "fsyncs_per_s", "fsync_ms",
         "wal_mb_per_s", "applied_per_s")


def store_text(cpu: float, requests: int, errors: tuple[int, int], fsyncs: tuple[int, int],
               sync_s: tuple[float, float], wal_bytes: int, applied: dict[int, int],
               start: float = 1000.0, leaders: int = 1) -> str:
    lines = [
        "# TYPE nokv_process_info gauge",
        'nokv_process_info{cluster="c",id="1",kind="store",version="0"} 1',
        "# TYPE nokv_process_cpu_seconds_total counter",
        f"nokv_process_cpu_seconds_total {cpu}",
        "# TYPE nokv_process_start_time_seconds gauge",
        f"nokv_process_start_time_seconds {start}",
        "# TYPE nokv_process_max_resident_memory_bytes gauge",
        "nokv_process_max_resident_memory_bytes 52000000",
        "# TYPE nokv_rpc_requests_total counter",
        f"nokv_rpc_requests_total {requests}",
        "# TYPE nokv_rpc_errors_total counter",
        f'nokv_rpc_errors_total{{error="remote_errors",method="",reason="NOT_LEADER"}} {errors[0]}',
        f'nokv_rpc_errors_total{{error="handler_errors",method="Get",reason=""}} {errors[1]}',
        "# TYPE nokv_storage_fsyncs_total counter",
        f'nokv_storage_fsyncs_total{{engine="lmdb"}} {fsyncs[0]}',
        f'nokv_storage_fsyncs_total{{engine="wal"}} {fsyncs[1]}',
        "# TYPE nokv_storage_sync_seconds_total counter",
        f'nokv_storage_sync_seconds_total{{engine="lmdb"}} {sync_s[0]}',
        f'nokv_storage_sync_seconds_total{{engine="wal"}} {sync_s[1]}',
        "# TYPE nokv_wal_bytes_total counter",
        f"nokv_wal_bytes_total {wal_bytes}",
        "# TYPE nokv_store_regions gauge",
        f"nokv_store_regions {len(applied)}",
        "# TYPE nokv_store_leaders gauge",
        f"nokv_store_leaders {leaders}",
        "# TYPE nokv_raft_applied_index gauge",
        *(f'nokv_raft_applied_index{{region="{r}"}} {i}' for r, i in applied.items()),
        "# TYPE nokv_region_in_flight_proposals gauge",
        *(f'nokv_region_in_flight_proposals{{region="{r}"}} 2' for r in applied),
    ]
    return "\n".join(lines) + "\n"


def fams(text: str) -> dict:
    return by_name(metrics.parse(text))


BEFORE = store_text(cpu=1.0, requests=100, errors=(1, 2), fsyncs=(4, 6), sync_s=(0.004, 0.006),
                    wal_bytes=1_000_000, applied={1: 10, 2: 5})


def test_rates_are_the_change_over_the_elapsed_seconds():
    after = store_text(cpu=1.5, requests=300, errors=(3, 4), fsyncs=(10, 20),
                       sync_s=(0.020, 0.030), wal_bytes=5_000_000, applied={1: 30, 2: 15, 3: 7})
    row = process_row("store-1", "store", fams(BEFORE), fams(after), 2.0)
    assert row["up"] is True and row["error"] is None
    assert row["cpu_percent"] == 25.0  # 0.5 CPU seconds in 2 s
    assert row["rpc_per_s"] == 100.0
    assert row["rpc_errors_per_s"] == 2.0  # both error series: 3 -> 7
    assert row["fsyncs_per_s"] == 10.0  # 10 -> 30
    assert row["fsync_ms"] == 2.0  # 0.040 s over 20 fsyncs
    assert row["wal_mb_per_s"] == 2.0
    assert row["applied_per_s"] == 15.0  # regions 1 and 2: 20 + 10; region 3 is new
    assert row["max_rss_mb"] == 52.0
    assert (row["regions"], row["leaders"], row["in_flight"]) == (3, 1, 6)
    assert row["role"] == "regions 3 leaders 1"


def test_the_first_sample_has_no_rates_but_the_rest():
    row = process_row("store-1", "store", None, fams(BEFORE), None)
    assert row["up"] is True and all(row[k] is None for k in RATES)
    assert row["role"] == "regions 2 leaders 1" and row["max_rss_mb"] == 52.0


def test_a_counter_that_went_down_gives_no_rate_never_a_negative_one():
    after = store_text(cpu=0.2, requests=50, errors=(0, 0), fsyncs=(5, 7), sync_s=(0.01, 0.01),
                       wal_bytes=3_000_000, applied={1: 4, 2: 9})
    row = process_row("store-1", "store", fams(BEFORE), fams(after), 2.0)
    for key in ("cpu_percent", "rpc_per_s", "rpc_errors_per_s"):
        assert row[key] is None, key
    assert row["fsyncs_per_s"] == 1.0 and row["wal_mb_per_s"] == 1.0  # these still grew
    assert row["applied_per_s"] == 2.0  # region 1 was recreated (10 -> 4): it counts 0
    assert all(row[k] is None or row[k] >= 0 for k in RATES)


def test_a_restarted_process_has_no_rates_even_when_its_counters_grew():
    after = store_text(cpu=9.0, requests=900, errors=(9, 9), fsyncs=(90, 90), sync_s=(1, 1),
                       wal_bytes=9_000_000, applied={1: 90, 2: 90}, start=2000.0)
    row = process_row("store-1", "store", fams(BEFORE), fams(after), 2.0)
    assert row["up"] is True and all(row[k] is None for k in RATES)


def test_a_process_that_does_not_answer_is_a_down_row():
    procs = [("store-1", "store"), ("store-2", "store"), ("store-3", "store")]
    previous = {"store-1": Scrape(10.0, fams(BEFORE)), "store-2": Scrape(10.0, fams(BEFORE)),
                "store-3": Scrape(10.0, fams(BEFORE))}
    current = {"store-1": Scrape(12.0, fams(BEFORE)),
               "store-2": Scrape(12.5, None, "not running")}  # store-3: nothing at all
    rows = frame_rows(procs, previous, current)
    assert [r["name"] for r in rows] == ["store-1", "store-2", "store-3"]
    assert rows[0]["up"] and rows[0]["rpc_per_s"] == 0.0 and rows[0]["cpu_percent"] == 0.0
    assert rows[1] == {**rows[1], "up": False, "error": "not running",
                       "role": "down: not running", "max_rss_mb": None}
    assert not rows[2]["up"] and rows[2]["role"] == "down: no answer"
    assert all(r[k] is None for r in rows[1:] for k in RATES)
    table = render_table(rows)
    assert "down: not running" in table and "down: no answer" in table
    # after a frame down, the next one has no earlier sample of it: no rates yet
    again = frame_rows(procs, current, {n: Scrape(14.0, fams(BEFORE)) for n, _ in procs})
    assert again[0]["rpc_per_s"] == 0.0
    assert all(again[i][k] is None for i in (1, 2) for k in RATES)


def test_metaroot_and_coordinator_roles():
    metaroot = fams("# TYPE nokv_raft_leader gauge\nnokv_raft_leader 1\n"
                    "# TYPE nokv_raft_term gauge\nnokv_raft_term 4\n"
                    "# TYPE nokv_raft_applied_index gauge\nnokv_raft_applied_index 40\n")
    later = fams("# TYPE nokv_raft_leader gauge\nnokv_raft_leader 0\n"
                 "# TYPE nokv_raft_term gauge\nnokv_raft_term 5\n"
                 "# TYPE nokv_raft_applied_index gauge\nnokv_raft_applied_index 46\n")
    row = process_row("metaroot-1", "metaroot", metaroot, later, 3.0)
    assert (row["role"], row["leader"], row["term"]) == ("follower term 5", False, 5)
    assert row["applied_per_s"] == 2.0
    assert row["wal_mb_per_s"] is None and row["cpu_percent"] is None  # not served
    assert process_row("metaroot-1", "metaroot", None, metaroot, None)["role"] == "leader term 4"

    coordinator = fams(
        "# TYPE nokv_coordinator_grant_held gauge\n"
        'nokv_coordinator_grant_held{duty="alloc_id"} 1\n'
        'nokv_coordinator_grant_held{duty="region_lookup"} 0\n'
        'nokv_coordinator_grant_held{duty="tso"} 1\n'
        "# TYPE nokv_coordinator_catch_up_state gauge\n"
        'nokv_coordinator_catch_up_state{state="LAGGING"} 1\n'
        "# TYPE nokv_coordinator_root_lag gauge\nnokv_coordinator_root_lag 3\n")
    row = process_row("coordinator-1", "coordinator", None, coordinator, None)
    assert row["role"] == "grants 2/3 LAGGING lag 3"
    assert (row["grants_held"], row["grants"], row["catch_up"], row["root_lag"]) == (
        ["alloc_id", "tso"], 3, "LAGGING", 3)
    assert row["applied_per_s"] is None and row["fsyncs_per_s"] is None


def test_the_table_fits_120_columns_and_shows_unknown_as_a_dash():
    after = store_text(cpu=1.5, requests=300, errors=(3, 4), fsyncs=(10, 20),
                       sync_s=(0.020, 0.030), wal_bytes=5_000_000, applied={1: 30, 2: 15})
    rows = [process_row("coordinator-1", "coordinator", None, None, None, "no answer"),
            process_row("store-12", "store", fams(BEFORE), fams(after), 2.0)]
    lines = render_table(rows).splitlines()
    assert lines[0].split() == ["NAME", "KIND", "ROLE", "CPU%", "RPC/s", "ERR/s", "SYNC/s",
                                "SYNC_MS", "WAL_MB/s", "APPLY/s", "MAXRSS"]
    assert all(len(line) <= 120 for line in lines)
    assert lines[1].split()[-8:] == ["-"] * 8
    assert lines[2].split()[-8:] == ["25.0", "100.0", "2.0", "10.0", "2.00", "2.00", "15.0",
                                     "52"]


class Args:
    json = False
    interval = 2.0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_frames_in_place_on_a_terminal_one_after_another_otherwise_or_json_lines():
    rows = [process_row("store-1", "store", None, fams(BEFORE), None),
            process_row("store-2", "store", None, None, None, "no answer")]
    plain = io.StringIO()
    screen = Screen(Args(), "nokv-test", plain)
    screen.waiting(2)
    screen.frame(rows)
    screen.frame(rows)
    frames = plain.getvalue().split("\n\n")
    assert len(frames) == 2 and "\x1b" not in plain.getvalue()
    for frame in frames:
        head, table, *rest = frame.strip("\n").splitlines()
        assert head.startswith("nokv top  cluster nokv-test") and "1 down" in head
        assert "Ctrl-C" not in head and table.startswith("NAME") and len(rest) == 2

    term = Terminal()
    screen = Screen(Args(), "nokv-test", term)
    screen.waiting(2)
    screen.frame(rows)
    shown = term.getvalue().split(CLEAR)
    assert shown[0] == "" and len(shown) == 3
    assert "Ctrl-C to stop" in shown[1] and "first frame comes in 2 s" in shown[1]
    assert "Ctrl-C to stop" in shown[2] and "down: no answer" in shown[2]

    args = Args()
    args.json = True
    out = Terminal()  # --json never draws, even on a terminal
    screen = Screen(args, "nokv-test", out)
    screen.waiting(2)
    screen.frame(rows)
    screen.frame(rows)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in out.getvalue()
    body = json.loads(lines[0])
    assert body["cluster"] == "nokv-test" and body["interval"] == 2.0 and body["time"] > 0
    assert [p["name"] for p in body["processes"]] == ["store-1", "store-2"]
    assert body["processes"][1]["up"] is False


# ---- the command ------------------------------------------------------------------------------


def test_top_errors_are_one_line(tmp_path):
    missing = nokv("top", "--dir", tmp_path / "nothing", "--count", "1")
    assert "no cluster in" in one_line_error(missing, 1)
    old = {"cluster_id": "nokv-old", "secret": "s", "replication": 1, "tls": None,
           "processes": [{"name": "store-1", "kind": "store", "node_id": 1,
                          "address": "127.0.0.1:1", "data_dir": str(tmp_path / "d"),
                          "extra_args": []}]}
    (tmp_path / "cluster.json").write_text(json.dumps(old))
    result = nokv("top", "--dir", tmp_path, "--count", "1")
    assert "has a metrics endpoint" in one_line_error(result, 1)
    assert nokv("top", "--dir", tmp_path, "--interval", "0").returncode == 2


def test_top_against_the_cluster_json_and_plain(cluster):
    cluster.wait_all_up(degraded_ok=True)
    serving = {p["name"]: p["kind"] for p in cluster.spec["processes"] if not p.get("retired")}
    result = cluster.run("top", "--count", "2", "--interval", "0.5", "--json")
    lines = ok(result).splitlines()
    assert len(lines) == 2 and "\x1b" not in result.stdout
    for line in lines:
        frame = json.loads(line)
        assert frame["time"] > 0 and frame["interval"] == 0.5
        rows = {r["name"]: r for r in frame["processes"]}
        assert {n: r["kind"] for n, r in rows.items()} == serving
        for row in rows.values():
            assert row["up"], row
            assert 0 <= row["cpu_percent"] <= 100 * (os.cpu_count() or 1) + 50, row
            assert row["rpc_per_s"] >= 0 and row["rpc_errors_per_s"] >= 0, row
            assert 1 < row["max_rss_mb"] < 10_000, row
            assert row["fsync_ms"] is None or row["fsync_ms"] >= 0, row
            if row["kind"] == "store":
                assert row["regions"] >= 1 and row["applied_per_s"] >= 0, row
                assert row["fsyncs_per_s"] >= 0 and row["wal_mb_per_s"] >= 0, row
            elif row["kind"] == "metaroot":
                assert row["term"] >= 1 and row["role"].split()[0] in ("leader", "follower")
            else:
                assert row["grants"] >= 1 and row["catch_up"] and row["root_lag"] >= 0, row
        assert any(r["rpc_per_s"] > 0 for r in rows.values())  # stores heartbeat

    result = cluster.run("top", "--count", "2", "--interval", "0.5")
    text = ok(result)
    assert "\x1b" not in text
    frames = text.split("\n\n")
    assert len(frames) == 2
    for frame in frames:
        head, columns, *rows = frame.strip("\n").splitlines()
        assert head.startswith("nokv top  cluster ") and "Ctrl-C" not in head
        assert columns.split()[:3] == ["NAME", "KIND", "ROLE"]
        assert sorted(r.split()[0] for r in rows) == sorted(serving)
