"""jepsen-lite: fault-injection harness of nokvpy; this package part holds the history
format and the checkers.

Owns: recording and loading histories (:mod:`.history`), single-key models
(:mod:`.models`), the per-key linearizability checker (:mod:`.linearizable`), the route,
transition and lost-write checkers (:mod:`.checkers`) and the command line (:mod:`.cli`).
Never starts processes or injects faults itself.
"""

from .checkers import (
    append_final_reads,
    check_acknowledged_writes,
    check_route_reads,
    check_transitions,
    check_with_final_reads,
)
from .history import History, HistoryError, Operation, Recorder
from .linearizable import check_key, check_linearizable, shrink
from .models import MODELS, Model, ModelError, get_model

__all__ = [
    "MODELS",
    "History",
    "HistoryError",
    "Model",
    "ModelError",
    "Operation",
    "Recorder",
    "append_final_reads",
    "check_acknowledged_writes",
    "check_key",
    "check_linearizable",
    "check_route_reads",
    "check_transitions",
    "check_with_final_reads",
    "get_model",
    "shrink",
]
