"""FCPE f0 estimator ``fcpe``, as Applio calls torchfcpe's bundled model:
``infer(audio, sr=16000, decoder_mode="local_argmax", threshold=0.006)`` -> (1 + N // 160,) Hz, 0 = unvoiced.

The log-mel front end and the decoder run in numpy; the network in MLX.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from . import register
from ..models.fcpe import (
    CHUNK_FRAMES,
    CONTEXT_FRAMES,
    FcpeConfig,
    decode_local_argmax,
    log_mel,
    slaney_mel_filterbank,
)

THRESHOLD = 0.006  # Applio / torchfcpe README: frames with maximum salience ≤ this are unvoiced


class FcpeEstimator:
    """A loaded FCPE network with its mel filterbank."""

    def __init__(self, model, config: FcpeConfig):
        self.model = model
        self.config = config
        self.mel_basis = slaney_mel_filterbank(
            config.sample_rate, config.n_fft, config.n_mels, config.mel_fmin, config.mel_fmax
        )
        self.cent_table = np.array(model.cent_table, dtype=np.float32)

    def salience(self, audio16k: np.ndarray, chunk: int = CHUNK_FRAMES, context: int = CONTEXT_FRAMES) -> np.ndarray:
        """(N,) -> (1 + N // 160, out_dims) float32 network output (long input in windows, see
        ``FCPE.salience_chunks``)."""
        mel = log_mel(audio16k, self.config, self.mel_basis)
        return np.concatenate([y for _, y in self.model.salience_chunks(mel, chunk, context)])

    def __call__(self, audio16k: np.ndarray, threshold: float = THRESHOLD, chunk: int = CHUNK_FRAMES,
                 context: int = CONTEXT_FRAMES) -> np.ndarray:
        """(N,) -> f0 (1 + N // 160,) Hz, decoded window by window (the decode is frame by frame)."""
        mel = log_mel(audio16k, self.config, self.mel_basis)
        return np.concatenate([decode_local_argmax(y, self.cent_table, threshold)
                               for _, y in self.model.salience_chunks(mel, chunk, context)])


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime: float) -> FcpeEstimator:
    import mlx.core as mx

    from .. import store
    from ..checkpoint import load_checkpoint
    from ..convert.fcpe import convert_fcpe
    from ..models.fcpe import FCPE

    if not path.endswith(".safetensors"):  # original torchfcpe/Applio weights, converted in memory
        weights_np, config = convert_fcpe(load_checkpoint(path), path)
        weights = {k: mx.array(v) for k, v in weights_np.items()}
    else:
        weights, config = store.load(path, kind="fcpe")
    cfg = FcpeConfig.from_dict(config)
    model = FCPE(cfg)
    store.load_into(model, weights, path)
    mx.eval(model.parameters())
    return FcpeEstimator(model, cfg)


def load_fcpe(path: str | os.PathLike | None = None) -> FcpeEstimator:
    """The FCPE estimator from a converted file or an original ``.pt``; ``path`` None: the downloaded model
    (``rvc-mlx download fcpe``), else the weights shipped in an installed torchfcpe."""
    if path is None:
        from ..hub import locate_f0_model

        path = locate_f0_model("fcpe")
    path = os.fspath(path)
    if not os.path.isfile(path):
        from ..errors import InputError

        raise InputError(f"{path}: FCPE model file not found")
    return _load(path, os.path.getmtime(path))


@register("fcpe")
def fcpe(audio16k: np.ndarray, opts) -> np.ndarray:
    """FCPE f0 (1 + N // 160,) Hz, 0 = unvoiced (``opts.threshold`` overrides 0.006)."""
    est = load_fcpe(getattr(opts, "fcpe_path", None))
    threshold = getattr(opts, "threshold", None)
    return est(audio16k, THRESHOLD if threshold is None else threshold)
