"""Corpus throughput: audio seconds converted per wall second by ``convert_corpus`` with 1 vs N workers.

Same random-weight test voice (v2 40k, rmvpe), a folder of speech-like clips; every measurement is a fresh
process (model loading and worker start-up included, as a user's batch pays them), worker counts interleaved,
medians over ``--runs``. Peak RSS is sampled per converting process (the coordinator's own for 1 worker, each
spawned worker's for N). Writes JSON and a markdown table.

    PYTHONPATH=. python benchmarks/corpus.py --clips 8 --seconds 5 --workers 1 2 --runs 1 --out benchmarks/results

Needs the test extra (the reference models are built by the test suite's code).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOICE = "v2-40k-f0"
SR16 = 16000


def prepare(cache: Path, clips: int, seconds: float) -> dict:
    import soundfile as sf

    from tests.reference import hubert_models
    from tests.reference.rvc_pipeline import ReferenceModels

    models = ReferenceModels(cache)
    voice, _, _ = models.voice(VOICE)
    folder = cache / f"corpus-{clips}x{seconds:g}s"
    folder.mkdir(exist_ok=True)
    for i in range(clips):
        path = folder / f"clip{i:02d}.wav"
        if not path.exists():
            sf.write(path, hubert_models.speech_like(int(SR16 * seconds), seed=100 + i), SR16)
    return {"folder": str(folder), "voice": str(voice), "hubert": str(models.hubert_path),
            "rmvpe": str(models.rmvpe_path)}


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(paths: dict, workers: int, out: Path) -> dict:
    """One batch in this process (a fresh one): wall time, audio seconds, peak RSS per converting process."""
    from rvc_mlx.options import parse_options
    from rvc_mlx.service.corpus import convert_corpus, find_inputs
    from rvc_mlx.service.models import ModelPaths

    pids, peaks, stop = {os.getpid()} if workers == 1 else set(), {}, threading.Event()

    def sample():
        while not stop.wait(0.2):
            for pid in list(pids):
                peaks[pid] = max(peaks.get(pid, 0), _rss_kb(pid))

    def on_event(event):
        if event["event"] == "started" and event.get("worker"):
            pids.add(event["worker"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model_paths = ModelPaths(paths["voice"], paths["hubert"], paths["rmvpe"])
    t0 = time.perf_counter()
    summary = convert_corpus(find_inputs(paths["folder"]), out, parse_options({}), model_paths,
                             in_dir=paths["folder"], workers=workers, on_event=on_event)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    assert not summary.failed, summary.failed
    return {"workers": workers, "wall_s": wall, "audio_s": summary.audio_seconds,
            "throughput": summary.audio_seconds / wall, "files": len(summary.converted),
            "peak_rss_mb_per_worker": sorted(round(kb / 1024) for kb in peaks.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "d" / "rvc-reference"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: JSON of (paths, workers, out dir)
    args = ap.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(measure(spec["paths"], spec["workers"], Path(spec["out"]))))
        return
    import tempfile

    paths = prepare(Path(args.cache), args.clips, args.seconds)
    results: dict[int, list[dict]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for workers in args.workers:  # interleaved
                spec = {"paths": paths, "workers": workers, "out": f"{tmp}/out-{run}-{workers}"}
                proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], cwd=ROOT,
                                      capture_output=True, text=True, check=True)
                results[workers].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[workers][-1]), file=sys.stderr)
    rows = []
    base = statistics.median(r["throughput"] for r in results[args.workers[0]])
    for workers, runs in results.items():
        tp = statistics.median(r["throughput"] for r in runs)
        rows.append({"workers": workers, "wall_s": round(statistics.median(r["wall_s"] for r in runs), 1),
                     "audio_s": runs[0]["audio_s"], "throughput": round(tp, 3), "speedup": round(tp / base, 2),
                     "peak_rss_mb_per_worker": runs[-1]["peak_rss_mb_per_worker"]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"clips": args.clips, "seconds": args.seconds, "runs": args.runs, "cores": os.cpu_count(),
            "voice": VOICE, "f0_method": "rmvpe", "date": time.strftime("%Y-%m-%d")}
    (out / "corpus.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": results}, indent=1))
    lines = [f"| workers | wall s | audio s | audio s / wall s | speedup | peak RSS per worker (MB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['wall_s']} | {r['audio_s']:g} | {r['throughput']} | {r['speedup']}x "
                     f"| {', '.join(map(str, r['peak_rss_mb_per_worker']))} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
