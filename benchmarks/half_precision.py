"""What storing a model in float16 or bfloat16 costs: each network stored half-precision alone, then all of them,
compared stage by stage against the float32 conversion (``rvc_mlx.parity``), on a speech-like clip.

The models are the test suite's random-weight reference models (v2 40 kHz voice, HuBERT, RMVPE; built and cached
by the tests under ``.pytest_cache``). Random weights are not trained ones: F0 from a random RMVPE sits near its
voicing threshold everywhere, so its flips say more about this model than about a real one. Writes
``half_precision.{json,md}`` to ``--out``.

    python -m benchmarks.half_precision --seconds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("voice", "hubert", "rmvpe")
DTYPES = ("float16", "bfloat16")
STAGES = ("hubert", "f0", "m_p", "audio")


def _row(comparison) -> dict:
    by_name = {r.name: r.metrics for r in comparison.results}
    return {
        "hubert_corr": by_name["hubert"]["corr"], "hubert_rel_rmse": by_name["hubert"]["rel_rmse"],
        "f0_max_cents": by_name["f0"]["max_cents"], "f0_mean_cents": by_name["f0"]["mean_cents"],
        "f0_voicing_flips": by_name["f0"]["voicing_mismatch"],
        "m_p_corr": by_name["m_p"]["corr"], "audio_corr": by_name["audio"]["corr"],
        "audio_mel_corr": by_name["audio"]["mel_corr"], "audio_max_abs": by_name["audio"]["max_abs"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cache", default=str(ROOT / ".pytest_cache" / "d" / "rvc-reference"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (before rvc_mlx: the reference models are built with it)

    from rvc_mlx import parity, store
    from rvc_mlx.pipeline import ConversionOptions, VoiceConverter
    from tests.reference import hubert_models
    from tests.reference.rvc_pipeline import ReferenceModels

    models = ReferenceModels(Path(args.cache))
    originals = {"voice": Path(models.voice("v2-40k-f0")[0]), "hubert": Path(models.hubert_path),
                 "rmvpe": Path(models.rmvpe_path)}
    clip = hubert_models.speech_like(int(16000 * args.seconds), seed=5)
    options = ConversionOptions(f0_method="rmvpe", deterministic=True)

    def run(paths: dict) -> parity.Dump:
        converter = VoiceConverter.load(paths["voice"], hubert=paths["hubert"], rmvpe=paths["rmvpe"])
        stages, info = parity.dump(converter, clip, 16000, options)
        return parity.Dump("run", stages, {}, info)

    reference = run(originals)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            halves = {}
            for name, path in originals.items():
                weights, config = store.load_numpy(path)
                halves[name] = Path(tmp) / f"{name}-{dtype}.safetensors"
                store.save(halves[name], weights, {k: v for k, v in config.items()
                                                   if k not in ("format", "format_version")}, dtype=dtype)
            for which in (*NETWORKS, "all"):
                paths = {n: halves[n] if which in (n, "all") else originals[n] for n in NETWORKS}
                row = {"dtype": dtype, "stored half": which, **_row(parity.compare(reference, run(paths)))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "half_precision.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"Half-precision storage against float32, {args.seconds:g} s speech-like clip, rmvpe, deterministic; "
             "random-weight test models (v2 40 kHz voice, HuBERT, RMVPE). Compute is float32 in every case.", "",
             "| dtype | stored half | HuBERT corr | HuBERT rel. RMSE | F0 max / mean cents | F0 voicing flips | "
             "m_p corr | audio corr | audio log-mel corr |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['stored half']} | {r['hubert_corr']:.6f} | {r['hubert_rel_rmse']:.2e} | "
                     f"{r['f0_max_cents']:.3g} / {r['f0_mean_cents']:.3g} | {100 * r['f0_voicing_flips']:.2f} % | "
                     f"{r['m_p_corr']:.6f} | {r['audio_corr']:.6f} | {r['audio_mel_corr']:.6f} |")
    (out / "half_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
