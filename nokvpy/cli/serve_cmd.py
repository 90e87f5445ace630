"""`nokv metaroot serve`, `nokv coordinator serve`, `nokv store serve`."""

from __future__ import annotations


def run(args) -> int:
    from nokvpy import failpoints

    # failpoints and fault rules over the wire only with --enable-failpoints (the RPC
    # servers of this process refuse FailpointSet / FailpointClear / SetFaultRules otherwise)
    failpoints.set_remote_enabled(bool(getattr(args, "enable_failpoints", False)))
    if args.command == "metaroot":
        from metaroot.main import main

        return main(args)
    if args.command == "coordinator":
        from coordinator.main import main

        return main(args)
    from raftstore.main import main

    return main(args)
