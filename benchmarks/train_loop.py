"""The RVC training loop, rvc==0.3.5 on torch vs rvc-mlx, on this machine: steps per second over K consecutive
steps (both sides with their optimisers, created once) and the peak memory of each side alone.

Two configs: ``tiny`` (the curve test's tiny generator, tests/test_train_curve.py: batch 2 of 24/20 frames,
8-frame segment) and ``full`` (RVC's v2-40k generator: batch 4 of ~370-frame items, RVC's 32-frame segment);
RVC's full discriminator in both. Timing: the same random weights, batch and per-step noise on both sides
(tests/reference/rvc_training.py), 2 threads each, sides interleaved (reference, ours, ...) in one process,
run 0 a warm-up, medians and per-run ratios. Peak memory: each side in its own *spawned* process (never forked
after MLX ran) running K steps, so its ``VmHWM`` is that side's alone; our side's process never imports torch
(its networks start from RVC's scratch init, which costs the same memory as any weights).

    python benchmarks/train_loop.py [--configs tiny full] [--runs 3] [--steps K] [--out benchmarks/results]

Needs the test extra (torch, rvc==0.3.5).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
CONFIGS = {  # name: (frames per item, segment frames or None for RVC's, steps K per timed run)
    "tiny": ([24, 20], 8, 8),
    "full": ([370, 363, 356, 349], None, 3),
}
NOISE_SEED = 1000


def _setup_torch() -> None:
    sys.path.insert(0, str(ROOT))
    sys.argv = sys.argv[:1]
    import torch

    torch.set_num_threads(THREADS)


def _inputs(name: str, steps: int) -> tuple[list, list, list | None]:
    """The batch, per-step noise (numpy, torch layout) and config list (None: RVC's) of config ``name``."""
    from tests.reference import rvc_training as R
    from tests.reference.rvc_models import Variant
    from tests.test_train_fit import TINY

    variant = Variant("v2", "40k", True)
    frames, segment, _ = CONFIGS[name]
    cfg = R.small_config(variant, TINY, segment) if segment else None
    inter = TINY["inter_channels"] if segment else 192
    batch = R.make_batch(variant, frames)
    noises = [R.make_noise(variant, batch, inter, NOISE_SEED + s, segment) for s in range(steps)]
    return batch, noises, cfg


def _reference_run(variant, cfg, batch, noises) -> float:
    """Seconds for ``len(noises)`` consecutive reference steps (fresh networks, optimisers created once)."""
    from tests.reference import rvc_training as R

    net_g, net_d = R.build_networks(variant, cfg=cfg)
    t0 = time.perf_counter()
    R.reference_loop(net_g, net_d, variant, [batch] * len(noises), noises, steps_per_epoch=len(noises))
    return time.perf_counter() - t0


def _our_run(trainer, batch, noises) -> float:
    """Seconds for ``len(noises)`` consecutive steps of our trainer on ``batch``."""
    from tests.train_support import mlx_batch, mlx_noise

    b = mlx_batch(batch, use_f0=True)
    t0 = time.perf_counter()
    trainer.set_epoch(1)
    for n in noises:
        trainer.step(b, mlx_noise(n))
    return time.perf_counter() - t0


def time_config(name: str, runs: int) -> dict:
    """Steps/s of both sides over K steps, interleaved, run 0 a warm-up."""
    import rvc_mlx  # noqa: F401  (BLAS preload before mlx.core)
    from tests.reference import rvc_training as R
    from tests.reference.rvc_models import Variant
    from tests.train_support import ours_trainer

    variant = Variant("v2", "40k", True)
    steps = CONFIGS[name][2]
    batch, noises, cfg = _inputs(name, steps)
    rates = {"reference": [], "ours": []}
    for run in range(runs + 1):
        for side in ("reference", "ours"):
            if side == "reference":
                dt = _reference_run(variant, cfg, batch, noises)
            else:
                trainer = ours_trainer(variant, *R.build_networks(variant, cfg=cfg), cfg)
                dt = _our_run(trainer, batch, noises)
            if run:
                rates[side].append(steps / dt)
            print(f"{name} run {run} {side}: {steps} steps in {dt:.2f} s", flush=True)
    ratios = [o / r for o, r in zip(rates["ours"], rates["reference"])]
    return {"steps": steps, "frames": CONFIGS[name][0], "steps_per_s": rates,
            "median_steps_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "speed_ratios_ours_over_reference": ratios, "median_speed_ratio": statistics.median(ratios)}


def _peak_child(side: str, name: str, inputs: tuple, queue) -> None:
    """Spawned: K steps of one side; puts ``(rss after setup, peak rss)`` in MiB."""
    sys.path.insert(0, str(ROOT))
    if side == "reference":
        _setup_torch()
    import rvc_mlx  # noqa: F401  (BLAS preload before mlx.core)
    from rvc_mlx.bench import peak_rss_mb

    batch, noises, cfg = inputs
    steps = len(noises)
    if side == "reference":
        from tests.reference import rvc_training as R
        from tests.reference.rvc_models import Variant

        variant = Variant("v2", "40k", True)
        net_g, net_d = R.build_networks(variant, cfg=cfg)
        setup = peak_rss_mb()
        R.reference_loop(net_g, net_d, variant, [batch] * steps, noises, steps_per_epoch=steps)
    else:
        trainer = _scratch_trainer(name)
        setup = peak_rss_mb()
        _our_run(trainer, batch, noises)
        assert "torch" not in sys.modules
    queue.put((setup, peak_rss_mb()))


def _scratch_trainer(name: str):
    """Our trainer for config ``name`` without torch: RVC's scratch init (``session.new_trainer``)."""
    from rvc_mlx.train.session import RunSettings, new_trainer
    from tests.test_train_fit import TINY

    frames, segment, _ = CONFIGS[name]
    settings = RunSettings(name=name, segment_frames=segment, model=TINY if segment else None)
    return new_trainer(settings, seed=7)


def peak_memory(name: str) -> dict:
    """Peak RSS (MiB) of each side in its own spawned process; inputs are made here and sent over."""
    steps = CONFIGS[name][2]
    inputs = _inputs(name, steps)
    ctx = mp.get_context("spawn")
    out = {}
    for side in ("reference", "ours"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak_child, args=(side, name, inputs, queue))
        proc.start()
        setup, peak = queue.get()
        proc.join()
        out[side] = {"rss_after_setup_mb": setup, "peak_rss_mb": peak}
        print(f"{name} {side}: peak RSS {peak:.0f} MiB (after setup {setup:.0f})", flush=True)
    return out


def write_markdown(path: Path, result: dict) -> None:
    lines = ["# Training loop: rvc==0.3.5 (torch CPU) vs rvc-mlx", "",
             f"{result['machine']}; {THREADS} threads each; K consecutive steps per run, {result['runs']} runs "
             "after a warm-up, sides interleaved; peak RSS of each side alone (spawned process, VmHWM).", "",
             "| config | K | torch steps/s | ours steps/s | ours/torch (median of per-run ratios) | "
             "torch peak RSS | ours peak RSS |", "|---|---|---|---|---|---|---|"]
    for name, r in result["configs"].items():
        m, mem = r["median_steps_per_s"], r["memory"]
        lines.append(f"| {name} | {r['steps']} | {m['reference']:.3f} | {m['ours']:.3f} | "
                     f"{r['median_speed_ratio']:.2f} | {mem['reference']['peak_rss_mb']:.0f} MiB | "
                     f"{mem['ours']['peak_rss_mb']:.0f} MiB |")
    lines += ["", "`benchmarks/train_loop.py`; raw numbers in `train_loop.json`."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="K for every config (default: per config)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _setup_torch()
    from rvc_mlx.bench import machine

    result = {"machine": machine(), "threads": THREADS, "runs": args.runs, "configs": {}}
    for name in args.configs:
        if args.steps:
            CONFIGS[name] = CONFIGS[name][:2] + (args.steps,)
        memory = peak_memory(name)  # before this process runs MLX: spawn only, never fork
        result["configs"][name] = {**time_config(name, args.runs), "memory": memory}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_loop.json").write_text(json.dumps(result, indent=1))
        write_markdown(args.out / "train_loop.md", result)


if __name__ == "__main__":
    main()
