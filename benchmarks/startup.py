"""Start-up benchmark (issue 15): ``rvc-mlx infer`` on a 5 s clip, wall time from process start (imports, model
loading, conversion) vs rvc==0.3.5 on torch doing the same job on the same random-weight models (``e2e.prepare``).

Each run starts fresh processes, timed by this driver from start to exit: the real CLI (``python -m rvc_mlx infer``,
rmvpe, index rate 0.75), and per implementation a ``-c`` snippet that follows the same code path and reports
imports, model loading (voice, HuBERT, RMVPE, index) and conversion (read, convert, write) separately. The reference
has no CLI for these models, so its snippet is its whole process. Runs are interleaved; medians, every run, and
ours/reference ratios (target for the total: <= 0.5). Threads: ``--threads`` (OMP/MKL/OpenBLAS env, RVC_MLX_CPUS,
``torch.set_num_threads``).

    python benchmarks/startup.py --runs 5 --out benchmarks/results     # writes startup.{json,md}

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
SECONDS = 5.0
INDEX_RATE = 0.75

# Each snippet gets the paths as JSON in argv[1] and prints {"import": {...}, "load": {...}, "convert": s}.
OURS = r"""
import json, sys, time
T = time.perf_counter
p, imp, load = json.loads(sys.argv[1]), {}, {}
t = T(); import rvc_mlx; imp["rvc_mlx (BLAS preload)"] = T() - t
t = T(); import mlx.core as mx; imp["mlx"] = T() - t
t = T(); from rvc_mlx import command; imp["CLI front ends"] = T() - t
t = T()
import faiss, soundfile
from pathlib import Path
from rvc_mlx.f0.rmvpe import load_rmvpe
from rvc_mlx.models.hubert import Hubert
from rvc_mlx.models.synthesizer import Synthesizer
from rvc_mlx.options import parse_options
from rvc_mlx.pipeline import VoiceConverter
from rvc_mlx.retrieval import FeatureIndex
from rvc_mlx.service import tasks
from rvc_mlx.service.models import resolve_models
imp["pipeline, models, faiss"] = T() - t
# load as VoiceConverter.load does, stage by stage; weights are lazy in MLX, so eval them here (else the first
# conversion pays for reading them); RMVPE is cached by path, the conversion reuses it
t = T()
options = parse_options({"f0_method": "rmvpe", "index_rate": p["index_rate"]})
m = resolve_models(p["voice"], hubert=p["hubert"], rmvpe=p["rmvpe"], index=p["index"], f0_method="rmvpe")
load["resolve"] = T() - t
t = T(); synth = Synthesizer.load(m.voice); load["voice"] = T() - t
t = T(); hub = Hubert.load(m.hubert); mx.eval(hub.parameters()); load["hubert"] = T() - t
t = T(); r = load_rmvpe(m.rmvpe); mx.eval(r.model.parameters()); load["rmvpe"] = T() - t
t = T(); idx = FeatureIndex.load(m.index); load["index"] = T() - t
vc = VoiceConverter(synth, hub, idx, {"rmvpe": m.rmvpe})
t = T(); tasks.convert_file(vc, options, Path(p["clip"]), Path(p["out"]), "wav"); conv = T() - t
print(json.dumps({"import": imp, "load": load, "convert": conv}))
"""

REFERENCE = r"""
import json, os, sys, time
T = time.perf_counter
p, imp, load = json.loads(sys.argv[1]), {}, {}
sys.argv = sys.argv[:1]  # rvc parses argv at import
t = T(); import torch; torch.set_num_threads(p["threads"]); imp["torch"] = T() - t
t = T()
from rvc.lib.infer_pack import models as _models
from rvc.lib.rmvpe import RMVPE
from rvc.modules.vc.pipeline import Pipeline
imp["rvc"] = T() - t
t = T()
import numpy as np, soundfile as sf
from pathlib import Path
from transformers import HubertModel
from tests.reference import hubert_models, rvc_models
from tests.reference.rvc_pipeline import REFERENCE_CONFIG, FairseqStyleHubert
imp["transformers, glue"] = T() - t
t = T()
ckpt = torch.load(p["voice_pth"], map_location="cpu", weights_only=False)
net_g = rvc_models.reference_model(ckpt)
load["voice"] = T() - t
t = T(); hubert = FairseqStyleHubert(*hubert_models.load_reference_model(Path(p["cache"]) / "hubert")).eval()
load["hubert"] = T() - t
t = T()
os.environ["rmvpe_root"] = str(Path(p["rmvpe_pt"]).parent)
tgt_sr = ckpt["config"][-1]
pipe = Pipeline(tgt_sr, REFERENCE_CONFIG)
pipe.model_rmvpe = RMVPE(p["rmvpe_pt"], is_half=False, device="cpu")  # what get_f0 does on first use
load["rmvpe"] = T() - t
t = T()  # the reference reads the index inside pipeline() (faiss.read_index), so it is part of its conversion
audio, sr = sf.read(p["clip"], dtype="float32")
peak = np.abs(audio).max() / 0.95
if peak > 1:
    audio /= peak
