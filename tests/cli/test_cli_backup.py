"""`nokv backup` and `nokv restore`: every key of the shared cluster (over several regions) to
one checksummed file, restored into a new cluster that then holds exactly the same keys and
values; a damaged or truncated file is refused before anything is created; a cluster that
already holds keys is not restored into."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import Cluster, admin_split, kill_leftovers, nokv, ok, one_line_error, parsed


def _all_pairs(run) -> dict[str, str]:
    body = parsed(run("kv", "scan", "", "", "--limit", "100000", "--json"))
    assert body["more"] is False
    return {p["key"]: p["value"] for p in body["pairs"]}


@pytest.mark.slow  # a second cluster (~30 s); tests/topology/test_backup.py runs by default
@pytest.mark.cli_last(10)  # it splits the shared cluster
def test_backup_then_restore_into_a_new_cluster_holds_every_key(cluster, tmp_path):
    for i in range(40):
        ok(cluster.run("kv", "put", f"bak/{i:03d}", f"value {i}"))
    ok(cluster.run("kv", "put", "bak/bin", "0x00ff10"))
    admin_split(cluster, "bak/020")
    out = tmp_path / "cluster.bak"
    summary = parsed(cluster.run("backup", "--out", out, "--json", timeout=60))
    assert summary["regions"] >= 2 and summary["keys"] >= 41
    assert out.read_bytes().startswith(b"NOKVBAK1\n") and not (tmp_path / "cluster.bak.partial").exists()
    before = _all_pairs(cluster.run)
    assert summary["keys"] == len(before)

    target = tmp_path / "restored"
    try:
        restored = nokv("restore", out, "--dir", target, "--json", timeout=180)
        body = json.loads(ok(restored))  # stdout holds only the restore's summary
        assert body["keys"] == summary["keys"] and body["regions"] == summary["regions"]
        copy = Cluster(target, restored)
        assert _all_pairs(copy.run) == before
        assert ok(copy.run("kv", "get", "bak/bin")).strip() == "0x00ff10"
        # the new cluster is split where the old one was
        regions = parsed(copy.run("regions", "--json"))
        assert len(regions["regions"] if isinstance(regions, dict) else regions) >= 2
        # restoring again into it: refused, it holds keys now
        again = nokv("restore", out, "--dir", target)
        assert "restore needs an empty cluster" in one_line_error(again, 1)
    finally:
        pids = Cluster(target, None).pids() if (target / "cluster.json").exists() else {}
        nokv("cluster", "down", "--dir", target, timeout=60)
        kill_leftovers(target, pids)


def test_a_damaged_backup_is_refused_before_anything_is_created(tmp_path, cluster):
    out = tmp_path / "small.bak"
    ok(cluster.run("backup", "--out", out))
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / "damaged.bak"
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.bak"
    truncated.write_bytes(out.read_bytes()[:-10])  # into the checksum
    foreign = tmp_path / "foreign.bak"
    foreign.write_text("not a backup\n")
    for path, why in ((damaged, "checksum mismatch"), (truncated, "checksum mismatch"),
                      (foreign, "not a nokvpy backup"), (tmp_path / "missing.bak", "No such file")):
        target = tmp_path / f"never-{path.stem}"
        result = nokv("restore", path, "--dir", target)
        assert why in one_line_error(result, 1), result.stderr
        assert not Path(target).exists()
