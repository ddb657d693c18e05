"""Setting up a training run and saving its result: RVC's model configs, initial weights (pretrained
``f0G*/f0D*.pth`` or from scratch), and the export of the trained voice.

A run's settings are kept in ``EXP/train.json`` so every step (and a resumed fit) uses the same ones.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..atomic import atomic_write
from ..errors import InputError
from ..models.synthesizer import SynthesizerConfig
from . import losses as L
from .fit import SEGMENT_SAMPLES, Trainer
from .nets import MultiPeriodDiscriminator, TrainingSynthesizer, fused_params, training_params
from .pretrained import check_params, load_pretrained

# RVC's model sections that differ by version and rate (upsample rates, kernels); the rest is SynthesizerConfig's
UPSAMPLING = {
    ("v1", 32000): ([10, 4, 2, 2, 2], [16, 16, 4, 4, 4]),
    ("v1", 40000): ([10, 10, 2, 2], [16, 16, 4, 4]),
    ("v1", 48000): ([10, 6, 2, 2, 2], [16, 16, 4, 4, 4]),
    ("v2", 32000): ([10, 8, 2, 2], [20, 16, 4, 4]),
    ("v2", 40000): ([10, 10, 2, 2], [16, 16, 4, 4]),
    ("v2", 48000): ([12, 10, 2, 2], [24, 20, 4, 4]),
}
RVC_SPEAKERS = 109  # spk_embed_dim of every RVC config (and of the pretrains)
SETTINGS_FILE = "train.json"
RESBLOCK_INIT_STD = 0.01  # RVC's init_weights on the decoder's upsampling convs and resblocks


@dataclass
class RunSettings:
    """What a training run is: the model, its data and the base models used to make the data."""

    name: str
    version: str = "v2"
    sample_rate: int = 40000
    use_f0: bool = True
    f0_method: str = "rmvpe"
    n_speakers: int = RVC_SPEAKERS
    segment_frames: int | None = None  # None: RVC's
    model: dict | None = None  # overrides of SynthesizerConfig fields (tests use tiny networks)

    def synthesizer_config(self) -> SynthesizerConfig:
        key = (self.version, self.sample_rate)
        if key not in UPSAMPLING:
            raise InputError(f"no RVC training config for {self.version} at {self.sample_rate} Hz "
                             "(v1 or v2 at 32000, 40000 or 48000)")
        rates, kernels = UPSAMPLING[key]
        fields = {"version": self.version, "sample_rate": self.sample_rate, "use_f0": self.use_f0,
                  "feature_dim": 256 if self.version == "v1" else 768, "n_speakers": self.n_speakers,
                  "upsample_rates": rates, "upsample_kernel_sizes": kernels, **(self.model or {})}
        return SynthesizerConfig.from_dict(fields)

    def spectrogram(self) -> L.SpectrogramConfig:
        return L.SpectrogramConfig.for_rate(self.sample_rate)

    def segment(self) -> int:
        if self.segment_frames is not None:
            return self.segment_frames
        return SEGMENT_SAMPLES[(self.version, self.sample_rate)] // self.spectrogram().hop


def save_settings(exp_dir: str | os.PathLike, settings: RunSettings) -> None:
    text = json.dumps(asdict(settings), indent=1)
    atomic_write(Path(exp_dir) / SETTINGS_FILE, lambda tmp: Path(tmp).write_text(text))


def load_settings(exp_dir: str | os.PathLike) -> RunSettings | None:
    path = Path(exp_dir) / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        return RunSettings(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: unreadable run settings ({e})") from None


def _scratch_value(name: str, shape: tuple, fan_shape: tuple, key: mx.array) -> mx.array:
    """Initial weights as RVC's modules get them: torch's default uniform(±1/√fan_in) for convs and linears
    (biases use their weight's fan-in), N(0, 0.01) for the decoder's upsampling convs and resblocks, zero flow
    ``post`` convs, N(0, 1) embeddings, N(0, d^-½) relative-position tables, unit/zero layer norms."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma":
        return mx.ones(shape)
    if leaf == "beta" or (name.startswith("flow.") and ".post." in name):
        return mx.zeros(shape)
    if leaf.startswith("emb_rel"):
        return mx.random.normal(shape, key=key) * shape[-1] ** -0.5
    if name.endswith(("emb_g.weight", "emb_pitch.weight")):
        return mx.random.normal(shape, key=key)
    if leaf == "weight" and name.startswith(("dec.ups.", "dec.resblocks.")):
        return mx.random.normal(shape, key=key) * RESBLOCK_INIT_STD
    bound = 1.0 / math.sqrt(math.prod(fan_shape[1:]) if len(fan_shape) > 1 else 1)
    return mx.random.uniform(-bound, bound, shape, key=key)


def scratch_params(model, seed: int) -> dict[str, mx.array]:
    """Training parameters of ``model`` drawn as RVC initialises an untrained network."""
    flat = tree_flatten(model.parameters())
    shapes = {name: tuple(w.shape) for name, w in flat}
    keys = mx.random.split(mx.random.key(seed), len(flat))
    values = {}
    for (name, _), key in zip(flat, keys):
        fan = shapes.get(name[: -len("bias")] + "weight", shapes[name]) if name.endswith(".bias") else shapes[name]
        values[name] = _scratch_value(name, shapes[name], fan, key)
    model.update(tree_unflatten(list(values.items())))
    return training_params(model)


def new_trainer(settings: RunSettings, *, pretrained_g=None, pretrained_d=None, seed: int = 1234,
                optim=None) -> Trainer:
    """Networks and optimisers for ``settings``, from pretrained files (either may be None: from scratch)."""
    spec = settings.spectrogram()
    net_g = TrainingSynthesizer(settings.synthesizer_config(), settings.segment(), spec.bins)
    net_d = MultiPeriodDiscriminator(settings.version)
    params = []
    for net, path, kind, offset in ((net_g, pretrained_g, "generator", 0), (net_d, pretrained_d, "discriminator", 1)):
        if path is None:
            params.append(scratch_params(net, seed + offset))
            continue
        loaded = {k: mx.array(v) for k, v in load_pretrained(path, kind).items()}
        check_params(training_params(net), loaded, str(path))
        params.append(loaded)
    from .fit import OptimConfig

    return Trainer(net_g, net_d, params[0], params[1], spec, optim or OptimConfig())


def voice_weights(trainer: Trainer) -> dict[str, np.ndarray]:
    """The inference model (fused weights, no ``enc_q``) in MLX layout."""
    return {k: np.array(v) for k, v in fused_params(trainer.params_g).items() if not k.startswith("enc_q.")}


def export_voice_files(trainer: Trainer, settings: RunSettings, out_dir: str | os.PathLike, info: str) -> dict:
    """Write ``NAME.safetensors`` (rvc-mlx) and ``NAME.pth`` (RVC format, fp16, written without torch)."""
    from ..store import save
    from .rvc_pth import save_rvc_pth

    out = Path(out_dir)
    cfg = asdict(settings.synthesizer_config())
    config = {"kind": "voice", **cfg, "embedder": "contentvec", "info": info}
    weights = voice_weights(trainer)
    ours, theirs = out / f"{settings.name}.safetensors", out / f"{settings.name}.pth"
    save(ours, weights, config)
    save_rvc_pth(theirs, weights, config, info)
    return {"voice": str(ours), "pth": str(theirs)}
