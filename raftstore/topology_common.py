"""Shared pieces of the topology executors: their failure type, the forward-to-leader signal
and the time budgets. Owns nothing else; never does I/O."""

from __future__ import annotations

import os

PROPOSE_TIMEOUT = 20.0
# A planned publish whose answer did not come (timeout, coordinator unreachable) may be in
# root: it is published again (idempotent: the pending plan is found) this long.
PLAN_PUBLISH_TIMEOUT = 10.0
# How long a new learner may take to catch up before the addition is compensated
# (NOKV_CATCH_UP_TIMEOUT seconds overrides it).
CATCH_UP_TIMEOUT = float(os.environ.get("NOKV_CATCH_UP_TIMEOUT", "120"))
FREEZE_TIMEOUT = 30.0
TRANSFER_TIMEOUT = 8.0
WAIT_TERMINAL = 2.0  # wait=True: how long to wait for the terminal publish after apply


class ExecutionFailedError(Exception):
    """Execution of a planned transition failed before (known or possibly) applying."""

    def __init__(self, evidence: str, known_not_applied: bool = True):
        super().__init__(evidence)
        self.evidence = evidence
        self.known_not_applied = known_not_applied


class ForwardToLeaderError(Exception):
    """This store does not lead the region; `leader_store` does (forward the request once)."""

    def __init__(self, leader_store: int):
        super().__init__(f"forward to store {leader_store}")
        self.leader_store = leader_store
