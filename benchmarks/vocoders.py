"""Applio's decoders (ultimate-rvc 0.6.0: ``RefineGANGenerator``, ``HiFiGANMRFGenerator``) vs rvc-mlx, 10 s of audio.

Same calibrated random weights and inputs for both (tests/reference/refinegan_models.py, applio_models.py), noise
off, 2 threads each; runs interleaved (reference, ours, reference, ...) in one process, medians and the
ours/reference ratio.

    python benchmarks/vocoders.py --vocoder refinegan --rates 32000 40000 --runs 5 [--out benchmarks/results]
    python benchmarks/vocoders.py --vocoder mrf --rates 40000 --runs 5 [--out benchmarks/results]

``--fresh``: every run of each side in its own new process (what a user gets; in one shared process torch's
large allocations reuse the heap our runs left behind and run markedly faster), timing the decode only.

Needs the test extra (torch, torchaudio's pure-Python resample, ultimate-rvc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocoder", choices=("refinegan", "mrf"), default="refinegan")
    parser.add_argument("--rates", type=int, nargs="+", default=[32000, 40000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="directory for <vocoder>.json (and print markdown)")
    parser.add_argument("--fresh", action="store_true", help="each run of each side in a new process")
    parser.add_argument("--one", choices=("reference", "ours"), help=argparse.SUPPRESS)  # a --fresh child
    args = parser.parse_args()
    if args.one:
        return one_run(args)
    if args.fresh:
        return fresh_runs(args)

    os.environ.setdefault("URVC_NO_LOGGING", "1")
    sys.path.insert(0, str(ROOT))
    import torch  # before rvc_mlx: torch's BLAS loads first

    torch.set_num_threads(THREADS)
    import rvc_mlx  # noqa: F401  (optimized BLAS preload, before mlx.core)
    import mlx.core as mx
    import numpy as np

    from rvc_mlx.backend import configure_mlx
    from rvc_mlx.models.synthesizer import SynthesizerConfig, build_decoder
    from rvc_mlx.store import load_into
    from tests.reference.refinegan_models import deterministic, inputs

    configure_mlx()
    cache = _cache()
    title = {"refinegan": "RefineGAN", "mrf": "MRF HiFi-GAN"}[args.vocoder]
    results = []
    for sr in args.rates:
        net, weights, config = decoders(args.vocoder, sr, cache)
        ours = build_decoder(SynthesizerConfig.from_dict(config))
        load_into(ours, weights, f"{args.vocoder} {sr}")
        z, f0, g = inputs(args.frames)
        mz, mf0, mg = (mx.array(a.numpy()) for a in (z.transpose(1, 2), f0, g.transpose(1, 2)))

        def run_ref():
            with torch.no_grad(), deterministic():
                return net(z, f0, g).numpy()[0, 0]

        def run_ours():
            y = ours(mz, mf0, mg)
            mx.eval(y)
            return np.array(y)[0, :, 0]

        times = {"reference": [], "ours": []}
        outs = {}
        for _ in range(args.runs):
            for name, fn in (("reference", run_ref), ("ours", run_ours)):
                start = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - start)
                print(f"{sr} {name}: {times[name][-1]:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"sample_rate": sr, "frames": args.frames, "runs": args.runs, "times": times,
               "reference_s": med["reference"], "ours_s": med["ours"], "ratio": med["ours"] / med["reference"],
               "max_abs": float(np.abs(outs["ours"] - outs["reference"]).max()),
               "peak_mlx_gb": mx.get_peak_memory() / 1e9}
        results.append(row)
        print(f"{sr}: reference {row['reference_s']:.2f} s, ours {row['ours_s']:.2f} s, ratio {row['ratio']:.2f}, "
              f"max-abs {row['max_abs']:.1e}", flush=True)

    print(f"\n{title} decoder, {args.frames} frames, noise off, {args.runs} interleaved runs, medians, "
          f"{THREADS} threads. Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("| sample rate | torch (s) | rvc-mlx (s) | rvc-mlx / torch | max-abs |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['sample_rate']} | {r['reference_s']:.2f} | {r['ours_s']:.2f} | {r['ratio']:.2f} | "
              f"{r['max_abs']:.1e} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.vocoder}.json").write_text(json.dumps(results, indent=1))


def _cache() -> Path:
    cache = Path(tempfile.gettempdir()) / "rvc-mlx-bench-vocoders"
    cache.mkdir(exist_ok=True)
    return cache


def one_run(args) -> None:
    """Child of ``--fresh``: build one side, decode once, print the decode time."""
    os.environ.setdefault("URVC_NO_LOGGING", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(THREADS)
    import rvc_mlx  # noqa: F401  (optimized BLAS preload, before anything imports mlx.core)
    from tests.reference.refinegan_models import deterministic, inputs

    sr = args.rates[0]
    z, f0, g = inputs(args.frames)
    if args.one == "reference":
        net = decoders(args.vocoder, sr, _cache(), reference_only=True)
        start = time.perf_counter()
        with torch.no_grad(), deterministic():
            net(z, f0, g)
    else:
        import mlx.core as mx

        from rvc_mlx.backend import configure_mlx
        from rvc_mlx.models.synthesizer import SynthesizerConfig, build_decoder
        from rvc_mlx.store import load_into

        configure_mlx()
        _, weights, config = decoders(args.vocoder, sr, _cache())
        ours = build_decoder(SynthesizerConfig.from_dict(config))
        load_into(ours, weights, f"{args.vocoder} {sr}")
        mz, mf0, mg = (mx.array(a.numpy()) for a in (z.transpose(1, 2), f0, g.transpose(1, 2)))
        start = time.perf_counter()
        mx.eval(ours(mz, mf0, mg))
    print(f"seconds {time.perf_counter() - start:.4f}")


def fresh_runs(args) -> None:
    import subprocess

    print("| sample rate | torch, fresh process (s) | rvc-mlx, fresh process (s) | rvc-mlx / torch |")
    print("|---|---:|---:|---:|")
    for sr in args.rates:
        times = {"reference": [], "ours": []}
        for _ in range(args.runs):
            for side in times:
                cmd = [sys.executable, __file__, "--one", side, "--vocoder", args.vocoder, "--rates", str(sr),
                       "--frames", str(args.frames)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                times[side].append(float(out.split("seconds")[-1]))
        med = {k: statistics.median(v) for k, v in times.items()}
        runs = lambda v: ", ".join(f"{t:.2f}" for t in v)  # noqa: E731
        print(f"| {sr} | {med['reference']:.2f} ({runs(times['reference'])}) | {med['ours']:.2f} "
              f"({runs(times['ours'])}) | {med['ours'] / med['reference']:.2f} |", flush=True)


def decoders(vocoder: str, sr: int, cache: Path, reference_only: bool = False):
    """(torch decoder, our converted decoder weights without ``dec.``, voice config) for a rate."""
    import mlx.core as mx

    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.convert.rvc import convert_voice

    if vocoder == "refinegan":
        from tests.reference.refinegan_models import CONFIGS, reference

        net, weights = reference(sr, str(cache))
        if reference_only:
            return net
        return net, weights, {"sample_rate": sr, "upsample_rates": CONFIGS[sr], "vocoder": "RefineGAN"}
    from tests.reference import applio_models, rvc_models

    path = applio_models.checkpoint_path(cache, "MRF HiFi-GAN", sr)
    net = applio_models.reference_model(rvc_models.load_torch_checkpoint(path)).dec
    if reference_only:
        return net
    weights, config = convert_voice(load_checkpoint(path), str(path))
    return net, {k[4:]: mx.array(v) for k, v in weights.items() if k.startswith("dec.")}, config


if __name__ == "__main__":
    main()
