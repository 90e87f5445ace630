"""The `--config` file of the serve commands, and the arguments a serve command runs with.

Owns: reading a TOML file (`tomllib`) of serve flags and checking every key and value of it
with the flag's own argparse action (its `type` callable and `choices`, so a file value is
checked exactly as the flag is); the precedence flag > file > environment > default; the
flags a serve command needs, from either place; the advertised address (`--advertise-addr`,
default the listen address, a wildcard refused); and `nokv config show`. Every problem is a
usage error (one line naming the file, the key and what was expected, exit status 2) found
before anything starts. Never starts a process, never writes a file.

File layout: a top-level key applies to every kind and must be a flag all three serve
commands have (`cluster-id`, `log-level`, `tls-cert`, ...); a `[metaroot]`, `[coordinator]`
or `[store]` table holds that kind's keys and overrides a top-level one, so one file can
serve every process of a host. A key is a long flag without its leading dashes, written with
`-` or `_` (`tick-ms`, `tick_ms`). A flag taking a list (`peer`) takes a TOML array, and
`peer` also a table of id = "host:port"; `coordinator` and `metaroot` take an array or a
comma-separated string. Paths are taken as given, relative to the working directory, as on
the command line.
"""

from __future__ import annotations

import argparse
import json
import os

from nokvpy.cli.argtypes import is_wildcard
from nokvpy.cli.flags import SERVE_ENV, SERVE_KINDS, SERVE_REQUIRED, tls_flags

NOT_SETTABLE = ("help", "config")  # the file cannot name itself
COMMA_LISTS = ("coordinator", "metaroot")  # a TOML array is joined with commas


class ConfigError(Exception):
    """A --config file that cannot be used: the message names the file, the key and what was
    expected."""


# ---- the parsers ----------------------------------------------------------------------------

def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def serve_parser(root: argparse.ArgumentParser, kind: str) -> argparse.ArgumentParser:
    """The parser of `nokv KIND serve` inside the `nokv` parser `root`."""
    return subparser(subparser(root, kind), "serve")


def settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action of every serve flag a file may set, in the parser's order."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in NOT_SETTABLE}


def key_name(dest: str) -> str:
    return dest.replace("_", "-")


# ---- reading and checking a file ------------------------------------------------------------

