"""Real, tiny seed files for every fuzz target, built by the harness itself (nothing is committed).

* ``pth``: a tiny RVC v1 voice (rvc 0.3.5's own model class with an 18-item config shrunk to a few channels)
  exported the way RVC writes it, in the zip format and the legacy format, plus a small mixed-dtype checkpoint
  with a strided view (as tests/test_checkpoint.py builds).
* ``safetensors``: that voice converted (``convert_file`` + ``store.save``) and a two-tensor rmvpe-kind file.
* ``index``: faiss ``IndexFlatL2`` and ``IndexIVFFlat`` (RVC's "IVF,Flat") over 40 vectors of 8 dims.
* ``f0``: the CSV ``rvc-mlx pitch`` writes and RVC's two-column format.
* ``audio``: 0.15 s of speech-like sound as 16-bit wav, float wav, flac and ogg vorbis.

torch is needed for the ``pth``/``safetensors`` seeds only (test-only code, as tests/reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_VOICE_CONFIG = [
    9, 32, 4, 4, 8, 2, 1, 3, 0, "1", [3], [[1, 3, 5]], [10, 10, 2, 2], 32, [16, 16, 4, 4], 2, 4, 40000,
]


def _tiny_voice_ckpt():
    import torch

    from tests.reference import rvc_models

    torch.manual_seed(0)
    model = rvc_models.new_model("v1", True, TINY_VOICE_CONFIG).eval()
    return {
        "weight": {k: v.half() for k, v in model.state_dict().items() if "enc_q" not in k},
        "config": TINY_VOICE_CONFIG,
        "info": "fuzz seed",
        "sr": "40k",
        "f0": 1,
        "version": "v1",
    }


def _mixed_ckpt():
    import torch

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g)
    return {
        "f32": base, "view": base[1:, 1:].t(), "f16": torch.randn(3, generator=g).half(),
        "bf16": torch.randn(2, generator=g).bfloat16(), "i64": torch.arange(3), "bool": torch.tensor([True]),
        "nested": {"list": [1, 2.5, "x"], "t": (None, True)},
    }


def build_pth(out: Path) -> list[Path]:
    import torch

    voice = _tiny_voice_ckpt()
    paths = [out / "voice-zip.pth", out / "voice-legacy.pth", out / "mixed-zip.pt", out / "mixed-legacy.pt"]
    torch.save(voice, paths[0])
    torch.save(voice, paths[1], _use_new_zipfile_serialization=False)
    torch.save(_mixed_ckpt(), paths[2])
    torch.save(_mixed_ckpt(), paths[3], _use_new_zipfile_serialization=False)
    return paths


def build_safetensors(out: Path) -> list[Path]:
    from rvc_mlx import store
    from rvc_mlx.convert import convert_file

    pth = out / "voice-src.pth"
    if not pth.exists():
        import torch

        torch.save(_tiny_voice_ckpt(), pth)
    weights, config = convert_file(pth)
    voice = out / "voice.safetensors"
    store.save(voice, weights, config)
    pth.unlink()
    small = out / "small.safetensors"
    store.save(small, {"lin.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "lin.bias": np.ones(2, np.float16)},
               {"kind": "rmvpe", "sample_rate": 16000})
    return [voice, small]


def build_index(out: Path) -> list[Path]:
    import faiss

    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    flat = faiss.IndexFlatL2(8)
    flat.add(x)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 2)
    ivf.cp.min_points_per_centroid = 1
    ivf.train(x)
    ivf.add(x)
    paths = [out / "flat.index", out / "ivf.index"]
    faiss.write_index(flat, str(paths[0]))
    faiss.write_index(ivf, str(paths[1]))
    return paths


def build_f0(out: Path) -> list[Path]:
    t = np.arange(12) / 100
    hz = np.where(np.arange(12) % 5 == 0, 0.0, 220.0 + 3 * np.arange(12))
    pitch = out / "pitch.csv"
    pitch.write_text("time,f0,voiced\n" + "".join(f"{a:.2f},{b:.3f},{int(b > 0)}\n" for a, b in zip(t, hz)))
    rvc = out / "rvc.txt"
    rvc.write_text("".join(f"{a:.3f},{b:.1f}\n" for a, b in zip(t * 1.5, hz)))
    return [pitch, rvc]


def build_audio(out: Path) -> list[Path]:
    import soundfile as sf

    n = 2400
    tt = np.arange(n) / 16000
    x = (0.4 * np.sin(2 * np.pi * 180 * tt) * (1 + 0.3 * np.sin(2 * np.pi * 4 * tt))).astype(np.float32)
    x += 0.02 * np.random.default_rng(0).standard_normal(n).astype(np.float32)
    specs = [("pcm16.wav", "WAV", "PCM_16"), ("float.wav", "WAV", "FLOAT"), ("a.flac", "FLAC", "PCM_16"),
             ("a.ogg", "OGG", "VORBIS")]
    paths = []
    for name, fmt, subtype in specs:
        p = out / name
        sf.write(p, np.stack([x, -x], axis=1) if name == "float.wav" else x, 16000, format=fmt, subtype=subtype)
        paths.append(p)
    return paths


BUILDERS = {"pth": build_pth, "safetensors": build_safetensors, "index": build_index, "f0": build_f0,
            "audio": build_audio}


def build(target: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return BUILDERS[target](out)
