"""Base models: where they live on disk, and fetching them from the Hugging Face hub.

The models directory is ``$RVC_MLX_HOME`` or a per-user cache dir (``~/.cache/rvc-mlx`` on Linux,
``~/Library/Caches/rvc-mlx`` on macOS). ``download`` fetches the original PyTorch files with ``huggingface_hub``
(which honours ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``), converts them with the safe reader, and stores
``<name>.safetensors`` there. The PyTorch originals are kept in the hub cache only.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import RvcMlxError

HOME_ENV = "RVC_MLX_HOME"


@dataclass(frozen=True)
class HubModel:
    name: str
    kind: str
    repo_id: str
    files: tuple[str, ...]  # first is the weights; others (config.json) sit beside it


BASE_MODELS = {
    m.name: m
    for m in (
        HubModel("hubert_base", "hubert", "lj1995/VoiceConversionWebUI", ("hubert_base.pt",)),
        HubModel("rmvpe", "rmvpe", "lj1995/VoiceConversionWebUI", ("rmvpe.pt",)),
        HubModel(
            "contentvec",
            "hubert",
            "IAHispano/Applio",
            ("Resources/embedders/contentvec/pytorch_model.bin", "Resources/embedders/contentvec/config.json"),
        ),
    )
}
DEFAULT_DOWNLOADS = ("hubert_base", "rmvpe")


def models_dir() -> Path:
    """Where converted base models live (created on first use)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "rvc-mlx"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rvc-mlx"


def model_path(name: str, directory: Path | None = None) -> Path:
    return (directory or models_dir()) / f"{name}.safetensors"


def find_base_model(kind: str, preferred: str | None = None, directory: Path | None = None) -> Path:
    """The converted base model of ``kind`` to use: ``preferred`` (e.g. the voice's embedder) if present,
    else the default one. Raises a one-line error saying how to get it."""
    names = [preferred] if preferred in BASE_MODELS else []
    names += [m.name for m in BASE_MODELS.values() if m.kind == kind and m.name not in names]
    for name in names:
        path = model_path(name, directory)
        if path.is_file():
            return path
    where = directory or models_dir()
    raise RvcMlxError(
        f"{where}: no {kind} model found; run `rvc-mlx download` or pass --{kind} FILE"
    )


def download(name: str, directory: Path | None = None, force: bool = False) -> Path:
    """Fetch base model ``name`` from the hub, convert it, and return the converted file's path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from . import store
    from .convert import convert_file

    if name not in BASE_MODELS:
        raise RvcMlxError(f"unknown base model {name!r} (choose from {', '.join(BASE_MODELS)})")
    model = BASE_MODELS[name]
    out = model_path(name, directory)
    if out.is_file() and not force:
        return out
    try:
        local = [Path(hf_hub_download(model.repo_id, f)) for f in model.files]
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RvcMlxError(f"{model.repo_id}/{model.files[0]}: download failed ({first})") from None
    source = local[0]
    if len(local) > 1:  # a transformers directory: the hub cache keeps the files side by side
        source = local[0].parent
    weights, config = convert_file(source, kind=model.kind)
    config["name"] = name
    store.save(out, weights, config)
    return out
