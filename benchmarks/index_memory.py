"""Memory and search time of big ``.index`` files: what a voice's index of millions of vectors costs to load and
to search with, in a fresh process each.

For each (vectors, dimension, type) it writes a random index as RVC's trainer would (``IVF<n>,Flat`` or
``Flat``), then a child process records its RSS before loading, the peak while ``FeatureIndex.load`` runs, the RSS
after it, and the time of one ``blend`` of 30 s of features (1500 frames, k = 8, one thread as the pipeline does).

    python -m benchmarks.index_memory --vectors 1000000 --dim 768 --kind ivf flat
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMES = 1500  # 30 s of 50 fps features
TRAIN_SAMPLE = 50_000
ADD_BLOCK = 100_000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(path: Path, vectors: int, dim: int, kind: str) -> None:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    nlist = max(1, min(int(16 * vectors ** 0.5), vectors // 39))  # RVC's rule for n_ivf
    index = faiss.index_factory(dim, f"IVF{nlist},Flat" if kind == "ivf" else "Flat")
    if kind == "ivf":
        index.train(rng.standard_normal((min(vectors, TRAIN_SAMPLE), dim), dtype=np.float32))
    for start in range(0, vectors, ADD_BLOCK):
        index.add(rng.standard_normal((min(ADD_BLOCK, vectors - start), dim), dtype=np.float32))
    faiss.write_index(index, str(path))


def child(path: str) -> None:
    import numpy as np

    from rvc_mlx.bench import peak_rss_mb
    from rvc_mlx.retrieval import FeatureIndex

    before = _rss_mb()
    start = time.perf_counter()
    index = FeatureIndex.load(path)
    load_s = time.perf_counter() - start
    after = _rss_mb()
    peak = peak_rss_mb()
    feats = np.random.default_rng(1).standard_normal((FRAMES, index.dim), dtype=np.float32)
    start = time.perf_counter()
    index.blend(feats, 0.75)
    blend_s = time.perf_counter() - start
    print(json.dumps({"rss_before_mb": before, "peak_mb": peak, "rss_after_mb": after, "load_s": load_s,
                      "blend_s": blend_s}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--kind", nargs="+", choices=("ivf", "flat"), default=["ivf", "flat"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.vectors:
            for kind in args.kind:
                path = Path(tmp) / f"{kind}-{n}.index"
                build(path, n, args.dim, kind)
                size_mb = path.stat().st_size / 2**20
                out = subprocess.run([sys.executable, "-m", "benchmarks.index_memory", "--child", str(path)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"vectors": n, "dim": args.dim, "kind": kind, "file_mb": size_mb, **r})
                path.unlink()
                print(f"{kind} {n} x {args.dim}: file {size_mb:.0f} MB, RSS +{r['rss_after_mb'] - r['rss_before_mb']:.0f}"
                      f" MB after load, peak +{r['peak_mb'] - r['rss_before_mb']:.0f} MB, load {r['load_s']:.2f} s, "
                      f"blend of {FRAMES} frames {r['blend_s']:.2f} s", flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
