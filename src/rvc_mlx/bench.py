"""``rvc-mlx bench``: time a whole conversion on this machine, stage by stage.

Each run is a fresh process (so model loading and peak RSS are measured honestly); the report gives the median of
every stage over ``--runs``, the real-time factor (conversion time / audio duration, lower is faster) and the peak
resident memory, as JSON and a markdown table::

    rvc-mlx bench                                   # untrained demo models, 30 s of speech, 5 runs
    rvc-mlx bench -m voice.pth --index voice.index -i song.wav --runs 3 --json bench.json

Without ``-m`` the untrained demo models (v2/40k voice, HuBERT, RMVPE; random weights, same shapes and cost as
real ones) are used, so the numbers describe speed, not quality. Stages: ``load`` (models + audio), ``f0``,
``hubert``, ``retrieval``, ``synthesis``, ``post`` (rms mix, resample, normalise), ``write``; ``convert`` is the
whole conversion without load and write.

The side-by-side comparison with the PyTorch reference lives in the repository (``benchmarks/e2e.py``), because
it needs torch and rvc, which the runtime never imports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .errors import RvcMlxError

STAGES = ("load", "f0", "hubert", "retrieval", "synthesis", "post", "convert", "write")
DEFAULT_SECONDS = 30.0
DEFAULT_RUNS = 5


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB. On Linux the kernel's ``VmHWM``: ``getrusage``'s
    ``ru_maxrss`` survives ``exec``, so a child started by a 1 GB parent reports at least 1 GB (measured)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024.0  # macOS: bytes, Linux: KiB


def machine() -> str:
    """A one-line description of this machine (CPU model, cores, OS, Python)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


# -- one run (in its own process) ---------------------------------------------------------------------------------


def run_once(spec: dict) -> dict:
    """Load the models in ``spec``, convert ``spec["input"]``, write ``spec["output"]``; seconds per stage.

    ``spec``: voice, hubert, rmvpe (or None), index (or None), input, output, options (ConversionOptions fields).
    """
    t0 = time.perf_counter()
    from . import audio as audio_io
    from .pipeline import ConversionOptions, VoiceConverter

    vc = VoiceConverter.load(spec["voice"], hubert=spec["hubert"], rmvpe=spec.get("rmvpe"), index=spec.get("index"))
    audio, sr = audio_io.read(spec["input"])
    timings = {"load": time.perf_counter() - t0}
    t1 = time.perf_counter()
    out, out_sr = vc.convert(audio, sr, ConversionOptions(**spec.get("options", {})), timings=timings)
    timings["convert"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    audio_io.write(spec["output"], out, out_sr)
    timings["write"] = time.perf_counter() - t2
    return {**timings, "audio_s": len(audio) / sr, "peak_rss_mb": peak_rss_mb()}


def run_in_subprocess(spec: dict, env: dict | None = None) -> dict:
    """``run_once(spec)`` in a fresh Python process; returns its timings."""
    cmd = [sys.executable, "-m", "rvc_mlx.bench", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RvcMlxError(f"benchmark run failed: {lines[-1] if lines else 'no output'}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def medians(runs: list[dict]) -> dict:
    """Median of every numeric field over the runs that have it."""
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def markdown(result: dict) -> str:
    m = result["median"]
    lines = [
        f"rvc-mlx {result['version']}, {result['runs']} runs (medians), {m['audio_s']:.1f} s input. "
        f"Machine: {result['machine']}",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {stage} | {m[stage]:.2f} |" for stage in STAGES if stage in m]
    lines += [f"| real-time factor | {m['convert'] / m['audio_s']:.3f} |", f"| peak RSS (MB) | {m['peak_rss_mb']:.0f} |"]
    return "\n".join(lines) + "\n"


# -- inputs: the user's models or the untrained demo models -----------------------------------------------------


def demo_models(directory: Path) -> dict:
    """Untrained v2/40k voice, HuBERT and RMVPE in ``directory`` (built once)."""
    from .demo import DEMO_SEED, UNTRAINED, build_demo_models, save_random_module
    from .models.rmvpe import E2E, RmvpeConfig

    voice, hubert = build_demo_models(directory)
    rmvpe = directory / "demo-rmvpe-untrained.safetensors"
    if not rmvpe.is_file():
        cfg = RmvpeConfig()
        config = {**dataclasses.asdict(cfg), "kind": "rmvpe", "info": UNTRAINED}
        save_random_module(rmvpe, E2E(cfg), config, DEMO_SEED + 2)
    return {"voice": str(voice), "hubert": str(hubert), "rmvpe": str(rmvpe), "index": None}


def speech_clip(path: Path, seconds: float) -> Path:
    """The bundled demo speech repeated to ``seconds`` (16 kHz WAV), written once."""
    import numpy as np

    from . import audio as audio_io
    from .demo import demo_clip

    if not path.is_file():
        clip, sr = audio_io.read(demo_clip())
        n = int(round(seconds * sr))
        audio_io.write(path, np.resize(clip, n).astype(np.float32), sr)
    return path


def bench(spec: dict, runs: int) -> dict:
    """Run ``spec`` ``runs`` times, each in a fresh process; medians and every run."""
    all_runs = []
    for i in range(runs):
        all_runs.append(run_in_subprocess(spec))
        print(f"run {i + 1}/{runs}: convert {all_runs[-1]['convert']:.2f} s", file=sys.stderr, flush=True)
    from . import __version__

    return {"version": __version__, "machine": machine(), "runs": runs, "median": medians(all_runs),
            "all_runs": all_runs}


def cmd_bench(args) -> int:
    from .service.args import paths_from_args
    from .hub import models_dir

    if args.runs < 1:
        raise RvcMlxError(f"--runs must be at least 1, got {args.runs}")
    work = models_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        models = paths_from_args(args).to_dict()
        f0_method = args.f0_method
    else:
        models = demo_models(models_dir() / "demo")
        f0_method = "rmvpe"
    if args.input:
        clip = Path(args.input)
        if not clip.is_file():
            raise RvcMlxError(f"{clip}: input audio not found")
    else:
        if args.seconds <= 0:
            raise RvcMlxError(f"--seconds must be positive, got {args.seconds}")
        clip = speech_clip(work / f"speech-{args.seconds:g}s.wav", args.seconds)
    spec = {**models, "input": str(clip), "output": str(work / "bench-output.wav"),
            "options": {"f0_method": f0_method}}
    result = bench(spec, args.runs)
    md = markdown(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md, end="")
    return 0


def add_commands(sub) -> None:
    from .f0 import METHOD_MODULES
    from .service.args import add_base_model_flags

    p = sub.add_parser("bench", help="time a conversion stage by stage (fresh process per run, medians)")
    p.add_argument("-m", "--model", help="voice model (default: untrained demo models)")
    add_base_model_flags(p, ("hubert", "rmvpe"))
    p.add_argument("--index", help="faiss .index of the voice")
    p.add_argument("--f0-method", default="rmvpe", choices=sorted(METHOD_MODULES), help="pitch estimator")
    p.add_argument("-i", "--input", help="audio to convert (default: speech of --seconds)")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of the default input")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs, each in a fresh process (default 5)")
    p.add_argument("--json", help="write the full result (every run) as JSON")
    p.add_argument("--markdown", help="write the table as markdown")
    p.set_defaults(func=cmd_bench)


if __name__ == "__main__":  # one run: python -m rvc_mlx.bench SPEC_JSON (used by run_in_subprocess)
    print(json.dumps(run_once(json.loads(sys.argv[1]))))
