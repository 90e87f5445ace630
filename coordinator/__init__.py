"""Coordinator: a rebuildable, follower-local materialized view of metaroot (DESIGN 1, 4)."""
