"""The run's index page (``RUN/index.html``) from results built on synthetic histories: a
well-formed page with the verdict, every checker, every nemesis window, the plot, the failing
sub-history exactly when there is one, hostile values escaped; and ``python -m jepsen_lite
index RUN_DIR``. No cluster."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from jepsen_lite import cli
from jepsen_lite.htmlindex import render_index, write_index, write_results
from jepsen_lite.report import (
    exit_code,
    nemesis_summary,
    op_counts,
    render_svg,
    summary_text,
    trim_check,
    write_subhistory,
)
from jepsen_lite.runner import RunConfig, run_checks
from test_jepsen_run_report import synthetic_history

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


class Page(HTMLParser):
    """Parses a page, checks that every opened tag is closed in order, and collects the text,
    the table rows and the attributes of every tag."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self.row_classes: list[str | None] = []
        self.chunks: list[str] = []
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in VOID:
            return
        self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(dict(attrs).get("class"))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.chunks.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def row(self, first: str) -> list[str]:
        matches = [r for r in self.rows if r and r[0] == first]
        assert matches, f"no row starting with {first!r}"
        return matches[0]

    def attrs(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def well_formed(html: str) -> Page:
    page = Page(html)
    assert not page.errors, page.errors
    assert page.stack == [], f"unclosed: {page.stack}"
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower()  # no JavaScript at all
    return page


def make_run(tmp_path, *, lost_write: bool) -> tuple[dict, object]:
    """A run directory with history, plot and results as the runner writes them."""
    history, finals = synthetic_history(lost_write=lost_write)
    checks = run_checks("register", history, {"values": finals, "missing": []})
    run_dir = tmp_path / ("bad" if lost_write else "good")
    (run_dir / "cluster" / "logs").mkdir(parents=True)
    (run_dir / "cluster" / "logs" / "store-1.log").write_text("started\n")
    history.save(run_dir / "history.jsonl")
    (run_dir / "plot.svg").write_text(render_svg(history, title="synthetic"))
    config = RunConfig(nemesis=["kill", "partition"], seed=4, dir=str(run_dir), time_limit=15.0)
    valid = False if lost_write else True
    results = {
        "dir": str(run_dir), "config": {**config.__dict__}, "reproduce": config.reproduce(),
        "seed": 4, "checks": {k: trim_check(v) for k, v in checks.items()},
        "ops": op_counts(history), "nemesis_intervals": nemesis_summary(history),
        "valid": valid, "exit_code": exit_code(valid),
        "files": {n: n for n in ("history.jsonl", "results.json", "plot.svg", "cluster")},
    }
    sub = checks["linearizable"].get("minimal_failing_subhistory")
    if sub:
        write_subhistory(run_dir / "failing-subhistory.jsonl", sub)
        results["failing_subhistory"] = "failing-subhistory.jsonl"
        results["failing_subhistory_events"] = sub
        results["files"]["failing-subhistory.jsonl"] = "failing-subhistory.jsonl"
    return results, run_dir


def test_valid_run_page(tmp_path):
    results, run_dir = make_run(tmp_path, lost_write=False)
    page = well_formed(render_index(results, run_dir))
    assert "VALID" in page.text and "INVALID" not in page.text
    assert any("valid" in (a.get("class") or "").split() for a in page.attrs("div"))
    for name in results["checks"]:
        assert page.row(name)[1] == "valid", name
    assert page.row("workload")[1] == "register"
    assert page.row("nemeses")[1] == "kill, partition"
    assert page.row("seed")[1] == "4" and page.row("duration")[1] == "15.0 s"
    assert page.row("write")[1:] == ["60", "0", "1", "0"]
    assert page.row("total")[1:] == ["122", "1", "1", "0"]
    kill, partition = page.row("kill"), page.row("partition")
    assert kill[1] == "store-1" and partition[1] == "store-2" and "mode=isolate" in partition[4]
    assert float(kill[2]) < float(kill[3]) <= float(partition[2])
    plots = [a for a in page.attrs("img") if a.get("class") == "plot"]
    assert len(plots) == 1 and plots[0]["src"].startswith("data:image/svg+xml;base64,")
    hrefs = {a.get("href") for a in page.attrs("a")}
    assert {"history.jsonl", "results.json", "plot.svg", "cluster/",
            "cluster/logs/store-1.log"} <= hrefs
    assert "Failing sub-history" not in page.text
    assert not [c for c in page.row_classes if c in ("ok", "fail", "info", "invoke")]


def test_invalid_run_page_shows_the_failing_subhistory(tmp_path):
    results, run_dir = make_run(tmp_path, lost_write=True)
    page = well_formed(render_index(results, run_dir))
    assert "INVALID" in page.text
    lin = page.row("linearizable")
    assert lin[1] == "INVALID" and "failing key k0" in lin[2]
    assert "Failing sub-history" in page.text and "--seed 4" in page.text  # reproduce
    sub = results["failing_subhistory_events"]
    sub_rows = [r for r, c in zip(page.rows, page.row_classes, strict=True)
                if c in ("ok", "fail", "info", "invoke")]
    assert len(sub_rows) == len(sub)
    assert [int(r[0]) for r in sub_rows] == [e["index"] for e in sub]
    assert any('"final": true' in r[7] for r in sub_rows)
    assert "failing-subhistory.jsonl" in {a.get("href") for a in page.attrs("a")}


def test_hostile_values_are_escaped(tmp_path):
    results, run_dir = make_run(tmp_path, lost_write=True)
    evil = '<script>alert("x")</script>'
    results["checks"]["hostile"] = {"valid": "unknown", "note": evil, "extra": evil}
    results["nemesis_intervals"][0]["target"] = evil
    results["nemesis_intervals"][0]["errors"] = [evil]
    results["failing_subhistory_events"][0]["value"] = evil
    results["config"]["workload"] = evil
    results["error"] = evil
    results["files"][evil] = evil
    html = render_index(results, run_dir)
    page = well_formed(html)
    assert "<script" not in html and "&lt;script&gt;" in html
    assert page.row("hostile")[2] == evil and page.row("workload")[1] == evil
    assert evil in page.row("kill")[1] and evil in page.row("kill")[5]
    assert evil in page.text  # shown as text, intact


def test_write_results_then_regenerate_with_the_cli(tmp_path, capsys):
    results, run_dir = make_run(tmp_path, lost_write=False)
    logged: list[str] = []
    write_results(run_dir, results, logged.append)
    assert results["files"]["index.html"] == "index.html"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["files"]["index.html"] == "index.html"
    index = run_dir / "index.html"
    assert "VALID" in well_formed(index.read_text()).text
    assert logged == [summary_text(results).splitlines()[-1]]
    assert f"index page {index}" in logged[0]

    index.unlink()
    assert cli.main(["index", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(index)
    assert index.read_text() == render_index(saved, run_dir)
    assert write_index(run_dir, saved) == index

    assert cli.main(["index", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "results.json" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    assert cli.main(["index", str(tmp_path / "broken")]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_a_page_that_fails_to_render_costs_no_results(tmp_path, monkeypatch):
    from jepsen_lite import htmlindex

    def broken(results, run_dir):
        raise ValueError("boom")

    results, run_dir = make_run(tmp_path, lost_write=False)
    monkeypatch.setattr(htmlindex, "render_index", broken)
    write_results(run_dir, results)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["index_error"] == "ValueError: boom" and "index.html" not in saved["files"]
    assert not (run_dir / "index.html").exists()
    assert "index page" not in summary_text(saved)


def test_page_of_an_empty_or_aborted_run(tmp_path):
    results = {"dir": str(tmp_path), "valid": "unknown", "exit_code": 2,
               "error": "RuntimeError: cluster never served", "config": {"nemesis": []}}
    page = well_formed(render_index(results, tmp_path))
    assert "UNKNOWN" in page.text and "cluster never served" in page.text
    assert "no checker ran" in page.text and "no plot.svg" in page.text
    assert "no nemesis windows" in page.text
