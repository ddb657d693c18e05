"""Which model files one conversion uses: the voice, the base models it needs and its index, each checked."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import RvcMlxError
from .voices import VoiceLibrary, resolve_voice


@dataclass(frozen=True)
class ModelPaths:
    """Paths of converted models (``rmvpe``/``index`` may be None); ``VoiceConverter.load(**paths.to_dict())``."""

    voice: str
    hubert: str
    rmvpe: str | None = None
    index: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_models(model: str, *, hubert: str | None = None, rmvpe: str | None = None, index: str | None = None,
                   f0_method: str = "rmvpe", use_index: bool = True,
                   library: VoiceLibrary | None = None) -> ModelPaths:
    """Model files for voice ``model`` (library name, ``.safetensors`` or ``.pth``): base models from the
    models directory unless given (HuBERT by the voice's embedder; RMVPE only for f0 voices using rmvpe), the
    index given or the library voice's own (``use_index=False``: none). Raises a one-line error naming what is
    missing."""
    from .. import store
    from ..hub import find_base_model

    voice, own_index = resolve_voice(model, library)
    config = store.read_config(voice)
    if config["kind"] != "voice":
        raise RvcMlxError(f"{voice}: is a {config['kind']} model, not a voice model")
    hubert_path = Path(hubert) if hubert else find_base_model("hubert", config.get("embedder"))
    rmvpe_path = None
    if config.get("use_f0") and f0_method == "rmvpe":
        rmvpe_path = Path(rmvpe) if rmvpe else find_base_model("rmvpe")
    for p in (hubert_path, rmvpe_path):
        if p is not None and not p.is_file():
            raise RvcMlxError(f"{p}: model file not found")
    if index and not Path(index).is_file():
        raise RvcMlxError(f"{index}: index file not found")
    chosen = index or (own_index if use_index else None)
    return ModelPaths(str(voice), str(hubert_path), rmvpe_path and str(rmvpe_path), chosen and str(chosen))
