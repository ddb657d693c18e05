"""Long fuzz runs: ``python -m tests.fuzz --target NAME --cases 100000 [--seed S]`` (targets: pth, safetensors,
index, f0, audio, or all). Prints the counts per target and every failing case (replay one with --start N
--cases 1); exits 1 when any case failed."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .runner import DEFAULT_MEMORY, DEFAULT_TIMEOUT, run
from .targets import TARGETS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--target", required=True, choices=[*TARGETS, "all"])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case number (replay: --start N --cases 1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case before it is a hang")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY >> 20, help="address space cap over the worker's own")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    failed = False
    results = []
    for target in TARGETS if args.target == "all" else [args.target]:
        t0 = time.monotonic()
        r = run(target, args.cases, args.seed, args.start, args.timeout, args.memory_mb << 20,
                log=lambda m, t=target: print(f"{t}: {m}", file=sys.stderr, flush=True))
        r["seconds"] = round(time.monotonic() - t0, 1)
        results.append(r)
        failed |= any(r[k] for k in ("crash", "hang", "traceback", "oom", "leak"))
        if not args.json:
            print(f"{target}: cases {r['cases']}  ok {r['ok']}  clean errors {r['error']}  crashes {r['crash']}  "
                  f"hangs {r['hang']}  tracebacks {r['traceback']}  runaway allocations {r['oom']}  "
                  f"leaked files {r['leak']}  ({r['seconds']} s)", flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
