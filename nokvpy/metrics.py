"""Prometheus metrics: families of samples, and their text exposition format (version 0.0.4).

Owns: the data model (`Family` of counter, gauge or histogram type holding `Sample`s, and
`Histogram`, observations into fixed buckets), metric and label name validation, escaping of
label values and HELP text, `render` (families to text, refusing duplicates), `parse` (text
back to families: `nokv metrics --json` and tests), the collector protocol (`Collector`: a
callable returning families; `collect` runs several, merges families of the same name and
keeps going past a failing one) and the few builders every process kind shares
(`named_counters`, `storage_families`). Never does I/O: no sockets, files or clocks (the
HTTP endpoint, and the process's own CPU time, are `nokvpy.rpc.metrics_http`'s), and never
counts anything itself: collectors read what a process already counts.

    fam = Family("nokv_raft_applied_index", GAUGE, "Applied raft index.")
    fam.add(42, region=1)
    text = render([fam])   # '# HELP nokv_raft_applied_index Applied raft index.\\n# TYPE ...'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"
TYPES = (COUNTER, GAUGE, HISTOGRAM)
# what `parse` accepts from other exporters (rendered back as written)
PARSE_TYPES = TYPES + ("summary", "untyped")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = ("le", "quantile")  # set by the format itself, never by a caller

Labels = tuple[tuple[str, str], ...]


def check_metric_name(name: str) -> str:
    if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
        raise ValueError(f"bad metric name {name!r}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")
    return name


def check_label_name(name: str) -> str:
    if not isinstance(name, str) or not LABEL_NAME.fullmatch(name):
        raise ValueError(f"bad label name {name!r}: expected [a-zA-Z_][a-zA-Z0-9_]*")
    if name.startswith("__"):
        raise ValueError(f"bad label name {name!r}: names starting with __ are reserved")
    return name


def label_set(labels: Mapping[str, Any] | None = None, **more: Any) -> Labels:
    """Labels as a sorted tuple of (name, str(value)) pairs; names are checked."""
    merged = dict(labels or {})
    merged.update(more)
    return tuple(sorted((check_label_name(k), _label_text(v)) for k, v in merged.items()))


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_value(value)
    return str(value)


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    raise TypeError(f"a sample value must be a number, got {type(value).__name__} {value!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of the exposition: a sample name (the family's, or with a histogram's
    `_bucket` / `_sum` / `_count` suffix), its labels and its value."""

    name: str
    labels: Labels
    value: float | int

    def label(self, name: str, default: str | None = None) -> str | None:
        return dict(self.labels).get(name, default)


