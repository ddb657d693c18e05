"""One RVC training step (discriminator + generator update), rvc==0.3.5 on torch vs rvc-mlx, on this machine.

The same random-weight v2 networks (generator with enc_q, MultiPeriodDiscriminatorV2), the same padded batch
and noise (tests/reference/rvc_training.py); 2 threads each; steps interleaved (reference, ours, ...) in one
process; medians, per-run ratios and the peak RSS of the process (VmHWM) after each side's first step.

    python benchmarks/train_step.py --batch 4 --frames 370 --runs 3 [--out benchmarks/results]

``--frames``: frames per item (RVC's 3.7 s segments are ~370 at 40 kHz). The peak RSS is of the whole
process, so the second side's includes the first's. Needs the test extra (torch, rvc==0.3.5).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=370)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.argv = sys.argv[:1]
    import torch

    torch.set_num_threads(THREADS)
    import rvc_mlx  # noqa: F401  (BLAS preload before mlx.core)
    from rvc_mlx.bench import peak_rss_mb
    from tests.reference import rvc_training as R
    from tests.reference.rvc_models import Variant
    from tests.train_support import mlx_batch, mlx_noise, ours_trainer

    variant = Variant("v2", "40k", True)
    lengths = [args.frames - 7 * i for i in range(args.batch)]
    batch = R.make_batch(variant, lengths)
    noise = R.make_noise(variant, batch)
    times = {"reference": [], "ours": []}
    rss = {}
    for run in range(args.runs + 1):  # run 0 warms both up (JIT caches, allocator)
        for side in ("reference", "ours"):
            net_g, net_d = R.build_networks(variant)
            if side == "ours":
                trainer = ours_trainer(variant, net_g, net_d)
                b, n = mlx_batch(batch, variant.f0), mlx_noise(noise)
                t0 = time.perf_counter()
                trainer.step(b, n)
            else:
                t0 = time.perf_counter()
                R.reference_step(net_g, net_d, variant, batch, noise)
            dt = time.perf_counter() - t0
            if run:
                times[side].append(dt)
            rss.setdefault(side, peak_rss_mb())
            print(f"run {run} {side}: {dt:.2f} s", flush=True)
    ratios = [o / r for o, r in zip(times["ours"], times["reference"])]
    result = {
        "machine": platform.processor() or platform.machine(), "threads": THREADS, "batch": args.batch,
        "frames": lengths, "runs": args.runs,
        "reference_s": times["reference"], "ours_s": times["ours"],
        "median_reference_s": statistics.median(times["reference"]), "median_ours_s": statistics.median(times["ours"]),
        "ratios": ratios, "median_ratio": statistics.median(ratios),
        "peak_rss_mb_after_first_step": rss,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_step.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
