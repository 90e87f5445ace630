"""The on-disk layout of a store's LMDB environment: every named database, in one place.

Owns: database names and the key layout of each (documented here, encoded by the module that
owns the table). Never opens anything; `Env.open` declares these names up front.

| database          | key                              | value                                     | owner        |
|-------------------|----------------------------------|-------------------------------------------|--------------|
| raft_log          | group_id u64 BE, index u64 BE    | term u64 BE, type u8, data                | raftlog.py   |
| raft_state        | group_id u64 BE, tag u8          | h: hard state; t: truncated (index, term);| raftlog.py   |
|                   |                                  | s: snapshot metadata; c: conf state       |              |
| kv                | user key (1..511 bytes)          | opaque value bytes (a store's values:     | kv.py        |
|                   |                                  | raftstore's stored-value header + value)  |              |
| kv_changes        | region_id u64 BE, version u32 BE,| kind u8, key length u16 BE, key, value    | raftstore/   |
|                   | index u64 BE, seq u32 BE         | (a region's recent writes, for watches;   | changelog.py |
|                   | (all zero after the region id:   | the floor record: version u32 BE, index   |              |
|                   | the region's floor record)       | u64 BE)                                   |              |
| kv_leased         | lease id u64 BE, user key        | empty (a key written with that lease)     | leaseindex.py|
| meta_store        | b"cluster_id" / b"store_id" /    | crc32 u32 BE + u64 BE                     | localmeta.py |
|                   | b"data_format"                   |                                           |              |
| meta_regions      | region_id u64 BE                 | crc32 + opaque descriptor                 | localmeta.py |
| meta_replay       | region_id u64 BE                 | crc32 + applied index u64 + term u64      | localmeta.py |
| meta_outbox       | seq u64 BE                       | crc32 + opaque event                      | localmeta.py |
| meta_blocked      | seq u64 BE                       | crc32 + error len u32 + error + event     | localmeta.py |
| meta_tombstones   | region_id u64 BE                 | crc32 + opaque bytes                      | localmeta.py |

Big-endian integer keys sort numerically, so one raft group's entries (and one group's state
records) form one contiguous key range.
"""

from __future__ import annotations

RAFT_LOG = "raft_log"
RAFT_STATE = "raft_state"
KV = "kv"
KV_CHANGES = "kv_changes"
KV_LEASED = "kv_leased"
META_STORE = "meta_store"
META_REGIONS = "meta_regions"
META_REPLAY = "meta_replay"
META_OUTBOX = "meta_outbox"
META_BLOCKED = "meta_blocked"
META_TOMBSTONES = "meta_tombstones"

RAFT_DBS = (RAFT_LOG, RAFT_STATE)
KV_DBS = (KV, KV_CHANGES, KV_LEASED)
META_DBS = (META_STORE, META_REGIONS, META_REPLAY, META_OUTBOX, META_BLOCKED, META_TOMBSTONES)
ALL_DBS = RAFT_DBS + KV_DBS + META_DBS

MAX_KEY_SIZE = 511  # LMDB's compiled-in limit (mdb_env_get_maxkeysize)
