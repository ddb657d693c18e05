"""Side-by-side benchmark: rvc==0.3.5 on torch CPU (the reference, default settings) vs rvc-mlx.

Same random-weight models and inputs for both; every measurement runs in its own process (so load time and peak
RSS are honest), reference and ours interleaved, medians over ``--runs``. Reports per-stage medians, real-time
factor, peak RSS and ours/reference ratios as JSON and a markdown table.

    python benchmarks/e2e.py --runs 5 --seconds 30 --out benchmarks/results
    python benchmarks/e2e.py --synth-only --runs 5          # synthesizer alone, 10 s at 40k (v2)

Needs the test extra (torch, transformers) and rvc==0.3.5 (``scripts/setup-dev`` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOICE = "v2-40k-f0"
SR16 = 16000


# -- preparation (once, in the driver) ----------------------------------------------------------------------------


def prepare(cache: Path, seconds: float) -> dict:
    """Build/convert the models and write the input clip; returns paths for the workers."""
    import soundfile as sf

    from tests.reference import hubert_models
    from tests.reference.rvc_pipeline import ReferenceModels

    models = ReferenceModels(cache)
    voice_path, _, _ = models.voice(VOICE)
    clip = cache / f"bench-{seconds:g}s.wav"
    if not clip.exists():
        sf.write(clip, hubert_models.speech_like(int(SR16 * seconds), seed=11), SR16, subtype="FLOAT")
    from tests.reference import rvc_models

    variant = next(v for v in rvc_models.VARIANTS if v.name == VOICE)
    return {
        "cache": str(cache),
        "clip": str(clip),
        "voice_pth": str(rvc_models.checkpoint_path(cache, variant)),
        "voice": str(voice_path),
        "hubert": str(models.hubert_path),
        "rmvpe": str(models.rmvpe_path),
        "rmvpe_pt": str(models.rmvpe_pt),
        "index": str(models.index(768)),
    }


# -- workers (one measurement per process) ------------------------------------------------------------------------


def worker_ours(paths: dict, out_wav: str) -> dict:
    import rvc_mlx  # noqa: F401  (BLAS preload before mlx)
    from rvc_mlx.bench import run_once

    spec = {"voice": paths["voice"], "hubert": paths["hubert"], "rmvpe": paths["rmvpe"], "index": paths["index"],
            "input": paths["clip"], "output": out_wav, "options": {"f0_method": "rmvpe"}}
    return run_once(spec)


def reference_job(paths: dict):
    """rvc==0.3.5 set up for the clip: ``(convert, audio, sr, tgt_sr)``; ``convert(times)`` runs its pipeline with
    default settings (rmvpe, index 0.75) and fills its stage clocks into ``times``."""
    import numpy as np
    import soundfile as sf
    import torch

    sys.argv = sys.argv[:1]
    from tests.reference import hubert_models, rvc_models
    from tests.reference.rvc_pipeline import REFERENCE_CONFIG, FairseqStyleHubert

    from rvc.modules.vc.pipeline import Pipeline

    ckpt = torch.load(paths["voice_pth"], map_location="cpu", weights_only=False)
    net_g = rvc_models.reference_model(ckpt)
    hubert = FairseqStyleHubert(*hubert_models.load_reference_model(Path(paths["cache"]) / "hubert")).eval()
    os.environ["rmvpe_root"] = str(Path(paths["rmvpe_pt"]).parent)
    audio, sr = sf.read(paths["clip"], dtype="float32")
    peak = np.abs(audio).max() / 0.95
    if peak > 1:
        audio /= peak
    tgt_sr = ckpt["config"][-1]
    pipe = Pipeline(tgt_sr, REFERENCE_CONFIG)

    def convert(times: dict):
        with torch.no_grad():
            return pipe.pipeline(hubert, net_g, 0, audio, "bench.wav", times, 0, "rmvpe", paths["index"], 0.75, 1,
                                 3, tgt_sr, 0, 0.25, "v2", 0.33, None)

    return convert, audio, sr, tgt_sr


def worker_reference(paths: dict, out_wav: str) -> dict:
    t0 = time.perf_counter()
    import soundfile as sf

    convert, audio, sr, tgt_sr = reference_job(paths)
    t_load = time.perf_counter() - t0
    times = {"npy": 0.0, "f0": 0.0, "infer": 0.0}
    t1 = time.perf_counter()
    out = convert(times)
    t_convert = time.perf_counter() - t1
    t2 = time.perf_counter()
    sf.write(out_wav, out, tgt_sr)
    t_write = time.perf_counter() - t2
    # the reference's own stage clocks: npy = HuBERT + retrieval, infer = synthesis
    return {"load": t_load, "f0": times["f0"], "hubert+retrieval": times["npy"], "synthesis": times["infer"],
            "convert": t_convert, "write": t_write, "audio_s": len(audio) / sr}


def worker_synth(impl: str, paths: dict, seconds: float) -> dict:
    """Synthesizer alone on ``seconds`` of 100 fps inputs, noise zeroed; returns the best-of-1 time after warmup."""
    import numpy as np

    from tests.reference import rvc_models

    frames = int(seconds * 100)
    feats, pitch, f0 = rvc_models.make_inputs(768, frames, seed=1)
    if impl == "reference":
        import torch

        ckpt = torch.load(paths["voice_pth"], map_location="cpu", weights_only=False)
        model = rvc_models.reference_model(ckpt)
        torch.set_grad_enabled(False)
        run = lambda: rvc_models.reference_infer(model, feats, pitch, f0)  # noqa: E731
        with rvc_models.deterministic():
            run()
            t = time.perf_counter()
            run()
            dt = time.perf_counter() - t
    else:
        import rvc_mlx  # noqa: F401
        from rvc_mlx.models.synthesizer import Synthesizer

        model = Synthesizer.load(paths["voice"])
        run = lambda: model.synthesize(feats, pitch, f0, noise="none")  # noqa: E731
        run()
        t = time.perf_counter()
        run()
        dt = time.perf_counter() - t
    return {"synthesis": dt, "audio_s": seconds}


# -- driver -------------------------------------------------------------------------------------------------------


def _run_worker(args: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(args[:2])}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    ours, ref = result["ours"], result["reference"]
    lines = [f"Machine: {result['machine']}; input {result['seconds']:g} s; {result['runs']} runs each, interleaved, "
             "medians.", "", "| stage | reference (s) | rvc-mlx (s) | ours / ref |", "|---|---:|---:|---:|"]
    rows = [("load", "load", "load"), ("F0 (rmvpe)", "f0", "f0"),
            ("HuBERT + retrieval", "hubert+retrieval", None), ("synthesis", "synthesis", "synthesis"),
            ("convert (total)", "convert", "convert"), ("write", "write", "write"),
            ("peak RSS (MB)", "peak_rss_mb", "peak_rss_mb")]
    for label, rk, ok in rows:
        r = ref.get(rk)
        o = ours.get(ok) if ok else ours.get("hubert", 0) + ours.get("retrieval", 0)
        if r is None or o is None:
            continue
        lines.append(f"| {label} | {r:.2f} | {o:.2f} | {o / r:.2f} |")
    rtf_r = ref["convert"] / result["seconds"]
    rtf_o = ours["convert"] / result["seconds"]
    lines.append(f"| real-time factor | {rtf_r:.3f} | {rtf_o:.3f} | {rtf_o / rtf_r:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "v" / "rvc-reference"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--synth-only", action="store_true", help="benchmark the synthesizer alone (10 s at 40k)")
    p.add_argument("--worker", choices=("ours", "reference", "synth-ours", "synth-reference"), help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    if a.worker:
        paths = json.loads(a.paths)
        if a.worker.startswith("synth-"):
            res = worker_synth(a.worker[len("synth-"):], paths, a.seconds)
        else:
            out = str(Path(paths["cache"]) / f"bench-out-{a.worker}.wav")
            res = (worker_ours if a.worker == "ours" else worker_reference)(paths, out)
        from rvc_mlx.bench import peak_rss_mb

        res["peak_rss_mb"] = peak_rss_mb()  # not ru_maxrss: it includes the driver's RSS (it survives exec)
        print(json.dumps(res))
        return 0

    import torch  # noqa: F401  (torch before rvc_mlx in the driver, which builds reference models)

    from rvc_mlx.bench import machine, medians

    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = prepare(cache, a.seconds if not a.synth_only else 10.0)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pj = json.dumps(paths)
    if a.synth_only:
        runs = {"reference": [], "reference_mmap": [], "ours": []}
        for i in range(a.runs):
            runs["reference"].append(_run_worker(["--worker", "synth-reference", "--paths", pj, "--seconds", "10"]))
            runs["ours"].append(_run_worker(["--worker", "synth-ours", "--paths", pj, "--seconds", "10"]))
            runs["reference_mmap"].append(_run_worker(["--worker", "synth-reference", "--paths", pj, "--seconds", "10"],
                                                      env={"MALLOC_MMAP_THRESHOLD_": "2147483647"}))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]['synthesis']:.2f}s" for k, v in runs.items()), flush=True)
        med = {k: medians(v) for k, v in runs.items()}
        result = {"machine": machine(), "runs": a.runs, "seconds": 10.0, "synthesis": med,
                  "ratio": med["ours"]["synthesis"] / med["reference"]["synthesis"],
                  "ratio_vs_mmap": med["ours"]["synthesis"] / med["reference_mmap"]["synthesis"]}
        (out_dir / "synth.json").write_text(json.dumps(result, indent=2))
        md = (f"Synthesizer, 10 s at 40k (v2, f0), noise zeroed, {a.runs} runs, medians. Machine: {result['machine']}\n\n"
              "| implementation | time (s) | rvc-mlx / it |\n|---|---:|---:|\n"
              f"| torch (rvc==0.3.5) | {med['reference']['synthesis']:.2f} | {result['ratio']:.2f} |\n"
              f"| torch, MALLOC_MMAP_THRESHOLD_=2147483647 | {med['reference_mmap']['synthesis']:.2f} | "
              f"{result['ratio_vs_mmap']:.2f} |\n| rvc-mlx | {med['ours']['synthesis']:.2f} | 1.00 |\n")
        (out_dir / "synth.md").write_text(md)
        print(md)
        return 0

    runs = {"reference": [], "ours": []}
    for i in range(a.runs):
        for impl in ("reference", "ours"):
            runs[impl].append(_run_worker(["--worker", impl, "--paths", pj]))
        print(f"run {i + 1}: ref {runs['reference'][-1]['convert']:.2f}s, ours {runs['ours'][-1]['convert']:.2f}s",
              flush=True)
    result = {"machine": machine(), "runs": a.runs, "seconds": a.seconds,
              "reference": medians(runs["reference"]), "ours": medians(runs["ours"]), "all_runs": runs}
    result["ratio_convert"] = result["ours"]["convert"] / result["reference"]["convert"]
    (out_dir / "e2e.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (out_dir / "e2e.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
