"""Process logging for the serve commands: level and format (`--log-level`, `--log-format`).

Owns: configuring the root logger once per process, before the service starts (the services'
own `logging.basicConfig` calls then change nothing), and the JSON line format: one object
per event with `ts` (UTC, ISO 8601, milliseconds), `level`, `process` (e.g. "store-2"),
`logger`, `msg`, and `exc` when there is a traceback. Text lines carry the process name too.
Rate limiting of repeated warnings is the callers' (`nokvpy.rpc.logthrottle`). Never reads
anything but the record it formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        event = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                 "process": self.process, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure(process: str, level: str = "info", fmt: str = "text") -> None:
    """Log `level` and above to stderr as `fmt` lines naming `process`."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {process} %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
