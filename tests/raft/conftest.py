"""Reports what the randomized raft simulator injected over the whole session."""

from __future__ import annotations

from .simulator import REPORT, TOTALS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TOTALS.schedules or REPORT:
        terminalreporter.write_sep("-", "raft simulator")
        terminalreporter.write_line(TOTALS.summary())
        for line in REPORT:
            terminalreporter.write_line(line)