def read(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not a valid TOML file: {exc}") from None


def file_values(root: argparse.ArgumentParser, kind: str, path: str) -> dict:
    """dest -> value for `nokv KIND serve` from the file at `path`: its top-level keys, then
    its [KIND] table over them. The whole file is checked, every kind's table included, so a
    mistake surfaces whichever process reads the file first."""
    parsers = {k: settable(serve_parser(root, k)) for k in SERVE_KINDS}
    common = {d: a for d, a in parsers[kind].items()
              if all(d in parsers[k] for k in SERVE_KINDS)}
    data = read(path)
    top: dict = {}
    tables: dict[str, dict] = {}
    for key, value in data.items():
        if key in SERVE_KINDS:
            if not isinstance(value, dict):
                raise ConfigError(f"--config {path}: {key}: expected a table [{key}] of "
                                  f"`nokv {key} serve` flags, got {shown(value)}")
            tables[key] = value
        else:
            top[key] = value
    values = check_table(path, None, top, common, others=parsers)
    for k, table in tables.items():
        checked = check_table(path, k, table, parsers[k])
        if k == kind:
            values.update(checked)
    return values


def check_table(path: str, kind: str | None, table: dict, actions: dict[str, argparse.Action],
                others: dict[str, dict] | None = None) -> dict:
    """dest -> value of one table: the [KIND] one, or the top level (`kind` None, `others`:
    every kind's flags, to say where a key that is not common belongs)."""
    out: dict = {}
    spelled: dict[str, str] = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        here = f"--config {path}: {f'[{kind}] ' if kind else ''}{key}"
        if dest in spelled:
            raise ConfigError(f"{here}: given twice (as {spelled[dest]} too)")
        spelled[dest] = key
        if dest not in actions:
            raise ConfigError(f"{here}: {unknown(dest, kind, others)}")
        try:
            out[dest] = convert(actions[dest], dest, value)
        except ConfigError as exc:
            raise ConfigError(f"{here}: {exc}") from None
    return out


def unknown(dest: str, kind: str | None, others: dict[str, dict] | None) -> str:
    if kind:
        return f"unknown key: not a flag of `nokv {kind} serve`"
    kinds = [k for k in SERVE_KINDS if dest in (others or {}).get(k, {})]
    if kinds:
        return ("not a flag of every serve command: put it in a "
                + " or ".join(f"[{k}]" for k in kinds) + " table")
    return ("unknown key: expected a flag every serve command has, or a [metaroot], "
            "[coordinator] or [store] table")


def value_kind(action: argparse.Action) -> type:
    """The TOML type a file gives for `action`: int, float or str (the flag's own type)."""
    t = action.type
    if t in (int, float):
        return t
    return getattr(t, "kind", str)


def convert(action: argparse.Action, dest: str, value):
    """A file value, checked as the flag's text would be, converted by the flag's type."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {shown(value)}")
        return value
    if isinstance(action, argparse._AppendAction):
        if dest == "peer" and isinstance(value, dict):
            bad = [v for v in value.values() if not isinstance(v, str)]
            if bad:
                raise ConfigError(f"expected a table of id = \"host:port\", got {shown(bad[0])}")
            value = [f"{k}={v}" for k, v in value.items()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"expected an array of strings, got {shown(value)}")
        return [checked(action, v) for v in value]
    kind = value_kind(action)
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {shown(value)}")
    elif kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"expected a number, got {shown(value)}")
    else:
        if dest in COMMA_LISTS and isinstance(value, list) \
                and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            also = " or an array of strings" if dest in COMMA_LISTS else ""
            raise ConfigError(f"expected a string{also}, got {shown(value)}")
    return checked(action, value if isinstance(value, str) else str(value))


def checked(action: argparse.Action, text: str):
    """`text` through the flag's own type callable and choices (as argparse would)."""
    value = text
    if action.type is not None:
        try:
            value = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ConfigError(str(exc) or f"invalid value {text!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"expected one of {', '.join(map(str, action.choices))}, "
                          f"got {shown(value)}")
    return value


def shown(value) -> str:
    """A value as the file spells it, with its TOML type."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)
    return f"{toml_value(value)} ({kind})" if not isinstance(value, dict) else kind


# ---- flag > file > environment > default ----------------------------------------------------

def names_config(argv: list[str]) -> bool:
    """Whether serve flags `argv` give --config (or an abbreviation argparse accepts)."""
    for token in argv:
        if token == "--":
            return False
        name = token.partition("=")[0]
        if len(name) > len("--co") and "--config".startswith(name):
            return True
    return False


def relax_required(root: argparse.ArgumentParser, argv: list[str]) -> None:
    """Before `nokv ARGV` is parsed: a serve command given --config may leave its required
    flags to the file (`effective` checks them once it is read)."""
    if len(argv) > 2 and argv[0] in SERVE_KINDS and argv[1] == "serve" and names_config(argv[2:]):
        for action in serve_parser(root, argv[0])._actions:
            action.required = False


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """dest -> value of the flags `argv` gives (none of the defaults; nothing required)."""
    saved = [(a, a.default, a.required) for a in parser._actions]
    try:
        for a, _, _ in saved:
            a.default, a.required = argparse.SUPPRESS, False
        return vars(parser.parse_args(argv))
    finally:
        for a, default, required in saved:
            a.default, a.required = default, required


def effective(root: argparse.ArgumentParser, kind: str, argv: list[str]):
    """(values, sources, notes) of `nokv KIND serve ARGV`: dest -> value, dest -> one of
    flag / file / env / default, dest -> how a derived default was found. A usage error
    (exit 2, one line) when the file or the result cannot be used."""
    parser = serve_parser(root, kind)
    flags = given_flags(parser, argv)
    path = flags.pop("config", None)
    try:
        from_file = file_values(root, kind, path) if path else {}
    except ConfigError as exc:
        parser.error(str(exc))
    values: dict = {"config": path}
    sources: dict = {"config": "flag" if path else "default"}
    for dest, action in settable(parser).items():
        env = SERVE_ENV.get(dest)
        if dest in flags:
            values[dest], sources[dest] = flags[dest], "flag"
        elif dest in from_file:
            values[dest], sources[dest] = from_file[dest], "file"
        elif env and env in os.environ:
            values[dest], sources[dest] = os.environ[env], "env"
        else:
            values[dest], sources[dest] = action.default, "default"
    missing = [f"--{key_name(d)}" for d in SERVE_REQUIRED[kind] if values[d] is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (as flags "
                     "or as keys of the --config file)")
    notes = advertised(parser, kind, values, sources)
    return values, sources, notes


def advertised(parser: argparse.ArgumentParser, kind: str, values: dict, sources: dict) -> dict:
    """Set values["advertise_addr"] to the address others dial: --advertise-addr, else (a
    metaroot) this peer's --peer entry, else --listen, which then may not be a wildcard."""

    def flag(dest: str, text: str) -> str:  # the flag, or the key of the file that gave it
        if sources[dest] == "file":
            return f"--config {values['config']}: {key_name(dest)} = {toml_value(text)}"
        return f"--{key_name(dest)} {text}"

    given = values.get("advertise_addr")
    if kind == "metaroot":
        own = [p.partition("=")[2] for p in values["peer"]
               if p.partition("=")[0] == str(values["id"])]
        if own and given and own[-1] != given:
            parser.error(f"{flag('advertise_addr', given)} and this peer's --peer entry "
                         f"{values['id']}={own[-1]} disagree: other peers dial the --peer "
                         "address (give one of them, or the same address)")
        if own and not given:
            if is_wildcard(own[-1].rpartition(":")[0]):
                entry = f"{values['id']}={own[-1]}"
                parser.error(f"{flag('peer', entry)} is a wildcard address, which other "
                             "peers cannot dial: give this peer's reachable address")
            values["advertise_addr"] = own[-1]
            return {"advertise_addr": "this peer's --peer entry"}
    if given:
        return {}
    listen = values["listen"]
    host, sep, _ = listen.rpartition(":")
    if sep and is_wildcard(host):
        parser.error(f"{flag('listen', listen)} is a wildcard address, which other processes "
                     "and clients cannot dial: pass --advertise-addr HOST:PORT (or set "
                     "advertise-addr in the --config file), the address they should use")
    values["advertise_addr"] = listen  # a malformed --listen is refused when serving starts
    return {"advertise_addr": "the --listen address"}


def resolve(root: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Fill the parsed `nokv KIND serve` arguments `args` with the effective values (the
    --config file's included) and check them; `argv` is what follows `KIND serve`."""
    values, sources, _ = effective(root, args.command, argv)
    for dest, value in values.items():
        setattr(args, dest, value)
    args.config_sources = sources


# ---- nokv config show -----------------------------------------------------------------------

def show(root: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    """`nokv config show --kind KIND [--config FILE] [--json] [serve flags]`: what `nokv KIND
    serve` would run with, or the usage error it would stop at."""
    kind = args.kind
    argv = list(argv) + (["--config", args.config] if args.config else [])
    values, sources, notes = effective(root, kind, argv)
    tls_flags(serve_parser(root, kind), argparse.Namespace(command=kind, **values))
    if args.json:
        out = {}
        for dest, value in values.items():
            if dest == "config":
                continue
            out[key_name(dest)] = {"value": value, "source": sources[dest]}
            if dest in notes and sources[dest] == "default":
                out[key_name(dest)]["note"] = notes[dest]
        print(json.dumps({"kind": kind, "config": values["config"], "values": out}, indent=2))
    else:
        print(render(kind, values, sources, notes))
    return 0


def render(kind: str, values: dict, sources: dict, notes: dict) -> str:
    """The effective values as a TOML file (one [KIND] table) that `--config` reads back,
    each line's source in a comment; a value that is not set is a comment line."""
    lines = [f"# nokv {kind} serve: effective configuration (flag > file > env > default)"]
    if values["config"]:
        lines.append(f"# --config {values['config']}")
    lines.append(f"[{kind}]")
    rows = []
    for dest, value in values.items():
        if dest == "config":
            continue
        source = sources[dest]
        if dest in notes and source == "default":
            source = f"default: {notes[dest]}"
        text = (f"# {key_name(dest)} is not set" if value is None
                else f"{key_name(dest)} = {toml_value(value)}")
        rows.append((text, source))
    width = max(len(text) for text, _ in rows)
    lines += [f"{text:<{width}}  # {source}" for text, source in rows]
    return "\n".join(lines)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
