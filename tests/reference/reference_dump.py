"""Test-only: a stage dump (``rvc_mlx.parity`` format) made from the PyTorch reference, rvc==0.3.5's Pipeline.

The reference pipeline is run unchanged (through ``rvc_pipeline.reference_convert``, noise zeroed); the stages
are captured by wrapping what it calls:

* ``Pipeline.get_f0`` -> ``input16k`` (its padded input minus the pads), ``f0`` (Hz) and ``pitch`` (coarse);
* the HuBERT object's ``extract_features`` / ``final_proj`` -> ``hubert`` (v1: after final_proj);
* the module's ``F.interpolate`` (first call per piece: the features after the index blend) -> ``retrieved``;
* ``net_g.infer`` -> ``protected`` (its input features), ``coarse_pitch``, ``f0_frames``, and its returned
  ``(o, x_mask, (z, z_p, m_p, logs_p))`` -> ``generator`` and the latents, transposed from channels-first
  ``(1, C, T)`` to our ``(T, C)``;
* the returned int16 audio / 32768 -> ``audio``.

Only single-piece inputs (< ~40 s) are supported: that is what golden dumps use.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from rvc_mlx.pipeline import SAMPLE_RATE, X_PAD

from .rvc_pipeline import ReferenceModels, reference_convert

INT16_SCALE = 32768.0


class _CapturingHubert(torch.nn.Module):
    def __init__(self, inner, record, version):
        super().__init__()
        self.inner, self.record, self.version = inner, record, version

    def extract_features(self, *args, **kwargs):
        out = self.inner.extract_features(*args, **kwargs)
        if self.version != "v1":
            self.record("hubert", out[0][0].detach().numpy().copy())
        return out

    def final_proj(self, x):
        y = self.inner.final_proj(x)
        self.record("hubert", y[0].detach().numpy().copy())
        return y


class _CapturingF:
    """Stands in for ``torch.nn.functional`` inside rvc's pipeline module; records the first interpolate input of
    each ``vc`` call (the features after the index blend, (1, C, T) after the pipeline's permute)."""

    def __init__(self, real, state):
        self._real, self._state = real, state

    def __getattr__(self, name):
        return getattr(self._real, name)

    def interpolate(self, x, *args, **kwargs):
        if not self._state["retrieved_seen"]:
            self._state["record"]("retrieved", x[0].T.detach().numpy().copy())
            self._state["retrieved_seen"] = True
        return self._real.interpolate(x, *args, **kwargs)


def _latent(t):
    return t[0].T.detach().numpy().copy()  # (1, C, T) -> (T, C)


@contextlib.contextmanager
def _capture(models: ReferenceModels, voice: str, record):
    from rvc.modules.vc import pipeline as ref_pipeline

    _, net_g, ckpt = models.voice(voice)
    version = ckpt.get("version", "v1")
    state = {"record": record, "retrieved_seen": False}
    orig_get_f0, orig_infer, orig_vc = ref_pipeline.Pipeline.get_f0, net_g.infer, ref_pipeline.Pipeline.vc
    orig_hubert, orig_f = models.hubert_ref, ref_pipeline.F

    def get_f0(self, path, x, *args, **kwargs):
        t_pad = SAMPLE_RATE * X_PAD
        record("input16k", np.asarray(x[t_pad:-t_pad], np.float32).copy())
        coarse, f0 = orig_get_f0(self, path, x, *args, **kwargs)
        p_len = args[0]
        record("f0", np.asarray(f0[:p_len], np.float32).copy())
        record("pitch", np.asarray(coarse[:p_len], np.int32).copy())
        return coarse, f0

    def vc(self, *args, **kwargs):
        state["retrieved_seen"] = False
        return orig_vc(self, *args, **kwargs)

    def infer(phone, lengths, *rest):
        record("protected", phone[0].detach().numpy().copy())
        if len(rest) == 3:
            record("coarse_pitch", rest[0][0].numpy().astype(np.int32).copy())
            record("f0_frames", rest[1][0].numpy().astype(np.float32).copy())
        out = orig_infer(phone, lengths, *rest)
        o, _, (z, z_p, m_p, logs_p) = out
        for name, t in (("m_p", m_p), ("logs_p", logs_p), ("z_p", z_p), ("z", z)):
            record(name, _latent(t))
        record("generator", o[0, 0].detach().numpy().copy())
        return out

    ref_pipeline.Pipeline.get_f0 = get_f0
    ref_pipeline.Pipeline.vc = vc
    ref_pipeline.F = _CapturingF(orig_f, state)
    net_g.infer = infer
    models.hubert_ref = _CapturingHubert(orig_hubert, record, version)
    try:
        yield
    finally:
        ref_pipeline.Pipeline.get_f0 = orig_get_f0
        ref_pipeline.Pipeline.vc = orig_vc
        ref_pipeline.F = orig_f
        del net_g.infer  # back to the bound method of the class
        models.hubert_ref = orig_hubert


def reference_dump(models: ReferenceModels, voice: str, audio16k: np.ndarray, **opts):
    """Run the reference on 16 kHz ``audio16k`` and return ``(stages, info)`` for ``parity.save_dump``.

    ``opts`` are ``reference_convert``'s keyword options (pitch, f0_method, index, index_rate, protect, ...)."""
    stages: dict[str, np.ndarray] = {}

    def record(name, value):
        if name in stages:
            raise NotImplementedError(f"stage {name} recorded twice: reference dumps support one piece only")
        stages[name] = value

    _, _, ckpt = models.voice(voice)
    with _capture(models, voice, record):
        out, sr = reference_convert(models, voice, audio16k, **opts)
    stages["audio"] = (np.asarray(out).astype(np.float32) / INT16_SCALE)
    info = {
        "producer": "rvc==0.3.5 reference (PyTorch, noise zeroed)",
        "options": {k: str(v) for k, v in opts.items()},
        "model": {"version": ckpt.get("version", "v1"), "sample_rate": int(ckpt["config"][-1]),
                  "use_f0": bool(ckpt.get("f0", 1))},
        "input_sample_rate": SAMPLE_RATE,
        "pipeline_sample_rate": SAMPLE_RATE,
        "output_sample_rate": int(sr),
    }
    return stages, info
