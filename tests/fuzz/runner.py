"""Run fuzz cases in a worker process and classify every one.

The parent (:func:`run`) builds the seeds, starts ``python -m tests.fuzz.worker`` and reads one line per case
from it. The worker caps its address space (``resource.setrlimit(RLIMIT_AS)``: a header that makes a loader
allocate without bound hits the cap instead of the machine), points ``TMPDIR`` at a private folder and, per
case, writes the mutated file into a fresh folder, runs the target's public entry point, and reports:

* ``ok`` - it returned; ``error`` - it raised an ``RvcMlxError`` with a one-line message;
* ``traceback`` - any other exception, or an ``RvcMlxError`` whose message has a newline or is empty;
* ``oom`` - a ``MemoryError`` (or an error message naming one): an allocation the cap stopped;
* ``leak`` - a file left in the case folder (other than the input and a successful output) or in ``TMPDIR``.

The parent adds ``crash`` (the worker died in a case: a signal, e.g. a segfault in a C library) and ``hang`` (no
answer within the per-case time limit: the worker is killed). After either, a new worker resumes at the next
case. Case ``i`` is a pure function of (target, seed, i): every failure can be replayed with ``--case``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

OUTCOMES = ("ok", "error", "crash", "hang", "traceback", "oom", "leak")
FAILURES = ("crash", "hang", "traceback", "oom", "leak")
DEFAULT_TIMEOUT = 20.0  # seconds per case (generous: a loaded 2-core machine; cases take milliseconds)
DEFAULT_MEMORY = 3 << 30  # bytes of address space added to the worker's own after its imports
ROOT = Path(__file__).resolve().parents[2]


def build_seeds(target: str, directory: Path) -> list[Path]:
    from . import seeds

    if target in ("pth", "safetensors"):
        import torch  # noqa: F401  (before mlx, as tests/conftest.py)
    return seeds.build(target, directory)


def run(target: str, cases: int, seed: int = 0, start: int = 0, timeout: float = DEFAULT_TIMEOUT,
        memory: int = DEFAULT_MEMORY, seed_dir: Path | None = None, fault: str | None = None,
        log=None) -> dict:
    """Run cases ``start .. start + cases - 1``; returns the counts per outcome and the failing cases."""
    with tempfile.TemporaryDirectory(prefix="rvc-fuzz-") as tmp:
        tmp = Path(tmp)
        if seed_dir is None:
            seed_dir = tmp / "seeds"
            build_seeds(target, seed_dir)
        counts, failures = Counter(), []
        i, end = start, start + cases
        while i < end:
            i = _run_worker(target, seed, i, end, timeout, memory, seed_dir, tmp, fault, counts, failures, log)
        result = {"target": target, "seed": seed, "cases": cases, **{k: counts[k] for k in OUTCOMES},
                  "failures": failures[:50]}
        return result


def _run_worker(target, seed, i, end, timeout, memory, seed_dir, tmp, fault, counts, failures, log) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "tests.fuzz.worker", target, str(seed), str(i), str(end), str(memory),
           str(seed_dir), str(tmp / "work")] + ([fault] if fault else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
    current, buf = None, b""
    deadline = time.monotonic() + timeout + 60  # startup: imports
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
            if not ready:
                if current is None:
                    raise RuntimeError(f"fuzz worker for {target} did not start")
                _record(counts, failures, current, "hang", f"no result within {timeout:.0f} s", log)
                proc.kill()
                proc.wait()
                return current + 1
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                if current is None:
                    if proc.returncode == 0:
                        return end
                    raise RuntimeError(f"fuzz worker for {target} failed to start (exit {proc.returncode})")
                _record(counts, failures, current, "crash", f"worker died (exit {proc.returncode})", log)
                return current + 1
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                    deadline = time.monotonic() + timeout
                else:
                    _record(counts, failures, msg["case"], msg["outcome"], msg.get("detail", ""), log)
                    current = None
                    if msg["case"] + 1 >= end:
                        proc.wait()
                        return end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _record(counts, failures, case, outcome, detail, log):
    counts[outcome] += 1
    if outcome in FAILURES:
        failures.append({"case": case, "outcome": outcome, "detail": detail[:300]})
        if log:
            log(f"case {case}: {outcome}: {detail[:300]}")
