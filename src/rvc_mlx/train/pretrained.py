"""Training states from torch: RVC's pretrained ``f0G*.pth`` / ``f0D*.pth`` (and its own ``G_*.pth``/``D_*.pth``
checkpoints) -> training parameters (:mod:`.nets`: weight norm kept as ``weight_g``/``weight_v``, MLX layout).

Read through the safe reader (:mod:`rvc_mlx.checkpoint`); the state dict is the ``model`` entry (RVC's
checkpoints; the pretrains hold the same). Both weight-norm spellings are accepted (``weight_g``/``weight_v`` and
``parametrizations.weight.original0/1``). Every tensor is mapped by a rule or the load fails, as in conversion.
"""

from __future__ import annotations

import os

import numpy as np

from ..convert.common import Rule, apply_rules
from ..convert.rvc import HIFIGAN_RULES, RULES
from ..errors import ConversionError

_NEW_STYLE = ((".parametrizations.weight.original0", ".weight_g"), (".parametrizations.weight.original1", ".weight_v"))


def _with_weight_norm(rules: list[Rule]) -> list[Rule]:
    """The same table, each conv weight rule also matching its ``weight_g``/``weight_v`` (same layout: the
    transposes put ``g`` in the shape that broadcasts against the MLX-layout ``v``)."""
    return [Rule(r.pattern + "(_g|_v)?", r.layout, r.target) if r.pattern.endswith(r"\.weight") else r for r in rules]


ENC_Q_RULES = [
    Rule(r"enc_q\.(pre|proj)\.weight", "conv1d"),
    Rule(r"enc_q\.enc\.((in_layers|res_skip_layers)\.\d+|cond_layer)\.weight", "conv1d"),
    Rule(r"enc_q\.(pre|proj|enc\.(in_layers\.\d+|res_skip_layers\.\d+|cond_layer))\.bias"),
]
GENERATOR_RULES = _with_weight_norm(RULES + HIFIGAN_RULES + ENC_Q_RULES)
# The period discriminators' (k, 1) Conv2d kernels are our per-column Conv1d kernels.
DISCRIMINATOR_RULES = _with_weight_norm([
    Rule(r"discriminators\.0\.(convs\.\d+|conv_post)\.weight", "conv1d"),
    Rule(r"discriminators\.[1-9]\d*\.(convs\.\d+|conv_post)\.weight", "conv2d_k1"),
    Rule(r"discriminators\.\d+\.(convs\.\d+|conv_post)\.bias"),
])


def _state(obj, source: str) -> dict[str, np.ndarray]:
    state = obj.get("model", obj.get("weight", obj)) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{source}: no state dict (expected a 'model' entry)")
    out = {}
    for key, value in state.items():
        for old, new in _NEW_STYLE:
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def generator_params(state: dict, source: str = "generator") -> dict[str, np.ndarray]:
    """A generator state (with ``enc_q``) -> training parameters, float32."""
    return apply_rules(_state(state, source), GENERATOR_RULES, drop=[], source=source)


def discriminator_params(state: dict, source: str = "discriminator") -> dict[str, np.ndarray]:
    """A ``MultiPeriodDiscriminator[V2]`` state -> training parameters, float32."""
    return apply_rules(_state(state, source), DISCRIMINATOR_RULES, drop=[], source=source)


def load_pretrained(path: str | os.PathLike, kind: str) -> dict[str, np.ndarray]:
    """Read ``f0G40k.pth``-style (``kind="generator"``) or ``f0D40k.pth``-style (``"discriminator"``) files."""
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, upcast_half=True)
    if kind == "generator":
        return generator_params(ckpt, str(path))
    if kind == "discriminator":
        return discriminator_params(ckpt, str(path))
    raise ValueError(f"kind must be 'generator' or 'discriminator', got {kind!r}")


def check_params(expected: dict, params: dict, source: str) -> None:
    """Strict: ``params`` must have exactly the names and shapes of ``expected`` (``training_params(model)``)."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    shapes = sorted(k for k in set(expected) & set(params) if tuple(expected[k].shape) != tuple(params[k].shape))
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if names:
            problems.append(f"{label}: {', '.join(names[:6])}" + (" ..." if len(names) > 6 else ""))
    if problems:
        raise ConversionError(f"{source}: does not fit the model ({'; '.join(problems)})")
