"""raftstore: the execution plane of nokvpy (DESIGN section 5).

A store process hosts many region peers (one raft group each) on the shared ready-loop driver
(`nokvpy.replication.driver`), applies their committed entries to the shared LMDB KV table,
and serves KV and admin RPCs behind admission. Modules:

- `main`: process wiring (`nokv store serve`), start-up refusals, graceful stop.
- `store`: the hosted peer table, region removal, admission and refusals, heartbeat reports,
  status wiring; `traffic`: the raft traffic gate and outgoing routing; `kvpath`: the read
  and write paths; `status`: the `ExecutionStatus` body and the outbox operator RPC.
- `peer`: one region replica (routing of raft node ids to stores, bootstrap).
- `apply`: the KV state machine of a region (overlay, replay pointer, snapshots).
- `commands`: entry payloads (records in `nokvpy.protocol.raftstore_cmds`, tags 450-499).
- `admission`: the pure admission decision and every refusal; `reads`: read barriers per
  read mode.
- `execution`: the one outcome state machine, last admissions, transition records.
- `restart`: RestartState derivation over localmeta (pure) and its loader.
- `heartbeat`: joining the cluster and heartbeating the coordinators.
- `topology/`: the topology runtime, one module per operation (split, merge, membership,
  tombstone, compensation, apply, outbox, lifecycle) over a shared runtime.

Import the submodules directly; this package re-exports nothing so that importing one
piece (say the pure `admission`) never pulls in the whole process.
"""
