"""Read consistency (DESIGN 8, reference 4.2): when may an admitted read look at LMDB.

Owns: the read barrier of each `ReadMode`:
- LINEARIZABLE: ReadIndex on the leader (lease-based while check-quorum holds the lease,
  else a heartbeat round), then wait until the peer applied that index.
- FOLLOWER: ReadIndex through this (follower) peer; raft forwards it to the leader, the
  answer is served from this peer's state once applied. No answer in time -> STALE.
- BOUNDED_STALE: no barrier; admission already checked the budget, the answer reports how
  stale it was (`stale_by_index`, `stale_by_ms`).
Never reads data itself (the store does, right after the barrier) and never proposes.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from nokvpy.protocol import AdmissionReason
from nokvpy.protocol.store_rpc import ReadMode
from nokvpy.replication.driver import Driver, ProposalError
from raftstore.admission import stale_by
from raftstore.peer import Peer

# A ReadIndex that gets no answer within this bound (no leader, partition) is refused so the
# client can try elsewhere, instead of waiting out its whole deadline.
READ_INDEX_TIMEOUT = 2.0


@dataclass(slots=True, frozen=True)
class ReadPoint:
    read_index: int
    stale_by_index: int = 0
    stale_by_ms: int = 0


class ReadRefusedError(Exception):
    def __init__(self, reason: AdmissionReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


async def read_barrier(driver: Driver, peer: Peer, mode: ReadMode, deadline: float,
                       timeout: float = READ_INDEX_TIMEOUT) -> ReadPoint:
    """Wait until `peer` may serve a read at `mode`; raises ReadRefusedError."""
    if mode == ReadMode.BOUNDED_STALE:
        lag, age_ms = stale_by(peer.view(trio.current_time()))
        return ReadPoint(peer.sm.applied, lag, age_ms)
    group = peer.group
    assert group is not None
    refused = (AdmissionReason.NOT_LEADER if mode == ReadMode.LINEARIZABLE
               else AdmissionReason.STALE)
    index = -1
    if mode == ReadMode.LINEARIZABLE:
        lease = driver.lease_read_index(group)
        if lease is not None and group.applied >= lease:
            return ReadPoint(lease)  # the common case: no loop turn, no wait
    with trio.move_on_at(min(deadline, trio.current_time() + timeout)):
        try:
            index = await driver.read_index(group)
        except ProposalError as exc:
            raise ReadRefusedError(refused, f"read index refused on peer {peer.peer_id}: "
                                   f"{exc}") from None
        await driver.wait_applied(group, index)
        if group.stopped:
            raise ReadRefusedError(AdmissionReason.NOT_HOSTED,
                                   f"region {peer.region_id} was removed during the read")
        return ReadPoint(index)
    if trio.current_time() >= deadline:
        raise ReadRefusedError(AdmissionReason.TIMED_OUT,
                               "the deadline passed while waiting for the read index"
                               + (" to apply" if index >= 0 else ""))
    if index >= 0:
        raise ReadRefusedError(refused, f"peer {peer.peer_id} did not apply read index {index} "
                               f"within {timeout}s")
    raise ReadRefusedError(refused, f"no read index confirmed for peer {peer.peer_id} within "
                           f"{timeout}s (no reachable leader)")
