"""Benchmark of the linearizability checker on a simulated register history.

Run ``python -m jepsen_lite.bench`` (``--help`` for sizes); prints the seconds taken. This
module owns only the simulated workload generator and the measurement; it never touches a
real cluster and is not imported by the checkers.

The simulation gives each operation a random real-time interval and a linearization point
inside it, applies the operations to a real register in that order, and records the
results, so the generated history is linearizable by construction.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from .history import History
from .linearizable import check_linearizable


def simulate_register_history(
    n_ops: int = 10_000,
    n_keys: int = 10,
    n_processes: int = 10,
    info_rate: float = 0.005,
    seed: int = 0,
) -> History:
    """A linearizable register history of read/write/cas with unique write values.

    Each process runs operations back to back on random keys. With probability
    ``info_rate`` an operation times out (``info``); it took effect or not at random, and
    the process continues under a fresh process id (the Jepsen convention).
    """
    rng = random.Random(seed)
    clocks = [0] * n_processes
    proc_ids = list(range(n_processes))
    next_proc = n_processes
    planned = []  # (lin_time, call, ret, process, f, key, input, applied, info)
    written: dict[str, list[int]] = {}
    next_value = 1
    for _ in range(n_ops):
        p = rng.randrange(n_processes)
        call = clocks[p] + rng.randint(1, 50)
        lin = call + rng.randint(1, 100)
        ret = lin + rng.randint(1, 100)
        clocks[p] = ret
        key = f"k{rng.randrange(n_keys)}"
        roll = rng.random()
        if roll < 0.5:
            f, value = "read", None
        elif roll < 0.9:
            f, value = "write", next_value
            next_value += 1
            written.setdefault(key, []).append(value)
        else:
            prior = written.get(key, [])
            expected = rng.choice(prior[-3:]) if prior else None
            f, value = "cas", [expected, next_value]
            next_value += 1
        info = rng.random() < info_rate
        applied = not info or rng.random() < 0.5
        planned.append((lin, call, ret, proc_ids[p], f, key, value, applied, info))
        if info:
            proc_ids[p] = next_proc
            next_proc += 1
    state: dict[str, object] = {}
    raw = []  # (time, order, event)
    for _lin, call, ret, proc, f, key, value, applied, info in sorted(planned):
        ctype, out = "ok", value
        if not applied:
            ctype = "info"
        elif f == "read":
            out = state.get(key)
        elif f == "write":
            state[key] = value
        elif state.get(key) == value[0]:
            state[key] = value[1]
        else:
            ctype = "fail"
        if info:
            ctype, out = "info", value
        raw.append(
            (call, 0, {"type": "invoke", "process": proc, "f": f, "key": key, "value": value})
        )
        raw.append((ret, 1, {"type": ctype, "process": proc, "f": f, "key": key, "value": out}))
    raw.sort(key=lambda item: (item[0], item[1]))
    events = [{"index": i, **event, "time": t} for i, (t, _, event) in enumerate(raw)]
    return History(events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepsen_lite.bench", description=__doc__)
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--info-rate", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args(argv)
    history = simulate_register_history(
        args.ops, args.keys, args.processes, args.info_rate, args.seed
    )
    started = time.perf_counter()
    result = check_linearizable(history, "register", time_limit=args.time_limit)
    elapsed = time.perf_counter() - started
    print(
        f"{args.ops} ops, {args.keys} keys, {args.processes} processes, "
        f"info rate {args.info_rate}: valid={result['valid']} in {elapsed:.3f} s"
    )
    return 0 if result["valid"] is True else 1


if __name__ == "__main__":
    sys.exit(main())
