"""metaroot: the durable owner of cluster truth (DESIGN 1, 4.1, 4.2, 6).

Pure core: `metaroot.state` (RootState: apply / validate / idempotency) over
`metaroot.facts` (its fields, reads and checkpoint), `metaroot.handlers` (what each event
changes), `metaroot.validate` (field and state checks), `metaroot.classify` (transition
situations and the decision table), `metaroot.errors` (RootEventRejected),
`metaroot.persistent` (PMap, RangeIndex) and `metaroot.grants` (authority grant commands,
era fences, audit). The log, checkpoint storage and the service live in their own modules
and are not imported here.
"""

from metaroot.classify import Situation, classify
from metaroot.errors import RootEventRejected
from metaroot.grants import audit, fence_violation, live_grant, plan_grant_command
from metaroot.state import RootState
from nokvpy.protocol.transitions import transition_id, transition_kind

__all__ = [
    "RootEventRejected",
    "RootState",
    "Situation",
    "audit",
    "classify",
    "fence_violation",
    "live_grant",
    "plan_grant_command",
    "transition_id",
    "transition_kind",
]
