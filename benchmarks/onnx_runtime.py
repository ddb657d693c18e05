"""Three runtimes on the same models: torch (rvc==0.3.5), ONNX Runtime (the same weights exported) and rvc-mlx.

The RVC v2 40 kHz synthesizer (calibrated random weights from tests/reference), plus, where they export, HuBERT
(transformers ``HubertModel``, layer 12) and RMVPE (rvc's ``E2E``, log-mel -> salience). The synthesizer's ONNX
graph is rvc's own export variant, ``rvc.lib.infer_pack.models_onnx.SynthesizerTrnMsNSFsidM``, with the
reference's state dict. Every ONNX graph is exported (``dynamo=False``, opset 17) at the benchmark's input size,
since its relative-attention reshapes are specialised to the frame count, into a temp dir deleted afterwards.

    python benchmarks/onnx_runtime.py --frames 1000 --runs 5 [--out benchmarks/results]

Noise off on every side: torch runs inside ``rvc_models.deterministic()`` (``randn_like``/``rand`` -> zeros); the
ONNX graph is traced inside the same patch (its SineGen phase and source noise are constant zeros) and gets
``rnd`` = zeros; rvc-mlx runs with ``noise="none"``. One process, 2 threads each (torch ``set_num_threads``, ORT
``intra_op_num_threads=2, inter_op_num_threads=1``), one warm-up each, then runs interleaved (torch, ONNX,
rvc-mlx, torch, ...); medians, ratios and parity (max-abs, correlation) against torch's output.
Needs the test extra (torch, transformers, onnx, onnxruntime) and rvc==0.3.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
VOICE = "v2-40k-f0"
SR16 = 16000
FPS = 100
OPSET = 17
SIDES = ("torch", "onnx", "ours")
LABELS = {"torch": "torch", "onnx": "ONNX Runtime", "ours": "rvc-mlx"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1000, help="100 fps frames (1000 = 10 s)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--models", nargs="+", choices=("synth", "hubert", "rmvpe"), default=["synth", "hubert", "rmvpe"])
    p.add_argument("--cache", type=Path, default=ROOT / ".pytest_cache" / "v" / "rvc-reference")
    p.add_argument("--out", type=Path, default=None, help="directory for onnx_runtime.{json,md}")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import torch  # before rvc_mlx: torch's BLAS loads first

    torch.set_num_threads(THREADS)
    import onnxruntime as ort

    import rvc_mlx  # noqa: F401  (optimized BLAS preload, before mlx.core)
    import mlx.core as mx
    import numpy as np

    from rvc_mlx.backend import configure_mlx
    from rvc_mlx.bench import machine
    from tests.reference.rvc_pipeline import ReferenceModels

    configure_mlx()
    a.cache.mkdir(parents=True, exist_ok=True)
    models = ReferenceModels(a.cache)
    tmp = Path(tempfile.mkdtemp(prefix="rvc-mlx-onnx-"))
    rows, failures = [], {}
    try:
        for name in a.models:
            case = CASES[name](models, a.frames)
            try:
                t0 = time.perf_counter()
                path = tmp / f"{name}.onnx"
                with torch.no_grad(), case["noise_off"]():
                    torch.onnx.export(case["module"], case["args"], str(path), dynamo=False, opset_version=OPSET,
                                      input_names=case["names"], output_names=["out"])
                export_s = time.perf_counter() - t0
                opts = ort.SessionOptions()
                opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                feed = {n: t.numpy() for n, t in zip(case["names"], case["args"])}
                sess.run(None, feed)  # fails here when the export is not runnable
            except Exception as e:  # record why the export failed; the run goes on without the ONNX side
                failures[name] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                print(f"{name}: ONNX export failed: {failures[name]}", flush=True)
                continue
            fns = {"torch": case["torch"], "onnx": lambda s=sess, f=feed, k=case["onnx_out"]: k(s.run(None, f)[0]),
                   "ours": case["ours"]}
            row, ref = measure(name, case["input"], fns, a.runs, export_s, np, mx)
            if "exported_in_torch" in case:  # the exported module itself, run by torch: separates export from model
                got = case["exported_in_torch"]().reshape(-1)
                row["exported_module_in_torch_max_abs"] = float(np.abs(got - ref).max())
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {"machine": machine(), "load_average_after": list(os.getloadavg()), "frames": a.frames, "runs": a.runs,
              "threads": THREADS, "opset": OPSET,
              "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "mlx": mx.__version__},
              "rows": rows, "export_failures": failures}
    md = markdown(result)
    print("\n" + md)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "onnx_runtime.json").write_text(json.dumps(result, indent=1))
        (a.out / "onnx_runtime.md").write_text(md)
    return 0


def measure(name, input_desc, fns, runs, export_s, np, mx) -> dict:
    """One warm-up per side, then ``runs`` interleaved rounds. Returns (row: medians, ratios, parity vs torch's
    output; torch's output, flat)."""
    outs = {side: fns[side]() for side in SIDES}  # warm-up
    times = {side: [] for side in SIDES}
    for i in range(runs):
        for side in SIDES:
            t = time.perf_counter()
            outs[side] = fns[side]()
            times[side].append(time.perf_counter() - t)
            mx.clear_cache()
        print(f"{name} run {i + 1}: " + ", ".join(f"{s} {times[s][-1]:.2f}s" for s in SIDES), flush=True)
    med = {s: statistics.median(v) for s, v in times.items()}
    ref = outs["torch"].reshape(-1).astype(np.float64)
    parity = {}
    for side in ("onnx", "ours"):
        out = outs[side].reshape(-1).astype(np.float64)
        parity[side] = {"max_abs": float(np.abs(out - ref).max()), "corr": float(np.corrcoef(out, ref)[0, 1])}
    return {"model": name, "input": input_desc, "times": times, "median_s": med, "onnx_export_s": export_s,
            "ours_over_onnx": med["ours"] / med["onnx"], "ours_over_torch": med["ours"] / med["torch"],
            "onnx_over_torch": med["onnx"] / med["torch"], "parity_vs_torch": parity,
            "torch_output_std": float(ref.std())}, outs["torch"].reshape(-1)


# -- the three models: torch module to export, its example inputs, and one callable per side --------------------


def synth_case(models, frames: int) -> dict:
    import torch
    from rvc.lib.infer_pack.models_onnx import SynthesizerTrnMsNSFsidM

    from rvc_mlx.models.synthesizer import Synthesizer
    from tests.reference import rvc_models

    voice_path, net_g, ckpt = models.voice(VOICE)
    config = list(ckpt["config"])
    config[-3] = ckpt["weight"]["emb_g.weight"].shape[0]
    onnx_net = SynthesizerTrnMsNSFsidM(*config, is_half=False, version=ckpt["version"]).eval()
    missing, unexpected = onnx_net.load_state_dict(net_g.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("enc_q.") for k in missing), (missing, unexpected)
    feats, pitch, f0 = rvc_models.make_inputs(768, frames, seed=1)
    args = (torch.from_numpy(feats)[None], torch.tensor([frames]), torch.from_numpy(pitch)[None],
            torch.from_numpy(f0)[None], torch.tensor([0]), torch.zeros(1, config[2], frames))
    ours = Synthesizer.load(voice_path)

    def run_torch():
        with rvc_models.deterministic():
            return rvc_models.reference_infer(net_g, feats, pitch, f0)[0]

    def run_exported_in_torch():
        with torch.no_grad(), rvc_models.deterministic():
            return onnx_net(*args)[0, 0].numpy()

    return {"input": f"{frames} frames, (1, {frames}, 768) features + pitch/pitchf, sid 0 -> "
                     f"{frames * ours.config.upp} samples at 40 kHz",
            "module": onnx_net, "args": args, "names": ["phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd"],
            "noise_off": rvc_models.deterministic, "onnx_out": lambda y: y[0, 0],
            "torch": run_torch, "ours": lambda: ours.synthesize(feats, pitch, f0, noise="none"),
            "exported_in_torch": run_exported_in_torch}


def hubert_case(models, frames: int) -> dict:
    import contextlib

    import numpy as np
    import torch

    from rvc_mlx.models.hubert import Hubert
    from tests.reference import hubert_models

    audio = hubert_models.speech_like(SR16 * frames // FPS, seed=11)
    net = models.hubert_ref.model  # transformers HubertModel; v2 features = hidden_states[12] = last_hidden_state

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).last_hidden_state

    module = LastHidden().eval()
    x = torch.from_numpy(audio)[None]
    ours = Hubert.load(models.hubert_path)

    def run_torch():
        with torch.no_grad():
            return module(x)[0].numpy()

    return {"input": f"{frames / FPS:g} s of 16 kHz audio -> layer-12 features (T, 768)", "module": module,
            "args": (x,), "names": ["audio"], "noise_off": contextlib.nullcontext, "onnx_out": lambda y: y[0],
            "torch": run_torch, "ours": lambda: np.array(ours.extract(audio, 12))}


def rmvpe_case(models, frames: int) -> dict:
    import contextlib

    import mlx.core as mx
    import numpy as np
    import torch
    from rvc.lib.rmvpe import RMVPE

    from rvc_mlx.models.rmvpe import Rmvpe
    from tests.reference import rmvpe_models

    ref = RMVPE(str(models.rmvpe_pt), is_half=False, device="cpu")
    audio = rmvpe_models.speech_like(frames / FPS, seed=5)
    with torch.no_grad():
        mel = ref.mel_extractor(torch.from_numpy(audio)[None], center=True)  # (1, 128, T), same for all sides
    n = mel.shape[-1]
    padded = torch.nn.functional.pad(mel, (0, -n % 32))  # as rvc's mel2hidden: zero-pad to a multiple of 32
    ours = Rmvpe.load(models.rmvpe_path)
    mel_mx = mx.array(mel[0].numpy().T.copy())

    def run_torch():
        with torch.no_grad():
            return ref.model(padded)[0, :n].numpy()

    return {"input": f"E2E network only: {n}-frame log-mel (1, 128, {n}) -> salience ({n}, 360)",
            "module": ref.model, "args": (padded,), "names": ["mel"], "noise_off": contextlib.nullcontext,
            "onnx_out": lambda y: y[0, :n], "torch": run_torch,
            "ours": lambda: np.array(ours.salience_from_mel(mel_mx))}


SINEGEN_NOTE = (
    "Why the synthesizer's ONNX audio drifts (diagnosed on the graph's SineGen alone, 200 frames): ONNX Runtime's "
    "linear `Resize` (align_corners) is not exact on constant stretches, so in unvoiced frames, where torch's "
    "interpolated phase is exactly constant, it wobbles by ~1e-6; the SineGen's wrap test `diff(phase % 1) < 0` "
    "then fires spuriously (5413 extra wraps vs torch in 80000 samples), each adding -1 to the cumulated phase. "
    "Whole cycles would not change sin(2*pi*phase), but the float32 cumsum drifts to about -5400 cycles, where its "
    "rounding (~5e-4 cycle per sample) shifts the sine's phase: the voiced source, and all audio after it, "
    "decorrelate.")

CASES = {"synth": synth_case, "hubert": hubert_case, "rmvpe": rmvpe_case}
TITLES = {"synth": "synthesizer (v2 40k)", "hubert": "HuBERT base", "rmvpe": "RMVPE (E2E)"}


def markdown(r: dict) -> str:
    v = r["versions"]
    lines = [f"Three runtimes on the same random-weight models (`python benchmarks/onnx_runtime.py "
             f"--frames {r['frames']} "
             f"--runs {r['runs']}`): {r['runs']} interleaved runs after one warm-up each, medians, {r['threads']} "
             f"threads each, noise off. Machine: {r['machine']}; torch {v['torch']}, onnxruntime {v['onnxruntime']} "
             f"(CPU provider, graph exported with opset {r['opset']}), MLX {v['mlx']}. Load average after the run "
             f"(shared host): {', '.join(f'{x:.2f}' for x in r['load_average_after'])}.", "",
             "| model | input | torch (s) | ONNX Runtime (s) | rvc-mlx (s) | rvc-mlx / ONNX | rvc-mlx / torch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        m = row["median_s"]
        lines.append(f"| {TITLES[row['model']]} | {row['input']} | {m['torch']:.2f} | {m['onnx']:.2f} | "
                     f"{m['ours']:.2f} | {row['ours_over_onnx']:.2f} | {row['ours_over_torch']:.2f} |")
    lines += ["", "Per-run times (s):", ""]
    for row in r["rows"]:
        per = "; ".join(f"{LABELS[s]} " + ", ".join(f"{t:.2f}" for t in row["times"][s]) for s in SIDES)
        lines.append(f"- {TITLES[row['model']]}: {per} (ONNX export {row['onnx_export_s']:.1f} s)")
    lines += ["", "Parity against torch's output (same inputs, noise off):", "",
              "| model | ONNX max-abs | ONNX corr | rvc-mlx max-abs | rvc-mlx corr | torch output std |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        po, pm = row["parity_vs_torch"]["onnx"], row["parity_vs_torch"]["ours"]
        lines.append(f"| {TITLES[row['model']]} | {po['max_abs']:.1e} | {po['corr']:.6f} | {pm['max_abs']:.1e} | "
                     f"{pm['corr']:.6f} | {row['torch_output_std']:.3f} |")
    for row in r["rows"]:
        if "exported_module_in_torch_max_abs" in row:
            lines += ["", f"The exported {TITLES[row['model']]} module run by torch itself matches torch's reference "
                      f"to max-abs {row['exported_module_in_torch_max_abs']:.1e}, so any ONNX difference above comes "
                      "from the exported graph under ONNX Runtime."]
            if row["model"] == "synth" and row["parity_vs_torch"]["onnx"]["corr"] < 0.999:
                lines += ["", SINEGEN_NOTE]
    if r["export_failures"]:
        lines += ["", "ONNX export failures (no row):", ""]
        lines += [f"- {TITLES[k]}: {msg}" for k, msg in r["export_failures"].items()]
    lines += ["", "Noise: torch inside `rvc_models.deterministic()` (randn_like/rand -> zeros); the synthesizer's ONNX "
              "graph traced inside the same patch (SineGen phase and source noise are constant zeros) and fed "
              "`rnd` = zeros; rvc-mlx `noise=\"none\"`. The synthesizer graph is rvc's `SynthesizerTrnMsNSFsidM` "
              "with the reference's state dict."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