with torch.no_grad():
    out = pipe.pipeline(hubert, net_g, 0, audio, "bench.wav", {"npy": 0.0, "f0": 0.0, "infer": 0.0}, 0, "rmvpe",
                        p["index"], p["index_rate"], 1, 3, tgt_sr, 0, 0.25, "v2", 0.33, None)
sf.write(p["out"], out, tgt_sr)
conv = T() - t
print(json.dumps({"import": imp, "load": load, "convert": conv}))
"""


def _timed(cmd: list[str], env: dict, parse: bool) -> dict:
    """Run ``cmd`` in a fresh process; wall seconds from start to exit (+ the JSON it printed when ``parse``)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:4])}\n{proc.stderr[-3000:]}")
    res = {"wall": wall}
    if parse:
        parts = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update({f"import.{k}": v for k, v in parts["import"].items()})
        res.update({f"load.{k}": v for k, v in parts["load"].items()})
        res.update(imports=sum(parts["import"].values()), load=sum(parts["load"].values()), convert=parts["convert"])
        res["start+exit"] = wall - res["imports"] - res["load"] - res["convert"]
    return res


def markdown(result: dict) -> str:
    m, ratio = result["median"], result["ratio"]
    ref, cli, ours = m["reference"], m["ours_cli"], m["ours"]
    lines = [f"`rvc-mlx infer` start-up, {result['seconds']:g} s clip (rmvpe, index rate {INDEX_RATE}), "
             f"{result['threads']} threads, {result['runs']} runs interleaved, medians. Machine: {result['machine']}",
             "", "| wall time from process start | reference (s) | rvc-mlx (s) | ours / ref |", "|---|---:|---:|---:|",
             f"| **total: `rvc-mlx infer` CLI** | {ref['wall']:.2f} | {cli['wall']:.2f} | "
             f"**{ratio['total']:.2f}** (target ≤ 0.5: {'met' if ratio['total'] <= 0.5 else 'not met'}) |",
             f"| total: breakdown process | {ref['wall']:.2f} | {ours['wall']:.2f} | {ratio['wall']:.2f} |"]
    labels = {"imports": "imports", "load": "load models", "convert": "convert (read, convert, write)",
              "start+exit": "interpreter start + exit (wall − the above)"}
    for key, label in labels.items():
        lines.append(f"| {label} | {ref[key]:.2f} | {ours[key]:.2f} | {ratio[key]:.2f} |")
    lines += ["", "| phase | reference part | (s) | rvc-mlx part | (s) |", "|---|---|---:|---|---:|"]
    for phase in ("import", "load"):
        parts = [[(k.split(".", 1)[1], f"{d[k]:.2f}") for k in d if k.startswith(phase + ".")] for d in (ref, ours)]
        for i in range(max(map(len, parts))):
            r, o = (p[i] if i < len(p) else ("", "") for p in parts)
            lines.append(f"| {phase if i == 0 else ''} | {r[0]} | {r[1]} | {o[0]} | {o[1]} |")
    lines += ["", "The reference has no CLI for these models: its one process is both its total and its breakdown. "
              "It reads the index during conversion (faiss.read_index in pipeline()); ours at load."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "v" / "rvc-reference"))
    p.add_argument("--out", help="write startup.{json,md} to this folder (default: print the markdown only)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (torch before rvc_mlx in the driver, which builds reference models)

    from benchmarks.e2e import prepare
    from rvc_mlx.bench import machine, medians

    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = {**prepare(cache, SECONDS), "index_rate": INDEX_RATE, "threads": a.threads}
    n = str(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "RVC_MLX_CPUS": n}
    cli = [sys.executable, "-m", "rvc_mlx", "infer", "-m", paths["voice"], "-i", paths["clip"],
           "-o", str(cache / "startup-out-cli.wav"), "--hubert", paths["hubert"], "--rmvpe", paths["rmvpe"],
           "--index", paths["index"], "--f0-method", "rmvpe", "--index-rate", str(INDEX_RATE)]
    snippet = lambda code, name: [sys.executable, "-c", code,  # noqa: E731
                                  json.dumps({**paths, "out": str(cache / f"startup-out-{name}.wav")})]
    runs = {"reference": [], "ours_cli": [], "ours": []}
    for i in range(a.runs):
        runs["reference"].append(_timed(snippet(REFERENCE, "reference"), env, parse=True))
        runs["ours_cli"].append(_timed(cli, env, parse=False))
        runs["ours"].append(_timed(snippet(OURS, "ours"), env, parse=True))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.2f}s" for k, v in runs.items()), file=sys.stderr,
              flush=True)
    med = {k: medians(v) for k, v in runs.items()}
    ratio = {"total": med["ours_cli"]["wall"] / med["reference"]["wall"],
             **{k: med["ours"][k] / med["reference"][k] for k in ("wall", "imports", "load", "convert", "start+exit")}}
    result = {"machine": machine(), "runs": a.runs, "seconds": SECONDS, "threads": a.threads, "median": med,
              "ratio": ratio, "all_runs": runs}
    md = markdown(result)
    if a.out:
        out_dir = Path(a.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "startup.json").write_text(json.dumps(result, indent=2))
        (out_dir / "startup.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
