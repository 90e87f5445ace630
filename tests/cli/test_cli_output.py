"""`nokvpy.cli.output`: how records, tables and progress look (no cluster needed)."""

from __future__ import annotations

import enum

import pytest

from nokvpy.cli import output
from nokvpy.cli.output import Progress, kv_lines, parse_key, readable, show_key, table


class Color(enum.Enum):
    RED = 1


def test_keys_round_trip_between_text_and_hex():
    assert parse_key("user/1") == b"user/1"
    assert parse_key("0x00ff") == b"\x00\xff"
    assert show_key(b"user/1") == "user/1"
    assert show_key(b"\x00\xff") == "0x00ff"
    assert show_key(b"0x41") == "0x30783431"  # text that looks like hex is shown as hex
    assert parse_key(show_key(b"0x41")) == b"0x41"
    with pytest.raises(ValueError, match="bad hex key"):
        parse_key("0xZZ")


def test_table_aligns_columns_and_formats_values():
    text = table([{"name": "a", "ok": True, "n": None, "tags": [1, 2], "c": Color.RED},
                  {"name": "longer", "ok": False, "n": 2.5, "tags": [], "c": Color.RED}])
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "OK", "N", "TAGS", "C"]
    assert lines[1].split() == ["a", "yes", "-", "1,2", "RED"]
    assert lines[2].split() == ["longer", "no", "2.5", "RED"]
    assert len({line.index(v) for line, v in zip(lines, ["OK", "yes", "no"], strict=True)}) == 1
    assert table([]) == "(none)"


def test_records_print_scalars_aligned_and_nested_records_as_blocks():
    text = kv_lines({
        "store_id": 1,
        "token": {"term": 2, "index": 19},  # small: on its key's line
        "reasons": [],
        "message": "",
        "restart_state": {"state": "READY", "reasons": ["a", "b"], "needs": "none", "x": 1, "y": 2},
        "regions": {"1": {"leader": True, "applied": 8}, "2": {"leader": False, "applied": 3}},
        "steps": [{"age_ms": i, "state": "FRESH"} for i in range(20)],
    })
    lines = text.splitlines()
    assert lines[0] == "store_id       1"
    assert lines[1] == "token          term=2 index=19"
    assert lines[2] == "reasons        -" and lines[3] == "message        -"
    i = lines.index("restart_state:")
    assert lines[i + 1] == "  state    READY" and lines[i + 2] == "  reasons  a,b"
    i = lines.index("regions:")  # a record of records: a table keyed by the singular name
    assert lines[i + 1].split() == ["REGION", "LEADER", "APPLIED"]
    assert lines[i + 2].split() == ["1", "yes", "8"]
    i = lines.index("steps:")  # a long list of records: its last rows and a note
    assert lines[i + 1].split() == ["AGE_MS", "STATE"]
    assert lines[i + 2].split() == ["8", "FRESH"] and lines[-1].strip().startswith("(8 earlier")


def test_wide_record_of_records_is_transposed():
    wide = {f"field_number_{i}": f"value-{i}" for i in range(10)}
    lines = kv_lines({"duties": {"alloc_id": wide, "tso": wide}}).splitlines()
    assert lines[0] == "duties:"
    assert lines[1].split() == ["duty", "alloc_id", "tso"]
    assert lines[2].split() == ["field_number_0", "value-0", "value-0"]
    assert max(map(len, lines)) <= output.TABLE_WIDTH


def test_progress_prints_each_change_once(capsys):
    progress = Progress("cluster up")
    for text in ("a", "a", "b", "b", "a"):
        progress.update(text)
    progress.done("serving")
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == ["cluster up: a", "cluster up: b", "cluster up: a"]
    assert err[3].startswith("cluster up: serving (") and err[3].endswith("s)")
    quiet = Progress("x", enabled=False)
    quiet.update("a")
    quiet.done()
    assert capsys.readouterr().err == ""


def test_long_values_wrap_under_themselves():
    message = "connect failed: " + "all attempts to connect failed " * 8
    lines = kv_lines({"subscription": {"connected_to": "127.0.0.1:1", "last_error": message}}).splitlines()
    assert lines[0] == "subscription:"
    assert lines[2].startswith("  last_error    connect failed:")
    assert all(len(line) <= output.LINE_WIDTH for line in lines) and len(lines) > 3
    assert lines[3].startswith(" " * len("  last_error    ")) and lines[3].strip()
    assert " ".join(line.strip() for line in lines[2:]).endswith(message.strip())


def test_messages_show_keys_and_enum_names_not_python_reprs():
    assert readable("route for b'm1' rejected") == "route for m1 rejected"
    assert readable("split key b'' is not inside") == 'split key "" is not inside'
    assert readable("key b'\\x00\\xff' and b\"it's\"") == "key 0x00ff and it's"
    assert readable("<AdmissionClass.TOPOLOGY: 3> / <AdmissionReason.INVALID: 1>") == "TOPOLOGY / INVALID"
    assert readable("Bob's verb's text, <not an enum>") == "Bob's verb's text, <not an enum>"


def test_errors_are_described_without_reprs():
    from nokvpy.cli.main import CliError, describe
    from nokvpy.rpc import RemoteError

    remote = RemoteError("rejected", "INVALID", "split key b'm1' is not inside region 5",
                         {"admission": object()})
    assert describe(remote) == "RemoteError: rejected/INVALID: split key m1 is not inside region 5"
    assert describe(CliError("no key b'k' here")) == "no key k here"
    assert describe(ExceptionGroup("x", [ValueError("bad b'\\xff'")])) == "ValueError: bad 0xff"
