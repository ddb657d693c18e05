"""Shared conversion machinery: layout rules by module type, weight-norm fusion, and rule tables.

A converter is a pure function ``dict[str, np.ndarray] -> dict[str, np.ndarray]`` driven by a table of
``Rule``s. Every source tensor must be matched by a rule or by the explicit drop list; anything else is an error,
so a new or renamed tensor in a checkpoint can never be silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConversionError

# PyTorch -> MLX (channels last). Decided by the module type named in a rule, never guessed from shapes.
LAYOUTS = {
    "keep": lambda w: w,  # Linear, Embedding, LayerNorm, GroupNorm, BatchNorm, GRU, biases, emb_rel_k/v
    "conv1d": lambda w: w.transpose(0, 2, 1),  # (O, I, K) -> (O, K, I)
    "conv_transpose1d": lambda w: w.transpose(1, 2, 0),  # (I, O, K) -> (O, K, I)
    "conv2d": lambda w: w.transpose(0, 2, 3, 1),  # (O, I, H, W) -> (O, H, W, I)
    "conv_transpose2d": lambda w: w.transpose(1, 2, 3, 0),  # (I, O, H, W) -> (O, H, W, I)
    "conv2d_k1": lambda w: w[..., 0].transpose(0, 2, 1),  # (O, I, K, 1) -> (O, K, I): a (K, 1) Conv2d as Conv1d
}

_WN_SUFFIXES = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class Rule:
    """Map source keys matching ``pattern`` (a full-match regex) to ``target`` (a ``re`` replacement template)
    and apply the layout named by ``layout`` (a key of ``LAYOUTS``)."""

    pattern: str
    layout: str = "keep"
    target: str | None = None  # default: same name


def fuse_weight_norm(g: np.ndarray, v: np.ndarray, dim: int = 0) -> np.ndarray:
    """``w = g * v / ||v||`` in float32, the norm taken over every axis except ``dim`` (torch ``weight_norm``)."""
    if not (isinstance(g, np.ndarray) and isinstance(v, np.ndarray)):
        raise ConversionError("a weight-norm entry is not a tensor")
    g = np.asarray(g, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    want = tuple(n if a == dim else 1 for a, n in enumerate(v.shape))
    if v.ndim <= dim or g.shape != want or v.size == 0:
        raise ConversionError(f"weight norm g {g.shape} does not fit v {v.shape}")
    axes = tuple(a for a in range(v.ndim) if a != dim)
    norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=axes, keepdims=True)).astype(np.float32)
    return (g * (v / norm)).astype(np.float32)


def fuse_weight_norms(state: dict[str, np.ndarray], dim_for=lambda key: 0) -> dict[str, np.ndarray]:
    """Replace every weight-norm pair (old ``weight_g/weight_v`` or new ``parametrizations``) by a fused
    ``<module>.weight``. ``dim_for(module_key)`` gives the weight-norm dim (0 for RVC convs)."""
    out = dict(state)
    for g_suffix, v_suffix in _WN_SUFFIXES:
        for key in [k for k in state if k.endswith(g_suffix)]:
            module = key[: -len(g_suffix)]
            v_key = module + v_suffix
            if v_key not in state:
                raise ConversionError(f"weight norm tensor {key} has no matching {v_key}")
            try:
                out[module + ".weight"] = fuse_weight_norm(state[key], state[v_key], dim_for(module))
            except ConversionError as e:
                raise ConversionError(f"{module}: {e}") from None
            del out[key], out[v_key]
    return out


def apply_rules(
    state: dict[str, np.ndarray], rules: list[Rule], drop: list[str], source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Apply ``rules`` to every tensor of ``state``; tensors matching a ``drop`` regex are discarded.

    Returns float32 (floating point) MLX-layout arrays. Raises ``ConversionError`` listing unmapped tensors.
    """
    compiled = [(re.compile(r.pattern), r) for r in rules]
    dropped = [re.compile(p) for p in drop]
    out: dict[str, np.ndarray] = {}
    unmapped = []
    for key, value in state.items():
        if any(p.fullmatch(key) for p in dropped):
            continue
        for regex, rule in compiled:
            if regex.fullmatch(key):
                name = regex.sub(rule.target, key) if rule.target else key
                arr = np.asarray(value)
                if np.issubdtype(arr.dtype, np.floating):
                    arr = arr.astype(np.float32)
                try:
                    out[name] = np.ascontiguousarray(LAYOUTS[rule.layout](arr))
                except ValueError:
                    raise ConversionError(
                        f"{source}: tensor {key} has shape {arr.shape}, not a {rule.layout} weight"
                    ) from None
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            f"{source}: {len(unmapped)} tensor(s) not recognised: {', '.join(sorted(unmapped)[:8])}"
            + (" ..." if len(unmapped) > 8 else "")
        )
    return out


def layout_of(key: str, rules: list[Rule]) -> str | None:
    """The layout (a key of ``LAYOUTS``) that ``rules`` gave the converted tensor ``key``, or None if no rule
    produced it. Only rules that keep the source name (``target`` None) are consulted, so ``rules`` must be a
    table whose names are the converted names (e.g. ``rvc.RULES``, ``hubert.RULES``, ``rmvpe.RULES``).
    Used to describe a converted file without guessing layouts from shapes (export manifests)."""
    for rule in rules:
        if rule.target is None and re.fullmatch(rule.pattern, key):
            return rule.layout
    return None
