"""F0 accuracy and speed: rvc-mlx's estimators next to their reference implementations.

Prints two markdown tables:

1. raw pitch accuracy (fraction of truly voiced frames estimated voiced and within 50 cents) on synthetic
   harmonic signals with known f0 (steady tones 60-1000 Hz, vibrato, glides, 3 dB SNR noise, a missing
   fundamental), ours / reference, per signal and pooled;
2. seconds per 10 s of audio, ours vs reference (median of ``--runs`` interleaved runs).

References: torchcrepe (as rvc==0.3.5 calls it, dither off), torchfcpe (as Applio calls it), and the same
pyworld / parselmouth calls through rvc==0.3.5's ``Pipeline.get_f0``. rmvpe is omitted (no real weights here).

Run from the repository root:  python -m benchmarks.f0_accuracy [--methods crepe-tiny fcpe ...] [--runs 3]
"""

from __future__ import annotations

import argparse
import time

import torch  # noqa: F401  (load torch's BLAS before MLX's)

import numpy as np

import rvc_mlx  # noqa: F401  (BLAS preload)
from rvc_mlx.f0 import F0Options, estimate
from tests.reference import pitch_reference as pr

METHODS = ["crepe", "crepe-tiny", "fcpe", "harvest", "dio", "pm"]
BENCH_SECONDS = 10.0


def accuracy_table(methods: list[str]) -> str:
    signals = pr.all_signals()
    head = "| method | reference | " + " | ".join(s.name for s in signals) + " | pooled |"
    lines = [head, "|" + "---|" * (len(signals) + 3)]
    for method in methods:
        cells, hits_o, hits_r, total = [], 0.0, 0.0, 0
        for sig in signals:
            ours = pr.our_f0(method, sig.name)
            ref = pr.reference_f0(method, sig)
            a_o, a_r = pr.raw_pitch_accuracy(ours, sig), pr.raw_pitch_accuracy(ref, sig)
            n = int(sig.scored.sum())
            hits_o, hits_r, total = hits_o + a_o * n, hits_r + a_r * n, total + n
            cells.append(f"{100 * a_o:.1f} / {100 * a_r:.1f}")
        pooled = f"**{100 * hits_o / total:.1f}** / {100 * hits_r / total:.1f}"
        lines.append(f"| {method} | {pr.REFERENCE_NAMES[method]} | " + " | ".join(cells) + f" | {pooled} |")
    return "\n".join(lines)


def bench_audio() -> np.ndarray:
    audio = np.concatenate([s.audio for s in pr.all_signals()])
    n = int(BENCH_SECONDS * pr.SR)
    return np.tile(audio, int(np.ceil(n / len(audio))))[:n]


def timing_table(methods: list[str], runs: int) -> str:
    audio = bench_audio()
    sig = pr.Signal("bench", audio, np.zeros(1 + len(audio) // pr.HOP), np.zeros(1 + len(audio) // pr.HOP, bool))
    opts = F0Options(f0_min=pr.F0_MIN, f0_max=pr.F0_MAX)
    lines = ["| method | ours (s / 10 s audio) | reference (s / 10 s audio) | reference / ours |", "|---|---|---|---|"]
    for method in methods:
        estimate(method, audio[: pr.SR], opts)  # load weights / warm up
        pr.reference_f0(method, pr.Signal("warm", audio[: pr.SR], sig.f0, sig.scored))
        t_ours, t_ref = [], []
        n = 1 if method == "crepe" else runs
        for i in range(n):
            t = time.perf_counter()
            estimate(method, audio, opts)
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            pr.reference_f0(method, pr.Signal(f"bench{i}", audio, sig.f0, sig.scored))
            t_ref.append(time.perf_counter() - t)
        o, r = float(np.median(t_ours)), float(np.median(t_ref))
        lines.append(f"| {method} | {o:.2f} | {r:.2f} | {r / o:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--runs", type=int, default=3, help="timing runs per method (crepe full: 1)")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    print("Raw pitch accuracy, % (ours / reference)\n")
    print(accuracy_table(args.methods))
    if not args.no_timing:
        print(f"\nTime per {BENCH_SECONDS:.0f} s of 16 kHz audio (median of {args.runs} runs; crepe full: 1)\n")
        print(timing_table(args.methods, args.runs))


if __name__ == "__main__":
    main()
