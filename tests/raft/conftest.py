"""Reports what the randomized raft simulator injected over the whole session."""

from __future__ import annotations

from .simulator import TOTALS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TOTALS.schedules:
        terminalreporter.write_sep("-", "raft simulator")
        terminalreporter.write_line(TOTALS.summary())
