"""`nokv kv txn`, `nokv kv delete-range` and the cut of `nokv kv scan` against the shared
local cluster: the branch taken and the gets (text and `--json`), mod-index compares, hex
keys, one-line errors, and limits that say when they cut."""

from __future__ import annotations

import json

from cli_harness import ok, one_line_error, parsed


def test_kv_txn_branches_gets_and_mod_compares(cluster):
    ok(cluster.run("kv", "put", "txncli/a", "1"))
    then = cluster.run("kv", "txn", "--if", "txncli/a == 1", "--if", "txncli/b missing",
                       "--then", "put txncli/b 'two words'", "--then", "get txncli/b",
                       "--else", "get txncli/a")
    lines = ok(then).splitlines()
    assert lines[0].startswith("OK: the --then branch ran (applied at index ")
    assert lines[1].split() == ["GET", "VALUE", "MOD"]
    assert lines[2].startswith("txncli/b") and "two words" in lines[2]

    other = cluster.run("kv", "txn", "--if", "txncli/a != 1", "--then", "delete txncli/a",
                        "--else", "get txncli/a", "--else", "get txncli/none", "--json")
    assert other.returncode == 1  # the --else branch ran
    body = json.loads(other.stdout)
    assert body["succeeded"] is False and body["branch"] == "else"
    got, missing = body["gets"]
    assert got["key"] == "txncli/a" and got["value"] == "1" and got["found"] is True
    assert got["mod_index"] > 0 and got["mod_region"] > 0
    assert missing == {"key": "txncli/none", "found": False, "value": None, "mod_index": 0,
                       "mod_region": 0}

    # a mod compare with the index@region a get printed holds once; the write moves it
    mod = f"{got['mod_index']}@{got['mod_region']}"
    first, second = (cluster.run("kv", "txn", "--if", f"txncli/a mod == {mod}", "--then",
                                 f"put txncli/a {v}", "--json") for v in ("2", "3"))
    assert parsed(first)["succeeded"] is True
    assert second.returncode == 1 and '"succeeded": false' in second.stdout
    assert ok(cluster.run("kv", "get", "txncli/a")).strip() == "2"
    created = cluster.json("kv", "txn", "--if", "txncli/new mod == 0",
                           "--then", "put txncli/new x", "--then", "get 0x74786e636c692f6e6577")
    assert created["succeeded"] and created["gets"][0]["value"] == "x"

    # binary keys and values as 0x-hex, both ways
    binary = cluster.json("kv", "txn", "--then", "put 0x74786e636c692f00ff 0x00ff",
                          "--then", "get 0x74786e636c692f00ff")
    assert binary["gets"][0]["key"] == "0x74786e636c692f00ff"
    assert binary["gets"][0]["value"] == "0x00ff"


def test_kv_txn_errors_are_one_line(cluster):
    bad_if, bad_then, nothing, bad_hex, unquoted = cluster.many(
        ("kv", "txn", "--if", "txncli/a is 1"),
        ("kv", "txn", "--then", "put txncli/a"),
        ("kv", "txn"),
        ("kv", "txn", "--then", "get 0xZZ"),
        ("kv", "txn", "--then", "put txncli/a 'open"))
    assert "bad --if 'txncli/a is 1': expected 'KEY == VALUE'" in one_line_error(bad_if, 1)
    assert "bad --then 'put txncli/a': expected 'put KEY VALUE'" in one_line_error(bad_then, 1)
    assert "nothing to do" in one_line_error(nothing, 1)
    assert "bad hex key '0xZZ'" in one_line_error(bad_hex, 1)
    assert "No closing quotation" in one_line_error(unquoted, 1)


def test_kv_delete_range_and_scan_say_when_the_limit_cut_them(cluster):
    for result in cluster.many(*(("kv", "put", f"txdr/{i}", str(i)) for i in range(5))):
        ok(result)
    page = cluster.json("kv", "scan", "txdr/", "txdr0", "--limit", "2")
    assert [r["key"] for r in page["pairs"]] == ["txdr/0", "txdr/1"]
    assert page["more"] is True and page["next_key"] == "txdr/2"
    whole = cluster.json("kv", "scan", "txdr/", "txdr0")
    assert whole["more"] is False and whole["next_key"] is None

    cut = cluster.json("kv", "delete-range", "txdr/", "txdr0", "--limit", "2")
    assert (cut["deleted"], cut["more"], cut["next_key"]) == (2, True, "txdr/2")
    assert [r["deleted"] for r in cut["regions"]] == [2]
    assert cut["regions"][0]["start"] == "txdr/" and cut["regions"][0]["applied_index"] > 0
    text = cluster.run("kv", "delete-range", "txdr/2", "txdr0", "--limit", "1")
    assert ok(text).startswith("deleted 1 key (region ")
    assert text.stderr.strip() == ("(limit 1 reached: more keys from txdr/3; run again to "
                                   "delete them)")
    rest = cluster.run("kv", "delete-range", "txdr/3", "txdr0")
    assert ok(rest).startswith("deleted 2 keys (region ") and rest.stderr == ""
    assert cluster.json("kv", "scan", "txdr/", "txdr0")["pairs"] == []

    empty, inverted, zero = cluster.many(("kv", "delete-range", "txdr/", "txdr/"),
                                         ("kv", "delete-range", "txdr0", "txdr/"),
                                         ("kv", "delete-range", "a", "b", "--limit", "0"))
    assert "empty range: start and end are both txdr/" in one_line_error(empty, 1)
    assert "inverted range: start txdr0 is after end txdr/" in one_line_error(inverted, 1)
    assert "must be greater than 0" in one_line_error(zero, 2)
