"""Rate-limited logging for lines a remote party can trigger at will.

Owns: `LogThrottle`, at most one line per key per interval; the next line let through for a
key says how many were suppressed since the last one. Keys must come from a fixed set chosen
by the code (a refusal reason), never from remote input (an address, a name): a caller that
forgets is still bounded, as the keys beyond `max_keys` share one bucket. Never counts events
(counters are the caller's job, and they count every event) and never reads the wall clock
(the clock is `trio.current_time` unless one is given).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

OVERFLOW_KEY = "<other>"


class LogThrottle:
    """`throttle.log(logging.WARNING, "bad_hmac", "refused %s", addr)`: logs unless a line with
    the same key was logged less than `interval` seconds ago; returns whether it logged."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, *,
                 clock: Callable[[], float] | None = None, max_keys: int = 256) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock if clock is not None else trio.current_time
        # key -> [time of the last line logged, lines suppressed since]
        self._state: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: object, _stacklevel: int = 2) -> bool:
        if not self.logger.isEnabledFor(level):
            return False
        state = self._state.get(key)
        if state is None and len(self._state) >= self.max_keys:
            key = OVERFLOW_KEY
            state = self._state.get(key)
        now = self._clock()
        if state is None:
            self._state[key] = [now, 0]
        elif now - state[0] < self.interval:
            state[1] += 1
            return False
        else:
            suppressed, since = int(state[1]), now - state[0]
            state[0], state[1] = now, 0
            if suppressed:
                msg += " (%d similar lines suppressed in the last %.0fs)"
                args = (*args, suppressed, since)
        self.logger.log(level, msg, *args, stacklevel=_stacklevel)  # the caller's line
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args, _stacklevel=3)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args, _stacklevel=3)

    def suppressed(self, key: str) -> int:
        """Lines of `key` held back since its last logged line."""
        state = self._state.get(key)
        return int(state[1]) if state is not None else 0
