"""What every `nokv` subcommand module shares with the entry point (`nokvpy.cli.main`).

Owns: `CliError` (an expected failure: one line on stderr, exit status 1), `remote_text` (a
remote error as `kind/reason: message`), `one_line_errors` (a client or RPC failure turned
into a `CliError`) and `use_tls` (the process-wide TLS of the RPC
layer, from the --tls-* flags). Never parses arguments and never prints: the entry point
does both, and imports the subcommand modules lazily, so they import this module instead of
`nokvpy.cli.main` (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


def use_tls(files: dict[str, str] | None) -> None:
    """Make `files` the TLS of every RPC server and client of this process (CliError when a
    file cannot be loaded)."""
    if not files:
        return
    from nokvpy.rpc import tls

    try:
        tls.configure(files).check()
    except tls.TlsConfigError as exc:
        raise CliError(str(exc)) from None


def remote_text(exc) -> str:
    """A remote error as `kind/reason: message`, without its details (machine hints)."""
    text = exc.kind + (f"/{exc.reason}" if exc.reason else "")
    return text + (f": {exc.message}" if exc.message else "")


@contextmanager
def one_line_errors(unavailable: Callable[[Any], str] = str) -> Iterator[None]:
    """Turn the failures of a command's client calls into one-line `CliError`s
    (`unavailable` words an UnavailableError, e.g. naming the addresses tried). Imports the
    client and RPC layers when used, not at start-up (as `use_tls` does)."""
    from nokvpy.client.errors import NokvError, UnavailableError
    from nokvpy.rpc import RemoteError, RpcTimeoutError, RpcUnavailableError

    try:
        yield
    except UnavailableError as exc:
        raise CliError(unavailable(exc)) from None
    except NokvError as exc:
        raise CliError(f"{type(exc).__name__}: {exc}") from None
    except RemoteError as exc:
        raise CliError(remote_text(exc)) from None
    except (RpcUnavailableError, RpcTimeoutError) as exc:
        raise CliError(f"{type(exc).__name__}: {exc}") from None
