"""Streaming benchmark: per-block compute of rvc-mlx's StreamConverter vs rvc-next 0.2.16's StreamEngine (torch CPU).

Same random-weight, full-size models (v2 40 kHz voice, HuBERT base, RMVPE) and the same speech-like input for
both, noise zeroed, at the device rate of the voice. For each (block, extra) setting both engines are warmed up,
then fed the same blocks, reference and ours interleaved block by block (the order alternating); reported: the
per-block p50/p95 in ms, RTF (p50 / block time), ours/reference ratios, and the arithmetic per block (GFLOP,
counted with torch's FlopCounterMode on the reference) with its floor at this machine's measured sgemm rate.

    python benchmarks/stream.py --blocks 20 --out benchmarks/results

Needs the test extra and rvc-next (``scripts/setup-dev`` installs them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOICE = "v2-40k-f0"
SETTINGS = [(0.25, 0.5), (0.25, 2.5), (0.5, 0.5), (0.5, 2.5)]  # (block seconds, extra seconds)
WARMUP = 3


def sgemm_gflops() -> float:
    """MLX float32 matmul throughput on this machine (GFLOP/s, 1024³, best of 5)."""
    import mlx.core as mx

    a = mx.random.normal((1024, 1024))
    mx.eval(a)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        mx.eval(a @ a)
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best / 1e9


def block_gflop(ref, block) -> float:
    """Floating-point work of one reference block (matmuls, convolutions, attention), GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        ref.process(block)
    return counter.get_total_flops() / 1e9


def percentile(values, q):
    import numpy as np

    return float(np.percentile(np.array(values), q))


def run_setting(models, vc, block_time: float, extra: float, blocks: int, f0_method: str) -> dict:
    from rvc_mlx.stream import StreamConverter, StreamOptions
    from tests.reference import rmvpe_models, rvc_next_stream

    sr = vc.sample_rate
    ours = StreamConverter(vc, StreamOptions(block_time=block_time, extra_time=extra, f0_method=f0_method,
                                             deterministic=True))
    ref = rvc_next_stream.reference_engine(models, VOICE, f0_method=f0_method, sample_rate=sr,
                                           block_ms=int(round(block_time * 1000)), context_ms=int(round(extra * 1000)))
    n = ours.block_size
    audio = rmvpe_models.speech_like((blocks + WARMUP + 2) * n / sr, seed=3, sr=sr)
    ours.warmup(WARMUP)
    for i in range(WARMUP):
        ref.process(audio[i * n : (i + 1) * n])
    times = {"ours": [], "reference": []}
    for i in range(WARMUP, WARMUP + blocks):
        block = audio[i * n : (i + 1) * n]
        order = (("reference", ref), ("ours", ours)) if i % 2 else (("ours", ours), ("reference", ref))
        for name, engine in order:
            start = time.perf_counter()
            engine.process(block)
            times[name].append(1000 * (time.perf_counter() - start))
    gflop = block_gflop(ref, audio[:n])
    row = {"block_s": block_time, "extra_s": extra, "f0": f0_method, "blocks": blocks, "gflop_per_block": gflop}
    for name, values in times.items():
        row[name] = {"p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
                     "rtf_p50": percentile(values, 50) / (1000 * block_time),
                     "rtf_p95": percentile(values, 95) / (1000 * block_time)}
    row["ratio_p50"] = row["ours"]["p50_ms"] / row["reference"]["p50_ms"]
    row["ratio_p95"] = row["ours"]["p95_ms"] / row["reference"]["p95_ms"]
    return row


def markdown(rows: list[dict], gflops: float) -> str:
    lines = [
        f"Per-block compute, {VOICE} at its 40 kHz rate, HuBERT base, rmvpe; crossfade 0.05 s. sgemm floor at "
        f"{gflops:.0f} GFLOP/s (MLX float32, this machine).",
        "",
        "| block s | extra s | GFLOP/block | floor ms | ours p50 / p95 ms | rvc-next p50 / p95 ms | ratio p50 / p95 "
        "| ours RTF p95 | real time? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, t = r["ours"], r["reference"]
        floor = 1000 * r["gflop_per_block"] / gflops
        lines.append(
            f"| {r['block_s']:g} | {r['extra_s']:g} | {r['gflop_per_block']:.1f} | {floor:.0f} "
            f"| {o['p50_ms']:.0f} / {o['p95_ms']:.0f} | {t['p50_ms']:.0f} / {t['p95_ms']:.0f} "
            f"| {r['ratio_p50']:.2f} / {r['ratio_p95']:.2f} | {o['rtf_p95']:.2f} "
            f"| {'yes' if o['rtf_p95'] < 1 else 'no'} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=20, help="measured blocks per setting (after warm-up)")
    p.add_argument("--f0-method", default="rmvpe", choices=("rmvpe", "fcpe", "pm"))
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "d" / "rvc-reference"))
    p.add_argument("--out", help="directory for stream.json and stream.md")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (before rvc_mlx: its BLAS loads first)

    from rvc_mlx.pipeline import VoiceConverter
    from tests.reference import rvc_next_stream
    from tests.reference.rvc_pipeline import ReferenceModels

    models = ReferenceModels(Path(args.cache))
    voice, _, _ = models.voice(VOICE)
    vc = VoiceConverter.load(voice, models.hubert_path, rmvpe=models.rmvpe_path,
                             fcpe=str(rvc_next_stream.fcpe_weights()))
    gflops = sgemm_gflops()
    rows = []
    for block_time, extra in SETTINGS:
        rows.append(run_setting(models, vc, block_time, extra, args.blocks, args.f0_method))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, gflops)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stream.json").write_text(json.dumps({"sgemm_gflops": gflops, "rows": rows}, indent=2) + "\n")
        (out / "stream.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
