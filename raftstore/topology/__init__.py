"""raftstore.topology: the topology runtime of a store, one module per operation (DESIGN 4.6,
5, 7), like TiKV raftstore-v2's `operation/`.

Modules:

- `context`: what the operations may use of their store (`StoreContext`), the coordinator
  link (`RootLink`), what apply handlers see of the runtime (`ApplyContext`), the failure
  types and time budgets.
- `runtime`: the shared pipeline every transition follows (`Runtime`: leader checks,
  planned publish, `run_transition`, fenced `propose`, leader transfer).
- `service`: `Topology`, the runtime wired into a store: the `AdminRequest` RPC, scheduler
  operations from heartbeats, apply follow-ups, status.
- operations: `split`, `merge`, `membership` (peer addition / removal), `tombstone` (the
  tombstone rule and region removal), `compensation` (fence, then compensate or drive
  forward), `apply` (topology commands at apply time), `outbox` (the durable publish outbox
  and its publisher), `lifecycle` (the stage of each TransitionID; pure).

Import the submodules directly; this package re-exports nothing, so importing a pure piece
(`lifecycle`, `tombstone`) never pulls in the runtime.
"""
