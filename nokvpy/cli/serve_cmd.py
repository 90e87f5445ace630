"""`nokv metaroot serve`, `nokv coordinator serve`, `nokv store serve`.

Owns: what every serve command sets up before its process's `main` runs (log format,
remote failpoints, TLS) and handing the parsed arguments to it (`--metrics-addr`, checked
while parsing, is served by each process's main through nokvpy.rpc.metrics_http). The
arguments arrive complete: the `--config` file merged under the flags, the required flags
checked and `--advertise-addr` resolved (nokvpy.cli.configfile). Never serves anything
itself.
"""

from __future__ import annotations


def run(args) -> int:
    from nokvpy import failpoints, logfmt

    # --log-level / --log-format, set before the service starts (its own basicConfig is then
    # a no-op); every line names the process
    logfmt.configure(f"{args.command}-{args.id}", getattr(args, "log_level", "info"),
                     getattr(args, "log_format", "text"))

    # failpoints and fault rules over the wire only with --enable-failpoints (the RPC
    # servers of this process refuse FailpointSet / FailpointClear / SetFaultRules otherwise)
    failpoints.set_remote_enabled(bool(getattr(args, "enable_failpoints", False)))
    # --tls-cert/--tls-key/--tls-ca: every RpcServer and RpcClient of this process talks TLS
    # (nokvpy.rpc.tls.configure; the files are loaded now, so a bad one fails before serving)
    from nokvpy.cli.common import use_tls

    use_tls(getattr(args, "tls", None))
    if args.command == "metaroot":
        from metaroot.main import main

        return main(args)
    if args.command == "coordinator":
        from coordinator.main import main

        return main(args)
    from raftstore.main import main

    return main(args)
