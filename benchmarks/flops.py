"""Achieved GFLOP/s per stage, against each side's measured sgemm peak.

The work per stage is counted once, on the reference: rvc==0.3.5's pipeline on the end-to-end benchmark's clip (same
models, same padding and segments) under ``torch.utils.flop_counter.FlopCounterMode``, split by the module that ran
it (HuBERT, RMVPE's network, the synthesizer). Both sides compute the same networks, so one count serves both; our
FFT and polyphase rewrites do less arithmetic than that, so our rates are "model FLOPs", as is usual. The times are
the stage medians of ``benchmarks/results/e2e.json`` (run ``e2e.py`` first). The peak is the median of 2048³ float32
matrix products, torch with its BLAS and MLX with the one rvc-mlx preloads, 2 threads each.

    python benchmarks/flops.py [--seconds 30] [--out benchmarks/results]

Needs the test extra (torch, transformers) and rvc==0.3.5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
PEAK_N, PEAK_RUNS = 2048, 7
# stage of the e2e benchmark -> the top-level modules FlopCounterMode sees run in it (the pipeline calls the
# synthesizer's parts, not its forward)
STAGES = {"hubert+retrieval": ("HubertModel",), "f0": ("MelSpectrogram", "E2E"),
          "synthesis": ("TextEncoder768", "ResidualCouplingBlock", "GeneratorNSF")}
LABELS = {"f0": "F0 (rmvpe)", "hubert+retrieval": "HuBERT + retrieval", "synthesis": "synthesis"}


def count_reference(paths: dict) -> dict[str, float]:
    """FLOPs per stage of one reference conversion of the clip."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.e2e import reference_job

    convert = reference_job(paths)[0]
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        convert({"npy": 0, "f0": 0, "infer": 0})
    per_module = counter.get_flop_counts()
    out = {}
    for stage, modules in STAGES.items():
        missing = [m for m in modules if m not in per_module]
        if missing:
            tops = sorted(k for k in per_module if "." not in k)
            raise SystemExit(f"flops: no FLOPs recorded under {missing}; top-level modules seen: {tops}")
        out[stage] = float(sum(sum(per_module[m].values()) for m in modules))
    out["total"] = float(counter.get_total_flops())
    return out


def peak(side: str) -> float:
    """GFLOP/s of a PEAK_N³ float32 matrix product, median of PEAK_RUNS after a warm-up (run in a child)."""
    code = {
        "torch": "import torch; torch.set_num_threads({t}); a = torch.randn({n}, {n}); b = torch.randn({n}, {n})\n"
                 "run = lambda: a @ b",
        "ours": "import rvc_mlx, mlx.core as mx; a = mx.random.normal(({n}, {n})); b = mx.random.normal(({n}, {n}))\n"
                "mx.eval(a, b); run = lambda: mx.eval(a @ b)",
    }[side].format(t=THREADS, n=PEAK_N)
    code += (f"\nimport time, statistics\nrun(); ts = []\nfor _ in range({PEAK_RUNS}):\n"
             "    t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)\n"
             f"print(2 * {PEAK_N} ** 3 / statistics.median(ts) / 1e9)")
    env = {**os.environ, "RVC_MLX_CPUS": str(THREADS), "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['machine']}; {r['seconds']:g} s clip (the e2e benchmark's); work counted on the reference "
             f"(FlopCounterMode), times = e2e medians. sgemm peak ({PEAK_N}³ fp32, {THREADS} threads): torch "
             f"**{r['peak']['torch']:.0f} GFLOP/s**, rvc-mlx (MLX + preloaded OpenBLAS) **{r['peak']['ours']:.0f} "
             "GFLOP/s**.", "",
             "| stage | GFLOP | torch (s) | torch GFLOP/s | % of its peak | rvc-mlx (s) | rvc-mlx GFLOP/s | % of its peak |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for stage, label in LABELS.items():
        g = r["gflop"][stage]
        tr, to = r["times"]["reference"][stage], r["times"]["ours"][stage]
        lines.append(f"| {label} | {g:.0f} | {tr:.2f} | {g / tr:.1f} | {100 * g / tr / r['peak']['torch']:.0f}% "
                     f"| {to:.2f} | {g / to:.1f} | {100 * g / to / r['peak']['ours']:.0f}% |")
    g, tr, to = r["gflop"]["total"], r["times"]["reference"]["convert"], r["times"]["ours"]["convert"]
    lines.append(f"| conversion (all stages) | {g:.0f} | {tr:.2f} | {g / tr:.1f} | "
                 f"{100 * g / tr / r['peak']['torch']:.0f}% | {to:.2f} | {g / to:.1f} | "
                 f"{100 * g / to / r['peak']['ours']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "v" / "rvc-reference"))
    p.add_argument("--e2e", default=str(ROOT / "benchmarks" / "results" / "e2e.json"))
    p.add_argument("--out", default=None, help="directory for flops.json / flops.md")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import torch

    torch.set_num_threads(THREADS)
    from benchmarks.e2e import prepare
    from rvc_mlx.bench import machine

    e2e = json.loads(Path(a.e2e).read_text())
    if e2e["seconds"] != a.seconds:
        raise SystemExit(f"{a.e2e}: measured on {e2e['seconds']:g} s, not {a.seconds:g} s")
    ours = dict(e2e["ours"])
    ours["hubert+retrieval"] = ours.get("hubert", 0.0) + ours.get("retrieval", 0.0)
    t0 = time.perf_counter()
    flops = count_reference(prepare(Path(a.cache), a.seconds))
    print(f"counted in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    result = {"machine": machine(), "seconds": a.seconds, "gflop": {k: v / 1e9 for k, v in flops.items()},
              "peak": {side: statistics.median(peak(side) for _ in range(3)) for side in ("torch", "ours")},
              "times": {"reference": e2e["reference"], "ours": ours}}
    md = markdown(result)
    print(md)
    if a.out:
        out = Path(a.out)
        (out / "flops.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "flops.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
