"""The public entry point each fuzz target runs on a mutated file. ``run(path, out_dir)`` returns normally
(success) or raises; the runner classifies what it raised."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_pth(path: Path, out: Path) -> None:
    from rvc_mlx import store
    from rvc_mlx.convert import convert_file

    weights, config = convert_file(path)  # load_checkpoint + detect + convert (ConversionError for non-voices)
    store.save(out / "voice.safetensors", weights, config)


def run_safetensors(path: Path, out: Path) -> None:
    from rvc_mlx import store
    from rvc_mlx.service.voices import model_facts

    model_facts(path)
    store.tensor_shapes(path)
    weights, config = store.load(path)
    store.load_numpy(path)


def run_index(path: Path, out: Path) -> None:
    from rvc_mlx.retrieval import FeatureIndex

    index = FeatureIndex.load(path)
    feats = np.random.default_rng(0).standard_normal((5, index.dim)).astype(np.float32)
    index.blend(feats, 0.5)


def run_f0(path: Path, out: Path) -> None:
    from rvc_mlx.f0.postprocess import from_file, read_f0_file

    read_f0_file(path)
    from_file(path, n_frames=200)
    from_file(path)


def run_audio(path: Path, out: Path) -> None:
    from rvc_mlx import audio

    x, sr = audio.read(path)
    audio.check(x, sr, str(path))
    audio.header_seconds(path)


TARGETS = {"pth": run_pth, "safetensors": run_safetensors, "index": run_index, "f0": run_f0, "audio": run_audio}
EXTENSIONS = {"pth": None, "safetensors": ".safetensors", "index": ".index", "f0": ".csv", "audio": None}
