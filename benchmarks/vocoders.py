"""Applio's decoders (ultimate-rvc 0.6.0: ``RefineGANGenerator``, ``HiFiGANMRFGenerator``) vs rvc-mlx, 10 s of audio.

Same calibrated random weights and inputs for both (tests/reference/refinegan_models.py, applio_models.py), noise
off, 2 threads each; runs interleaved (reference, ours, reference, ...) in one process, medians and the
ours/reference ratio.

    python benchmarks/vocoders.py --vocoder refinegan --rates 32000 40000 --runs 5 [--out benchmarks/results]
    python benchmarks/vocoders.py --vocoder mrf --rates 40000 --runs 5 [--out benchmarks/results]

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
    args = parser.parse_args()

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
    cache = Path(tempfile.gettempdir()) / "rvc-mlx-bench-vocoders"
    cache.mkdir(exist_ok=True)
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


def decoders(vocoder: str, sr: int, cache: Path):
    """(torch decoder, our converted decoder weights without ``dec.``, voice config) for a rate."""
    import mlx.core as mx

    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.convert.rvc import convert_voice

    if vocoder == "refinegan":
        from tests.reference.refinegan_models import CONFIGS, reference

        net, weights = reference(sr, str(cache))
        return net, weights, {"sample_rate": sr, "upsample_rates": CONFIGS[sr], "vocoder": "RefineGAN"}
    from tests.reference import applio_models, rvc_models

    path = applio_models.checkpoint_path(cache, "MRF HiFi-GAN", sr)
    net = applio_models.reference_model(rvc_models.load_torch_checkpoint(path)).dec
    weights, config = convert_voice(load_checkpoint(path), str(path))
    return net, {k[4:]: mx.array(v) for k, v in weights.items() if k.startswith("dec.")}, config


if __name__ == "__main__":
    main()