@dataclass(slots=True)
class Family:
    """A metric family: name, type, HELP text and samples. `add` appends counter and gauge
    samples, `add_histogram` one labelled histogram (its buckets, sum and count)."""

    name: str
    type: str
    help: str = ""
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_metric_name(self.name)
        if self.type not in PARSE_TYPES:
            raise ValueError(f"metric {self.name}: unknown type {self.type!r} "
                             f"(expected one of {', '.join(TYPES)})")

    def add(self, value: Any, labels: Mapping[str, Any] | None = None, **more: Any) -> Family:
        """A sample of a counter or gauge; labels as a mapping and/or keywords (a mapping
        for names that are Python keywords: {"class": "WRITE"}). Returns the family."""
        if self.type == HISTOGRAM:
            raise ValueError(f"histogram {self.name}: use add_histogram")
        value = _number(value)
        if self.type == COUNTER and value < 0:
            raise ValueError(f"counter {self.name}: negative value {value}")
        lset = label_set(labels, **more)
        for name, _ in lset:
            if name in RESERVED_LABELS:
                raise ValueError(f"metric {self.name}: label {name!r} is reserved")
        self.samples.append(Sample(self.name, lset, value))
        return self

    def add_histogram(self, buckets: Sequence[tuple[float, int]], count: int,
                      total: float, labels: Mapping[str, Any] | None = None,
                      **more: Any) -> Family:
        """One histogram: `buckets` as (upper bound, cumulative count) in increasing bound
        order, without +Inf (added from `count`); `total` is the sum of observations."""
        if self.type != HISTOGRAM:
            raise ValueError(f"{self.type} {self.name}: add_histogram is for histograms")
        lset = label_set(labels, **more)
        if any(name in RESERVED_LABELS for name, _ in lset):
            raise ValueError(f"histogram {self.name}: labels 'le' and 'quantile' are reserved")
        count = int(_number(count))
        previous_bound, previous_count = -math.inf, 0
        lines = []
        for bound, cumulative in buckets:
            bound, cumulative = float(_number(bound)), int(_number(cumulative))
            if math.isnan(bound) or math.isinf(bound) or bound <= previous_bound:
                raise ValueError(f"histogram {self.name}: bucket bounds must be finite and "
                                 f"increasing, got {bound} after {previous_bound}")
            if cumulative < previous_count or cumulative > count:
                raise ValueError(f"histogram {self.name}: bucket counts must be cumulative "
                                 f"and at most the count {count}, got {cumulative}")
            lines.append(Sample(self.name + "_bucket", _with_le(lset, format_value(bound)),
                                cumulative))
            previous_bound, previous_count = bound, cumulative
        lines.append(Sample(self.name + "_bucket", _with_le(lset, "+Inf"), count))
        lines.append(Sample(self.name + "_sum", lset, _number(total)))
        lines.append(Sample(self.name + "_count", lset, count))
        self.samples.extend(lines)
        return self

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly data (non-finite values as "+Inf", "-Inf", "NaN")."""
        return {"name": self.name, "type": self.type, "help": self.help,
                "samples": [{"name": s.name, "labels": dict(s.labels),
                             "value": s.value if math.isfinite(s.value) else format_value(s.value)}
                            for s in self.samples]}


def _with_le(lset: Labels, le: str) -> Labels:
    return tuple(sorted(lset + (("le", le),)))


class Histogram:
    """Observations counted into fixed buckets (the caller measures; nothing here reads a
    clock). `family(name, help)` renders it."""

    def __init__(self, bounds: Sequence[float]) -> None:
        bounds = [float(b) for b in bounds]
        if not bounds or any(not math.isfinite(b) for b in bounds) or \
                any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
            raise ValueError("histogram bounds must be finite, increasing and not empty")
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def buckets(self) -> list[tuple[float, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def family(self, name: str, help: str, labels: Mapping[str, Any] | None = None) -> Family:
        return Family(name, HISTOGRAM, help).add_histogram(self.buckets(), self.count,
                                                           self.sum, labels)


# ---- rendering ---------------------------------------------------------------------------------


def format_value(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _sample_line(s: Sample) -> str:
    if s.labels:
        inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels)
        return f"{s.name}{{{inner}}} {format_value(s.value)}"
    return f"{s.name} {format_value(s.value)}"


def _check_sample(fam: Family, s: Sample) -> None:
    if fam.type in (HISTOGRAM, "summary"):
        ok = s.name in (fam.name + suffix for suffix in HISTOGRAM_SUFFIXES) or \
            (fam.type == "summary" and s.name == fam.name)
    else:
        ok = s.name == fam.name
    if not ok:
        raise ValueError(f"sample {s.name} does not belong to {fam.type} {fam.name}")


def render(families: Iterable[Family]) -> str:
    """The text exposition of `families`: HELP and TYPE lines, then the samples, each
    family once. ValueError on two families of one name, a sample repeated (same name and
    labels) or a sample name that is not its family's."""
    out: list[str] = []
    names: set[str] = set()
    for fam in families:
        if fam.name in names:
            raise ValueError(f"metric family {fam.name} appears twice")
        names.add(fam.name)
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        seen: set[tuple[str, Labels]] = set()
        for s in fam.samples:
            _check_sample(fam, s)
            key = (s.name, s.labels)
            if key in seen:
                raise ValueError(f"metric {s.name}: sample with labels {dict(s.labels)} "
                                 "appears twice")
            seen.add(key)
            out.append(_sample_line(s))
    return "\n".join(out) + "\n" if out else ""


# ---- collectors --------------------------------------------------------------------------------

Collector = Callable[[], Iterable[Family]]


def collector_name(collector: Any, index: int) -> str:
    return getattr(collector, "__name__", None) or f"collector{index}"


def collect(collectors: Sequence[Collector]) -> tuple[list[Family], list[tuple[str, str]]]:
    """Run every collector; families of one name from several collectors become one (their
    types must agree). A collector that raises, a type clash and a repeated sample are left
    out and reported as (collector name, message): one sick collector never empties the
    whole answer."""
    merged: dict[str, Family] = {}
    errors: list[tuple[str, str]] = []
    seen: dict[str, set[tuple[str, Labels]]] = {}
    for i, collector in enumerate(collectors):
        name = collector_name(collector, i)
        try:
            families = list(collector())
        except Exception as exc:  # noqa: BLE001 - reported; the others still answer
            errors.append((name, f"{type(exc).__name__}: {exc}"))
            continue
        for fam in families:
            into = merged.get(fam.name)
            if into is None:
                into = merged[fam.name] = Family(fam.name, fam.type, fam.help)
                seen[fam.name] = set()
            elif into.type != fam.type:
                errors.append((name, f"{fam.name} is a {fam.type} here and a {into.type} "
                                     "elsewhere: left out"))
                continue
            keys = seen[fam.name]
            for s in fam.samples:
                key = (s.name, s.labels)
                if key in keys:
                    errors.append((name, f"{s.name}{dict(s.labels)} repeated: left out"))
                    continue
                keys.add(key)
                into.samples.append(s)
    return list(merged.values()), errors


