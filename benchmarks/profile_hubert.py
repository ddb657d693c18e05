"""Where HuBERT's time goes, per operation: rvc-mlx (each op evaluated on its own) vs the torch reference.

The reference is transformers' ``HubertModel`` (the one the suite's parity tests use) on the same random weights,
profiled with ``torch.profiler`` (self CPU time per aten op). Ours runs the same network op by op with an
``mx.eval`` after each, so the per-op times add a little synchronisation; the plain (lazy) total is reported too.
Medians over ``--runs``, ours and the reference interleaved.

    python benchmarks/profile_hubert.py --runs 3 --seconds 30 --out benchmarks/results

Needs the test extra (torch, transformers); ``scripts/setup-dev`` installs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from statistics import median
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SR16 = 16000


def profile_ours(model, audio) -> dict:
    """Seconds per op class for one v2 extraction (layer 12), each op evaluated on its own."""
    import mlx.core as mx

    from rvc_mlx.models.hubert import FEATURE_BLOCK, map_rows
    from rvc_mlx.nn import fastmath
    from rvc_mlx.nn.gelu import gelu

    spent: dict[str, float] = defaultdict(float)
    clock = [time.perf_counter()]

    def done(name: str, *arrays) -> None:
        mx.eval(*arrays)
        now = time.perf_counter()
        spent[name] += now - clock[0]
        clock[0] = now

    fe = model.feature_extractor
    first, rest = fe.conv_layers[0], fe.conv_layers[1:]
    x = first.conv(mx.array(audio)[None, :, None])
    done("feature conv 0", x)
    stats = first.layer_norm.statistics(x)
    done("group norm statistics", *stats)
    frames = (x.shape[1] - fe.field) // fe.stride + 1
    blocks = []
    for start in range(0, frames, FEATURE_BLOCK):
        stop = min(start + FEATURE_BLOCK, frames)
        y = first.layer_norm(x[:, start * fe.stride : (stop - 1) * fe.stride + fe.field], stats)
        done("group norm apply", y)
        y = gelu(y)
        done("GELU (feature convs)", y)
        for layer in rest:
            y = layer.conv(y)
            done("feature convs 1-6", y)
            y = gelu(y)
            done("GELU (feature convs)", y)
        blocks.append(y)
    x = model.feature_projection(mx.concatenate(blocks, axis=1))
    done("feature projection", x)
    enc = model.encoder
    y = enc.pos_conv_embed._grouped_conv(x)  # the CPU path (fast path ``conv``)
    done("positional conv", y)
    y = map_rows(gelu, y)[:, :-1]
    done("GELU (positional conv)", y)
    x = enc.layer_norm(x + y)
    done("layer norms + residuals", x)
    for layer in enc.layers:
        att = layer.attention
        b, t, c = x.shape

        def heads(z):
            return z.reshape(b, t, att.num_heads, c // att.num_heads).transpose(0, 2, 1, 3)

        q, k, v = heads(att.q_proj(x)), heads(att.k_proj(x)), heads(att.v_proj(x))
        done("q/k/v projections", q, k, v)
        o = fastmath.attention(q, k, v, att.scale)
        done("attention (scores, softmax, weighted sum)", o)
        o = att.out_proj(o.transpose(0, 2, 1, 3).reshape(b, t, c))
        done("attention output projection", o)
        x = layer.layer_norm(x + o)
        done("layer norms + residuals", x)
        f = layer.feed_forward.intermediate_dense(x)
        done("FFN matmuls", f)
        f = gelu(f)
        done("GELU (FFN)", f)
        f = layer.feed_forward.output_dense(f)
        done("FFN matmuls", f)
        x = layer.final_layer_norm(x + f)
        done("layer norms + residuals", x)
    return dict(spent)


def profile_reference(model, audio) -> dict:
    """Self CPU seconds per aten op for one forward pass of the transformers model."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(torch.from_numpy(audio)[None], output_hidden_states=True)
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages() if e.self_cpu_time_total > 0}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; HuBERT-base (v2, layer 12) on {result['seconds']:g} s of 16 kHz audio; "
             f"{result['runs']} runs, interleaved, medians.", "",
             f"Whole extraction (lazy, as the pipeline runs it): rvc-mlx **{result['ours_total']:.2f} s**, "
             f"torch reference **{result['reference_total']:.2f} s** (ratio {result['ours_total'] / result['reference_total']:.2f}).",
             "", "rvc-mlx, each op evaluated on its own:", "", "| op | s | share |", "|---|---:|---:|"]
    ours = result["ours_ops"]
    total = sum(ours.values())
    for name, sec in sorted(ours.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {sec:.3f} | {100 * sec / total:.0f}% |")
    lines += ["", "torch reference, self CPU time per aten op (top 15):", "", "| op | s | share |", "|---|---:|---:|"]
    ref = result["reference_ops"]
    total = sum(ref.values())
    for name, sec in sorted(ref.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"| `{name}` | {sec:.3f} | {100 * sec / total:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "d" / "rvc-reference"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import numpy as np
    import torch  # before rvc_mlx (its BLAS must load first)

    from rvc_mlx.bench import machine
    from rvc_mlx.models.hubert import Hubert
    from tests.reference import hubert_models
    from tests.reference.rvc_pipeline import ReferenceModels

    torch.set_num_threads(2)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models = ReferenceModels(cache)
    ours_model = Hubert.load(models.hubert_path)
    ref_model = models.hubert_ref.model
    audio = hubert_models.speech_like(int(SR16 * a.seconds), seed=11).astype(np.float32)

    def run_ref():
        with torch.no_grad():
            ref_model(torch.from_numpy(audio)[None], output_hidden_states=True)

    run_ref(), ours_model.extract(audio, 12)  # warm-up (JIT kernels, allocator)
    totals = {"ours": [], "reference": []}
    ops = {"ours": defaultdict(list), "reference": defaultdict(list)}
    for _ in range(a.runs):
        totals["ours"].append(timed(lambda: ours_model.extract(audio, 12)))
        totals["reference"].append(timed(run_ref))
        for name, sec in profile_ours(ours_model, audio).items():
            ops["ours"][name].append(sec)
        for name, sec in profile_reference(ref_model, audio).items():
            ops["reference"][name].append(sec)
    result = {"machine": machine(), "seconds": a.seconds, "runs": a.runs,
              "ours_total": median(totals["ours"]), "reference_total": median(totals["reference"]),
              "ours_runs": totals["ours"], "reference_runs": totals["reference"],
              "ours_ops": {k: median(v) for k, v in ops["ours"].items()},
              "reference_ops": {k: median(v) for k, v in ops["reference"].items()}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hubert_profile.json").write_text(json.dumps(result, indent=1))
    (out / "hubert_profile.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
