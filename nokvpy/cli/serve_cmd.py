"""`nokv metaroot serve`, `nokv coordinator serve`, `nokv store serve`."""

from __future__ import annotations


def run(args) -> int:
    if args.command == "metaroot":
        from metaroot.main import main

        return main(args)
    if args.command == "coordinator":
        from coordinator.main import main

        return main(args)
    from raftstore.main import main

    return main(args)