# ---- builders shared by the process kinds ------------------------------------------------------

COUNTER_FAMILY = "nokv_counter_total"
COUNTER_HELP = ("Every other named counter of the process (the long tail), by the part that "
                "counts it (source) and its name.")


def named_counters(source: str, counters: Mapping[str, Any],
                   family: Family | None = None) -> Family:
    """`nokv_counter_total{source, name}` samples for a bag of named counters (values that
    are not numbers are skipped: a bag may carry a note)."""
    fam = family if family is not None else Family(COUNTER_FAMILY, COUNTER, COUNTER_HELP)
    for name, value in sorted(counters.items()):
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            fam.add(value, source=source, name=name)
    return fam


def gauge(name: str, help: str, value: Any = None, labels: Mapping[str, Any] | None = None,
          **more: Any) -> Family:
    """A gauge family, with one sample when `value` is given."""
    fam = Family(name, GAUGE, help)
    if value is not None:
        fam.add(value, labels, **more)
    return fam


def counter(name: str, help: str, value: Any = None, labels: Mapping[str, Any] | None = None,
            **more: Any) -> Family:
    """A counter family, with one sample when `value` is given."""
    fam = Family(name, COUNTER, help)
    if value is not None:
        fam.add(value, labels, **more)
    return fam


def storage_stats(env: Any, raftlog: Any) -> dict[str, Any]:
    """The storage figures of a process as plain data, read off objects it already keeps:
    its LMDB environment's `stats` and, in WAL mode, its raft log's `wal`. The shape
    `storage_families` renders and a store's ExecutionStatus answers as `storage`."""
    out: dict[str, Any] = {}
    es = getattr(env, "stats", None)
    if es is not None:
        out["lmdb"] = {"transactions": es.transactions, "batches": es.batches,
                       "sync_ms": int(es.sync_seconds * 1000)}
    wal = getattr(raftlog, "wal", None)
    if wal is not None:
        ws = wal.stats
        out["wal"] = {"fsyncs": ws.appends, "frames": ws.frames, "bytes": ws.bytes,
                      "sync_ms": int(ws.sync_seconds * 1000), "rotations": ws.rotations,
                      "torn_bytes": ws.torn_bytes, "stalls": ws.stalls,
                      "segments": wal.segment_count, "segment_bytes": wal.size,
                      "durable_lsn": wal.durable_lsn}
    return out


def storage_families(storage: Mapping[str, Any]) -> list[Family]:
    """The storage counters of a status body (`{"lmdb": {...}, "wal": {...}}`, the shape of
    `storage_stats`): fsyncs and sync time per engine, LMDB transactions and
    batches, and the write-ahead log's bytes, frames, rotations, stalls and segments."""
    lmdb = storage.get("lmdb") or {}
    wal = storage.get("wal") or {}
    fsyncs = counter("nokv_storage_fsyncs_total",
                     "Durable syncs by storage engine (LMDB: committed write transactions; "
                     "WAL: fdatasyncs of the raft log's write-ahead log).")
    sync = counter("nokv_storage_sync_seconds_total", "Seconds spent in those syncs.")
    out = [fsyncs, sync]
    if lmdb:
        fsyncs.add(lmdb.get("transactions", 0), engine="lmdb")
        sync.add(lmdb.get("sync_ms", 0) / 1000.0, engine="lmdb")
        out.append(counter("nokv_lmdb_batches_total",
                           "Write batches committed to LMDB (group commits join several).",
                           lmdb.get("batches", 0)))
    if wal:
        fsyncs.add(wal.get("fsyncs", 0), engine="wal")
        sync.add(wal.get("sync_ms", 0) / 1000.0, engine="wal")
        out += [
            counter("nokv_wal_bytes_total", "Bytes appended to the raft log's WAL.",
                    wal.get("bytes", 0)),
            counter("nokv_wal_frames_total", "Frames appended to the raft log's WAL.",
                    wal.get("frames", 0)),
            counter("nokv_wal_rotations_total", "WAL segment rotations.",
                    wal.get("rotations", 0)),
            counter("nokv_wal_stalls_total",
                    "WAL syncs that stalled and moved off the event loop.",
                    wal.get("stalls", 0)),
            gauge("nokv_wal_torn_bytes", "Torn tail bytes found (and cut) when the WAL opened.",
                  wal.get("torn_bytes", 0)),
            gauge("nokv_wal_segments", "WAL segment files.", wal.get("segments", 0)),
            gauge("nokv_wal_segment_bytes", "Bytes in WAL segment files.",
                  wal.get("segment_bytes", 0)),
            gauge("nokv_wal_durable_lsn", "Last durable WAL sequence number.",
                  wal.get("durable_lsn", 0)),
        ]
    return out


