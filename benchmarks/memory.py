"""Peak memory of a full conversion vs input length: does a 10-minute input stay within 1.25x a 1-minute one?

Each conversion (rmvpe F0, an index, the random-weight v2 40 kHz bench voice of ``benchmarks/e2e.py``) runs in its
own process; the process reports its peak RSS (``getrusage``), MLX's peak memory, and its RSS sampled every
``SAMPLE_S`` seconds, labelled by pipeline stage (to find what grows with length). Writes ``memory.json`` and
``memory.md`` to ``--out``.

    python -m benchmarks.memory --seconds 60 600        # from the repository root
    python -m benchmarks.memory --models small          # same pipeline, narrow random voice and HuBERT

``--models bench`` (default) uses the full-size bench voice and HuBERT; it needs the test extra (torch,
transformers, rvc==0.3.5) to build them once (cached). ``--models small`` keeps the real RMVPE and the 40 kHz
output but draws a narrow voice (v2 layout, 64-d features, 64 upsampling channels, one resblock per
upsampling stage), a narrow 12-layer HuBERT
(64-d) and a 64-d index: ~10x less compute, so a 10-minute input fits a short run. Per-piece memory (HuBERT,
synthesizer) is then smaller, which makes the 10-minute/1-minute ratio a stricter test of what grows with length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOICE = "v2-40k-f0"
SR16 = 16000
SAMPLE_S = 0.05  # RSS sampling period of the worker's timeline
TARGET_RATIO = 1.25  # issue 7: a 10-minute input's peak RSS within 1.25x a 1-minute input's
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def _peak_rss_mb() -> float:
    from rvc_mlx.bench import peak_rss_mb

    return peak_rss_mb()


def prepare(cache: Path, seconds: list[float]) -> dict:
    """Build/convert the bench models (once) and write one speech-like clip per length; returns paths."""
    import soundfile as sf

    from tests.reference import hubert_models, rvc_models  # noqa: F401  (torch first, via tests.reference)
    from tests.reference.rvc_pipeline import ReferenceModels

    models = ReferenceModels(cache)
    voice_path, _, _ = models.voice(VOICE)
    clips = {}
    for s in seconds:
        clip = cache / f"bench-{s:g}s.wav"
        if not clip.exists():
            sf.write(clip, hubert_models.speech_like(int(SR16 * s), seed=11), SR16, subtype="FLOAT")
        clips[f"{s:g}"] = str(clip)
    return {"cache": str(cache), "clips": clips, "voice": str(voice_path), "hubert": str(models.hubert_path),
            "rmvpe": str(models.rmvpe_path), "index": str(models.index(768))}


SMALL_DIM = 64


def _save_random(path: Path, module, config: dict, seed: int) -> None:
    """Save ``module`` with every matrix/kernel drawn from N(0, 1/fan_in) (vectors keep their initial values)."""
    import numpy as np
    from mlx.utils import tree_flatten

    from rvc_mlx import store

    rng = np.random.default_rng(seed)
    weights = {}
    for name, value in tree_flatten(module.parameters()):
        value = np.array(value)
        if value.ndim >= 2:
            value = (rng.standard_normal(value.shape) / np.sqrt(np.prod(value.shape[1:]))).astype(np.float32)
        weights[name] = value
    store.save(path, weights, config)


def prepare_small(cache: Path, seconds: list[float]) -> dict:
    """Narrow random-weight voice/HuBERT/index (no torch needed) and the real converted bench RMVPE."""
    import dataclasses

    import numpy as np

    import rvc_mlx  # noqa: F401
    from rvc_mlx.models.hubert import Hubert, HubertConfig
    from rvc_mlx.models.synthesizer import Synthesizer, SynthesizerConfig

    d = SMALL_DIM
    small = cache / "memory-small"
    small.mkdir(parents=True, exist_ok=True)
    voice, hubert, index = small / "voice-1rb.safetensors", small / "hubert.safetensors", small / "features.index"
    if not voice.exists():
        cfg = SynthesizerConfig(feature_dim=d, inter_channels=d // 2, hidden_channels=d // 2, filter_channels=d,
                                n_layers=2, upsample_initial_channel=d, gin_channels=d // 2,
                                resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
        _save_random(voice, Synthesizer(cfg), {**dataclasses.asdict(cfg), "kind": "voice"}, seed=1)
    if not hubert.exists():
        cfg = HubertConfig(hidden_size=d, num_attention_heads=4, intermediate_size=2 * d, conv_dim=(d,) * 7,
                           final_proj_dim=d // 2)
        _save_random(hubert, Hubert(cfg), {**dataclasses.asdict(cfg), "kind": "hubert"}, seed=2)
    if not index.exists():
        import faiss

        vecs = np.random.default_rng(3).standard_normal((4000, d)).astype(np.float32)
        ivf = faiss.index_factory(d, "IVF64,Flat")
        ivf.train(vecs)
        ivf.add(vecs)
        faiss.write_index(ivf, str(index))
    rmvpe = sorted((cache / "converted").glob("rmvpe-*.safetensors"))
    if not rmvpe:
        raise SystemExit(f"no converted RMVPE in {cache / 'converted'}: run once with --models bench")
    clips = {}
    for s in seconds:
        clip = cache / f"bench-{s:g}s.wav"
        if not clip.exists():
            raise SystemExit(f"{clip} missing: run once with --models bench (writes the speech-like clips)")
        clips[f"{s:g}"] = str(clip)
    return {"cache": str(cache), "clips": clips, "voice": str(voice), "hubert": str(hubert),
            "rmvpe": str(rmvpe[-1]), "index": str(index)}


class Sampler(threading.Thread):
    """Samples this process's RSS every ``SAMPLE_S`` s, labelled with the stage set by ``stage``."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stage = "start"
        self.samples: list[tuple[float, float, str]] = []
        self._done = threading.Event()
        self._t0 = time.perf_counter()

    def run(self):
        while not self._done.wait(SAMPLE_S):
            self.samples.append((time.perf_counter() - self._t0, _rss_mb(), self.stage))

    def stop(self):
        self._done.set()
        self.join()

    def peak_by_stage(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, rss, stage in self.samples:
            out[stage] = max(out.get(stage, 0.0), rss)
        return out


def worker(paths: dict, seconds: str) -> dict:
    """One full conversion; peak RSS and per-stage sampled RSS maxima (MB)."""
    sampler = Sampler()
    sampler.start()
    import rvc_mlx  # noqa: F401, I001  (first: its BLAS preload must run before mlx.core is imported)
    import mlx.core as mx

    from rvc_mlx import audio as audio_io
    from rvc_mlx import pipeline

    sampler.stage = "load"
    vc = pipeline.VoiceConverter.load(paths["voice"], hubert=paths["hubert"], rmvpe=paths["rmvpe"],
                                      index=paths["index"])
    audio, sr = audio_io.read(paths["clips"][seconds])
    rss_loaded = _rss_mb()

    # label the sampled RSS by pipeline stage (wrapping the stage functions; the computation is unchanged)
    def label(name, fn):
        def wrapped(*args, **kwargs):
            previous, sampler.stage = sampler.stage, name
            try:
                return fn(*args, **kwargs)
            finally:
                sampler.stage = previous
        return wrapped

    vc.f0 = label("f0", vc.f0)
    vc.content_features = label("hubert", vc.content_features)
    pipeline.high_pass = label("high_pass", pipeline.high_pass)
    pipeline.rms_mix = label("rms_mix", pipeline.rms_mix)
    pipeline.plan_pieces = label("cut_points", pipeline.plan_pieces)
    synth = vc.synthesizer
    synth.stages = label("synthesis", synth.stages)
    sampler.stage = "convert"
    t0 = time.perf_counter()
    timings: dict = {}
    out, out_sr = vc.convert(audio, sr, pipeline.ConversionOptions(f0_method="rmvpe", seed=0), timings=timings)
    t_convert = time.perf_counter() - t0
    sampler.stop()
    return {"audio_s": len(audio) / sr, "output_samples": int(out.shape[0]), "output_sr": int(out_sr),
            "convert_s": t_convert, "rss_after_load_mb": rss_loaded, "peak_rss_mb": _peak_rss_mb(),
            "mlx_peak_mb": mx.get_peak_memory() / 2**20, "peak_rss_by_stage_mb": sampler.peak_by_stage(),
            "stage_seconds": timings}


def _run_worker(paths: dict, seconds: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", seconds, "--paths", json.dumps(paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker {seconds}s failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    runs = result["runs"]
    names = list(runs)
    stages = sorted({s for r in runs.values() for s in r["peak_rss_by_stage_mb"]},
                    key=lambda s: -max(r["peak_rss_by_stage_mb"].get(s, 0) for r in runs.values()))
    head = "| | " + " | ".join(f"{n} s input" for n in names) + " |"
    kind = {"bench": "the full-size random-weight bench voice (v2, 40 kHz) and HuBERT",
            "small": "a narrow random-weight voice (v2 layout, 40 kHz) and HuBERT (see --models small)"}
    lines = [f"Peak memory of one full conversion per process: rmvpe F0, an index, {kind[result['models']]}. "
             f"Machine: {result['machine']}.", "", head, "|---|" + "---:|" * len(names)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(runs[n]) for n in names) + " |")

    row("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")
    row("RSS after loading models (MB)", lambda r: f"{r['rss_after_load_mb']:.0f}")
    row("MLX peak memory (MB)", lambda r: f"{r['mlx_peak_mb']:.0f}")
    row("output samples", lambda r: f"{r['output_samples']} @ {r['output_sr']} Hz")
    row("convert time (s)", lambda r: f"{r['convert_s']:.1f}")
    for s in stages:
        row(f"sampled RSS max during {s} (MB)", lambda r, s=s: f"{r['peak_rss_by_stage_mb'].get(s, 0):.0f}")
    lines += ["", f"Ratio of peak RSS, {names[-1]} s / {names[0]} s: **{result['ratio']:.3f}** "
              f"(target <= {TARGET_RATIO})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, nargs="+", default=[60.0, 600.0])
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "v" / "rvc-reference"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--models", choices=("bench", "small"), default="bench")
    p.add_argument("--parallel", action="store_true", help="run the conversions at the same time (one process each)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        print(json.dumps(worker(json.loads(a.paths), a.worker)))
        return 0

    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = prepare(cache, a.seconds) if a.models == "bench" else prepare_small(cache, a.seconds)
    runs = {}
    if a.parallel:  # each worker is still its own process: its peak RSS is its own
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(a.seconds)) as pool:
            done = dict(zip(a.seconds, pool.map(lambda s: _run_worker(paths, f"{s:g}"), a.seconds)))
    for s in a.seconds:
        runs[f"{s:g}"] = done[s] if a.parallel else _run_worker(paths, f"{s:g}")
        print(f"{s:g} s: peak RSS {runs[f'{s:g}']['peak_rss_mb']:.0f} MB", flush=True)
    first, last = runs[f"{a.seconds[0]:g}"], runs[f"{a.seconds[-1]:g}"]
    from rvc_mlx.bench import machine

    result = {"machine": machine(), "models": a.models, "runs": runs, "ratio": last["peak_rss_mb"] / first["peak_rss_mb"],
              "target_ratio": TARGET_RATIO}
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps(result, indent=2))  # the models used are in it
    md = markdown(result)
    (out_dir / "memory.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
