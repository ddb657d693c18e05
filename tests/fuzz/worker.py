"""The fuzz worker process (see ``runner``): ``python -m tests.fuzz.worker TARGET SEED START END MEMORY SEEDS WORK
[FAULT]``. Prints one JSON line when a case starts and one with its outcome."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np


def case_bytes(target: str, seeds: list[Path], seed: int, case: int) -> tuple[str, bytes]:
    from .mutate import mutate

    rng = np.random.default_rng([seed, case, sum(map(ord, target))])
    src = seeds[int(rng.integers(0, len(seeds)))]
    return src.name, mutate(target, src.read_bytes(), rng)


def _fault(name: str, run):
    """Seeded faults that prove the harness reports failures (tests/test_fuzz.py)."""
    def keyerror(path, out):
        raise KeyError("storage")

    def leak(path, out):
        (out / "half-written.part").write_bytes(b"x")

    def newline(path, out):
        from rvc_mlx.errors import RvcMlxError
        raise RvcMlxError("first line\nsecond line")

    def segfault(path, out):
        import ctypes
        ctypes.string_at(0)

    def hang(path, out):
        import time
        time.sleep(3600)

    def allocate(path, out):
        bytearray(1 << 40)

    return {"keyerror": keyerror, "leak": leak, "newline": newline, "segfault": segfault, "hang": hang,
            "allocate": allocate}.get(name, run)


def main(argv: list[str]) -> int:
    target, seed, start, end, memory, seed_dir, work = argv[:7]
    seed, start, end, memory = int(seed), int(start), int(end), int(memory)
    work = Path(work)
    tmpdir = work / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(tmpdir)
    import tempfile
    tempfile.tempdir = str(tmpdir)
    if target in ("pth", "safetensors"):
        import rvc_mlx.convert.rvc  # noqa: F401
        import rvc_mlx.service.voices  # noqa: F401
        import mlx.core  # noqa: F401
    if target in ("index",):
        import faiss  # noqa: F401
    if target == "audio":
        import av  # noqa: F401
        import soundfile  # noqa: F401
    from rvc_mlx.errors import RvcMlxError

    from .targets import EXTENSIONS, TARGETS

    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vsize + memory, resource.RLIM_INFINITY))
    run = TARGETS[target] if len(argv) < 8 else _fault(argv[7], TARGETS[target])
    seeds = sorted(Path(seed_dir).iterdir())
    out = sys.stdout
    for case in range(start, end):
        name, data = case_bytes(target, seeds, seed, case)
        folder = work / f"case-{case}"
        folder.mkdir(parents=True)
        path = folder / ("input" + (EXTENSIONS[target] or Path(name).suffix))
        path.write_bytes(data)
        out.write(json.dumps({"start": case}) + "\n")
        out.flush()
        outcome, detail = "ok", ""
        try:
            run(path, folder)
        except MemoryError:
            outcome, detail = "oom", "MemoryError"
        except RvcMlxError as e:
            msg = str(e)
            if "MemoryError" in msg:
                outcome, detail = "oom", msg
            elif not msg or "\n" in msg or "\r" in msg:
                outcome, detail = "traceback", f"{type(e).__name__} not one line: {msg[:200]!r}"
            else:
                outcome, detail = "error", ""
        except BaseException as e:  # noqa: BLE001  (what the user would see as a traceback)
            tb = traceback.extract_tb(e.__traceback__)
            where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno} {tb[-1].name}" if tb else "?"
            outcome, detail = "traceback", f"{type(e).__name__}: {str(e)[:150]} at {where}"
        left = sorted(p.name for p in folder.iterdir() if p != path and not (outcome == "ok" and p.suffix == ".safetensors"))
        left += sorted(p.name for p in tmpdir.iterdir())
        if left and outcome in ("ok", "error"):
            outcome, detail = "leak", f"left behind: {', '.join(left[:5])}"
        shutil.rmtree(folder, ignore_errors=True)
        for p in tmpdir.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        out.write(json.dumps({"case": case, "outcome": outcome, "detail": detail}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
