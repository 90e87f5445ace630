"""The argument types of the `nokv` command: each checks its text while parsing, so a bad
value is a usage error (one line, exit status 2) before anything runs.

Owns: `key_text` (UTF-8 or 0x-hex keys and values), `positive`, `non_negative`, `addresses`
(`host:port[,host:port]`), `metrics_address` (a `--metrics-addr`, a wildcard refused),
`advertise_address` (an `--advertise-addr`: a port, no wildcard), `peer_entry` (a metaroot
`--peer ID=HOST:PORT`) and `is_wildcard`. Each numeric check carries `kind` (int or float),
the value type a config file must give for it (nokvpy.cli.configfile). Never converts what
it checked (the commands do) and never does I/O; imports the RPC layer only when a check
needs it (every `nokv` invocation parses arguments, `--help` included).
"""

from __future__ import annotations

import argparse


def key_text(text: str) -> str:
    """A key or value argument: `0x...` is hex, anything else UTF-8. Checked while parsing, so a
    malformed one is a usage error; the string itself is kept (data_cmd converts it)."""
    if text.startswith("0x"):
        try:
            bytes.fromhex(text[2:])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad hex {text!r}: expected 0x followed by an even number of hex digits") from None
    return text


def positive(kind):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    check.__name__ = f"positive {kind.__name__}"
    check.kind = kind
    return check


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


non_negative.kind = int


def addresses(text: str) -> str:
    """`--coordinator host:port[,host:port]`: checked while parsing, so `localhost` (no port)
    is a usage error. The text itself is kept (the commands split it)."""
    from nokvpy.rpc.identity import parse_addr

    addrs = [a.strip() for a in text.split(",") if a.strip()]
    if not addrs:
        raise argparse.ArgumentTypeError("no address given: expected host:port[,host:port]")
    for addr in addrs:
        try:
            parse_addr(addr)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad address {addr!r}: expected host:port (for example 127.0.0.1:2379)") from None
    return text


def metrics_address(text: str) -> str:
    """`--metrics-addr host:port`: checked while parsing, so a wildcard (0.0.0.0, ::) or a
    malformed address is a usage error. The text itself is kept."""
    from nokvpy.rpc.metrics_http import MetricsAddressError, parse_metrics_addr

    try:
        parse_metrics_addr(text)
    except MetricsAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def is_wildcard(host: str) -> bool:
    """A host that means every interface (0.0.0.0, ::, *, empty): others cannot dial it."""
    import ipaddress

    host = host.strip().strip("[]")
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        return False


def advertise_address(text: str) -> str:
    """`--advertise-addr host:port`: the address other processes and clients dial, so it
    needs a port (1-65535) and may not be a wildcard. The text itself is kept."""
    from nokvpy.rpc.identity import parse_addr

    text = text.strip()
    try:
        host, port = parse_addr(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad address {text!r}: expected host:port (for example 10.0.0.5:20160)") from None
    if is_wildcard(host):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a wildcard: advertise an address others can dial (for example "
            f"10.0.0.5:{port})")
    if not 0 < port <= 65535:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: the port must be 1-65535")
    return text


def peer_entry(text: str) -> str:
    """A metaroot `--peer ID=HOST:PORT`. The text itself is kept (metaroot.main splits it)."""
    from nokvpy.rpc.identity import parse_addr

    ident, sep, addr = text.partition("=")
    try:
        if not sep or not ident.isdigit():
            raise ValueError(text)
        parse_addr(addr)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad peer {text!r}: expected ID=HOST:PORT (for example 1=127.0.0.1:2380)") from None
    return text
