"""Our side of the training comparisons: an MLX ``Trainer`` holding the torch reference's weights, and the
reference's numpy batches and noise as our ``Batch``/``TrainNoise``. Shared by the step and curve tests and the
training benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from rvc_mlx.convert.rvc import _named_config
from rvc_mlx.models.synthesizer import SynthesizerConfig
from rvc_mlx.train import losses as L
from rvc_mlx.train.fit import OptimConfig, Trainer
from rvc_mlx.train.nets import Batch, MultiPeriodDiscriminator, TrainingSynthesizer, TrainNoise, training_params
from rvc_mlx.train.pretrained import check_params, discriminator_params, generator_params

if TYPE_CHECKING:  # importable without torch (the training benchmark's memory child uses the batch helpers)
    import torch

    from tests.reference.rvc_models import Variant

SEGMENT_ITEM = 1  # the config list's segment size (frames the decoder trains on)


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def ours_trainer(variant: Variant, net_g, net_d, cfg: list | None = None, optim: OptimConfig = OptimConfig()) -> Trainer:
    """A ``Trainer`` with the reference networks' current weights. ``cfg``: the 18-item config list ``net_g`` was
    built from (default: the reference's ``training_config``); its segment size is the decoder's training segment."""
    from tests.reference.rvc_training import training_config

    state_g, state_d = numpy_state(net_g), numpy_state(net_d)
    cfg = cfg or training_config(variant)
    ckpt = {"config": cfg, "f0": int(variant.f0), "version": variant.version, "sr": variant.sr}
    inference = {k: v for k, v in state_g.items() if not k.startswith("enc_q.")}
    named = _named_config(ckpt, {k.replace("weight_v", "weight"): v for k, v in inference.items()}, "HiFi-GAN", "ref")
    spec = L.SpectrogramConfig.for_rate(variant.sample_rate)
    g = TrainingSynthesizer(SynthesizerConfig.from_dict(named), int(cfg[SEGMENT_ITEM]), spec.bins)
    d = MultiPeriodDiscriminator(variant.version)
    params_g = {k: mx.array(v) for k, v in generator_params(state_g).items()}
    params_d = {k: mx.array(v) for k, v in discriminator_params(state_d).items()}
    check_params(training_params(g), params_g, "generator")
    check_params(training_params(d), params_d, "discriminator")
    return Trainer(g, d, params_g, params_d, spec, optim)


def mlx_batch(b: dict, use_f0: bool) -> Batch:
    """``make_batch``'s torch-layout arrays -> our channels-last ``Batch`` (pitch only for f0 models)."""
    lengths = mx.array(b["lengths"].astype(np.int32))
    return Batch(
        phone=mx.array(b["phone"]), phone_lengths=lengths,
        pitch=mx.array(b["pitch"].astype(np.int32)) if use_f0 else None,
        pitchf=mx.array(b["pitchf"]) if use_f0 else None,
        spec=mx.array(b["spec"].transpose(0, 2, 1)), spec_lengths=lengths,
        wave=mx.array(b["wave"]), sid=mx.array(b["sid"].astype(np.int32)),
    )


def mlx_noise(n: dict) -> TrainNoise:
    """``make_noise``'s ε ``(B, inter, T)``, starts, source ``(B, L, 1)`` -> ``TrainNoise`` (channels last)."""
    return TrainNoise(eps=mx.array(n["eps"].transpose(0, 2, 1)), starts=mx.array(n["starts"].astype(np.int32)),
                      source=mx.array(n["source"][..., 0]))