def flag(value: Any) -> int:
    """A truth value as a gauge sample: 1 or 0."""
    return 1 if value else 0


# ---- parsing -----------------------------------------------------------------------------------


def unescape(text: str, quotes: bool) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n == "n":
                out.append("\n")
            elif n == "\\" or (quotes and n == "\""):
                out.append(n)
            else:
                out.append("\\" + n)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_value(text: str) -> float | int:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"bad sample value {text!r}") from None


def _parse_labels(line: str, start: int) -> tuple[Labels, int]:
    """Labels from `line[start]` == "{" to its "}"; returns (labels, index after "}")."""
    i = start + 1
    labels: list[tuple[str, str]] = []
    while True:
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] == "}":
            return tuple(sorted(labels)), i + 1
        m = LABEL_NAME.match(line, i)
        if m is None:
            raise ValueError(f"bad label name at column {i + 1}")
        name = m.group(0)
        i = m.end()
        while i < len(line) and line[i] in " \t":
            i += 1
        if line[i:i + 1] != "=":
            raise ValueError(f"expected = after label {name}")
        i += 1
        while i < len(line) and line[i] in " \t":
            i += 1
        if line[i:i + 1] != "\"":
            raise ValueError(f"expected a quoted value of label {name}")
        i += 1
        j = i
        while j < len(line) and line[j] != "\"":
            j += 2 if line[j] == "\\" else 1
        if j >= len(line):
            raise ValueError(f"unterminated value of label {name}")
        if any(k == name for k, _ in labels):
            raise ValueError(f"label {name} repeated")
        labels.append((name, unescape(line[i:j], quotes=True)))
        i = j + 1
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] == ",":
            i += 1
        elif i >= len(line) or line[i] != "}":
            raise ValueError(f"expected , or }} after the value of label {name}")


def parse(text: str) -> list[Family]:
    """Families from the text exposition format, in the order they appear. A sample with
    no TYPE line before it gets an `untyped` family; a histogram's `_bucket`, `_sum` and
    `_count` samples join their family. ValueError (with the line number) on anything
    malformed."""
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        try:
            if line.startswith("#"):
                parts = line[1:].lstrip(" \t").split(None, 2)
                if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                    name = check_metric_name(parts[1])
                    rest = parts[2] if len(parts) > 2 else ""
                    if parts[0] == "HELP":
                        helps[name] = unescape(rest, quotes=False)
                        if name in families:
                            families[name].help = helps[name]
                    else:
                        if name in families:
                            raise ValueError(f"TYPE of {name} after its samples or repeated")
                        families[name] = Family(name, rest.strip(), helps.get(name, ""))
                continue
            m = METRIC_NAME.match(line)
            if m is None:
                raise ValueError("expected a metric name")
            name, i = m.group(0), m.end()
            labels: Labels = ()
            j = i
            while j < len(line) and line[j] in " \t":
                j += 1
            if j < len(line) and line[j] == "{":
                labels, i = _parse_labels(line, j)
            rest = line[i:].split()
            if not rest or len(rest) > 2 or (i < len(line) and line[i] not in " \t"):
                raise ValueError("expected a value (and an optional timestamp) after the name")
            value = parse_value(rest[0])
            fam = _family_of(name, families)
            if fam is None:
                if name in families:
                    raise ValueError(f"sample {name} does not fit the {families[name].type} "
                                     f"{name}")
                fam = families[name] = Family(name, "untyped", helps.get(name, ""))
            fam.samples.append(Sample(name, labels, value))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}: {line[:200]!r}") from None
    return list(families.values())


def _family_of(sample: str, families: Mapping[str, Family]) -> Family | None:
    fam = families.get(sample)
    if fam is not None and fam.type != HISTOGRAM:
        return fam
    for suffix in HISTOGRAM_SUFFIXES:
        if sample.endswith(suffix):
            base = families.get(sample[: -len(suffix)])
            if base is not None and base.type in (HISTOGRAM, "summary"):
                return base
    return None
