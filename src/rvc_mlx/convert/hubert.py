"""HuBERT / ContentVec content encoder: fairseq ``hubert_base.pt`` or a transformers directory -> rvc-mlx.

Both sources produce the same MLX tensor names (they mirror transformers' ``HubertModel`` names, plus
``final_proj``) and the same config, so a converted file does not remember where it came from except in
``source_format``.

fairseq layout (RVC's ``hubert_base.pt``; ``ckpt["model"]``)::

    feature_extractor.conv_layers.N.0.weight        Conv1d (512, C_in, k), no bias
    feature_extractor.conv_layers.0.2.{weight,bias} GroupNorm(512, 512) of layer 0
    layer_norm.*, post_extract_proj.*               LayerNorm(512), Linear(512 -> 768)
    encoder.pos_conv.0.{weight_g,weight_v,bias}     grouped Conv1d(768, 768, 128, groups 16), weight norm dim=2
    encoder.layer_norm.*                            LayerNorm(768) (post-LN model: applied before layer 0)
    encoder.layers.N.self_attn.{q,k,v,out}_proj.*, self_attn_layer_norm.*, fc1.*, fc2.*, final_layer_norm.*
    final_proj.*                                    Linear(768 -> 256)
    mask_emb, label_embs_concat                     training only (dropped)

transformers layout (a ``HubertModel``; task models such as ``HubertForCTC`` prefix it with ``hubert.`` and add a head
that is dropped): ``feature_extractor.conv_layers.N.conv.weight``, ``conv_layers.0.layer_norm``,
``feature_projection.{layer_norm,projection}``, ``encoder.pos_conv_embed.conv.{weight_g,weight_v |
parametrizations.weight.original0/1, bias}``, ``encoder.layers.N.attention.*``, ``layer_norm``,
``feed_forward.{intermediate,output}_dense``, ``final_layer_norm``; ``masked_spec_embed`` is training only.
ContentVec ports add ``final_proj.*`` (kept when present; ``has_final_proj`` records it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from .common import Rule, apply_rules, fuse_weight_norms

KIND = "hubert"

# HuBERT-base architecture (the only one RVC uses): what a transformers config.json must say.
HIDDEN_SIZE = 768
NUM_LAYERS = 12
NUM_HEADS = 12
INTERMEDIATE_SIZE = 3072
CONV_DIM = (512,) * 7
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
POS_CONV_KERNEL = 128
POS_CONV_GROUPS = 16
POS_CONV_WEIGHT_NORM_DIM = 2  # HuBERT's positional conv normalises per kernel tap, not per output channel
FINAL_PROJ_DIM = 256
LAYER_NORM_EPS = 1e-5
SAMPLE_RATE = 16000

_POS_CONV = "encoder.pos_conv_embed.conv"

# transformers names == MLX names; only conv layouts change.
_HF_RULES = [
    Rule(r"feature_extractor\.conv_layers\.\d+\.conv\.weight", "conv1d"),
    Rule(r"feature_extractor\.conv_layers\.0\.layer_norm\.(weight|bias)"),
    Rule(r"feature_projection\.(layer_norm|projection)\.(weight|bias)"),
    Rule(r"encoder\.pos_conv_embed\.conv\.weight", "conv1d"),
    Rule(r"encoder\.pos_conv_embed\.conv\.bias"),
    Rule(r"encoder\.layer_norm\.(weight|bias)"),
    Rule(r"encoder\.layers\.\d+\.attention\.(q|k|v|out)_proj\.(weight|bias)"),
    Rule(r"encoder\.layers\.\d+\.(layer_norm|final_layer_norm)\.(weight|bias)"),
    Rule(r"encoder\.layers\.\d+\.feed_forward\.(intermediate_dense|output_dense)\.(weight|bias)"),
    Rule(r"final_proj\.(weight|bias)"),
]
# masked_spec_embed: pre-training only. The heads of transformers' task models (HubertForCTC: lm_head;
# HubertForSequenceClassification: projector, classifier) sit on top of the encoder RVC reads: not used.
_HF_DROP = [r"masked_spec_embed", r"lm_head\.(weight|bias)", r"projector\.(weight|bias)", r"classifier\.(weight|bias)"]
_TASK_PREFIX = "hubert."  # a task model keeps the HubertModel under ``hubert.``
RULES = _HF_RULES  # converted names == transformers names: the table ``common.layout_of`` consults

_FAIRSEQ_RULES = [
    Rule(r"feature_extractor\.conv_layers\.(\d+)\.0\.weight", "conv1d", r"feature_extractor.conv_layers.\1.conv.weight"),
    Rule(r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", "keep", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    Rule(r"layer_norm\.(weight|bias)", "keep", r"feature_projection.layer_norm.\1"),
    Rule(r"post_extract_proj\.(weight|bias)", "keep", r"feature_projection.projection.\1"),
    Rule(r"encoder\.pos_conv\.0\.weight", "conv1d", _POS_CONV + ".weight"),
    Rule(r"encoder\.pos_conv\.0\.bias", "keep", _POS_CONV + ".bias"),
    Rule(r"encoder\.layer_norm\.(weight|bias)"),
    Rule(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", "keep", r"encoder.layers.\1.attention.\2_proj.\3"),
    Rule(r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", "keep", r"encoder.layers.\1.layer_norm.\2"),
    Rule(r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", "keep", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    Rule(r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", "keep", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    Rule(r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)"),
    Rule(r"final_proj\.(weight|bias)"),
]
# Pre-training only: masked-frame embedding and the k-means label embeddings used by the HuBERT loss.
_FAIRSEQ_DROP = [r"mask_emb", r"label_embs_concat"]

_FAIRSEQ_MARKERS = ("feature_extractor.conv_layers.0.0.weight", "post_extract_proj.weight")
_FAIRSEQ_POS_CONV = ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v")

HF_CONFIG = "config.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def expected_keys(num_layers: int = NUM_LAYERS, final_proj: bool = True) -> set[str]:
    """The MLX tensor names of a converted HuBERT-base (used by tests and strict loading)."""
    keys = {f"feature_extractor.conv_layers.{i}.conv.weight" for i in range(len(CONV_DIM))}
    keys |= {"feature_extractor.conv_layers.0.layer_norm.weight", "feature_extractor.conv_layers.0.layer_norm.bias"}
    for m in ("feature_projection.layer_norm", "feature_projection.projection", _POS_CONV, "encoder.layer_norm"):
        keys |= {m + ".weight", m + ".bias"}
    for n in range(num_layers):
        p = f"encoder.layers.{n}."
        for m in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj", "layer_norm",
                  "feed_forward.intermediate_dense", "feed_forward.output_dense", "final_layer_norm"):
            keys |= {p + m + ".weight", p + m + ".bias"}
    if final_proj:
        keys |= {"final_proj.weight", "final_proj.bias"}
    return keys


def _fairseq_state(ckpt) -> dict | None:
    """The fairseq state dict inside ``ckpt`` (``ckpt["model"]``, or ``ckpt`` itself when bare), else None."""
    if not isinstance(ckpt, dict):
        return None
    state = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else ckpt
    if all(k in state for k in _FAIRSEQ_MARKERS):
        return state
    return None


def is_hubert_checkpoint(ckpt) -> bool:
    """True when a loaded checkpoint (plain dict from ``load_checkpoint``) is a fairseq HuBERT/ContentVec model."""
    return _fairseq_state(ckpt) is not None


def is_hubert_directory(path) -> bool:
    """True when ``path`` is a transformers directory whose config.json declares a HuBERT model."""
    path = Path(path)
    cfg = path / HF_CONFIG
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(config, dict):
        return False
    archs = config.get("architectures") or []
    return config.get("model_type") == "hubert" or any("Hubert" in str(a) for a in archs)


def _weight_norm_dim(modules: tuple[str, ...], source: str):
    """Only the positional conv carries weight norm in HuBERT; anything else is not a model we know."""

    def dim_for(module: str) -> int:
        if module not in modules:
            raise ConversionError(f"{source}: unexpected weight-normalised module {module}")
        return POS_CONV_WEIGHT_NORM_DIM

    return dim_for


def _check_shapes(weights: dict[str, np.ndarray], source: str) -> None:
    """The converted tensors must be exactly HuBERT-base (catches a large/other model in either format)."""
    has_final_proj = "final_proj.weight" in weights
    expected = expected_keys(NUM_LAYERS, has_final_proj)
    missing = sorted(expected - set(weights))
    extra = sorted(set(weights) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:4])}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {', '.join(extra[:4])}")
        raise ConversionError(
            f"{source}: not a HuBERT-base model with {NUM_LAYERS} layers ({'; '.join(parts)})"
        )
    shapes = {
        "feature_projection.projection.weight": (HIDDEN_SIZE, CONV_DIM[-1]),
        _POS_CONV + ".weight": (HIDDEN_SIZE, POS_CONV_KERNEL, HIDDEN_SIZE // POS_CONV_GROUPS),
        "encoder.layers.0.feed_forward.intermediate_dense.weight": (INTERMEDIATE_SIZE, HIDDEN_SIZE),
    }
    for i, (c, k) in enumerate(zip(CONV_DIM, CONV_KERNEL)):
        shapes[f"feature_extractor.conv_layers.{i}.conv.weight"] = (c, k, CONV_DIM[i - 1] if i else 1)
    if has_final_proj:
        shapes["final_proj.weight"] = (FINAL_PROJ_DIM, HIDDEN_SIZE)
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise ConversionError(
                f"{source}: {key} has shape {tuple(weights[key].shape)}, expected {shape} for HuBERT-base"
            )


def _config(has_final_proj: bool, source_format: str, embedder: str | None, eps: float = LAYER_NORM_EPS) -> dict:
    return {
        "kind": KIND,
        "embedder": embedder,
        "source_format": source_format,
        "sample_rate": SAMPLE_RATE,
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "intermediate_size": INTERMEDIATE_SIZE,
        "conv_dim": list(CONV_DIM),
        "conv_kernel": list(CONV_KERNEL),
        "conv_stride": list(CONV_STRIDE),
        "num_conv_pos_embeddings": POS_CONV_KERNEL,
        "num_conv_pos_embedding_groups": POS_CONV_GROUPS,
        "layer_norm_eps": eps,
        "final_proj_dim": FINAL_PROJ_DIM if has_final_proj else None,
        "has_final_proj": has_final_proj,
        # RVC: v1 voices take final_proj(layer 9) (256-d), v2 voices take layer 12 (768-d).
        "feature_dims": {"v1": FINAL_PROJ_DIM, "v2": HIDDEN_SIZE},
    }


def _numpy_state(state: dict, source: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise ConversionError(f"{source}: state dict has a non-string key {k!r}")
        try:
            out[k] = np.asarray(v)
        except (TypeError, ValueError):
            raise ConversionError(f"{source}: entry {k} is not a tensor") from None
        if out[k].dtype == object:
            raise ConversionError(f"{source}: entry {k} is not a tensor")
    return out


def convert_hubert_fairseq(ckpt: dict, source: str = "checkpoint", embedder: str | None = None):
    """Convert a loaded fairseq HuBERT/ContentVec checkpoint (``{"model": state, "cfg"/"args": ...}`` as read by
    ``rvc_mlx.checkpoint.load_checkpoint``; a bare state dict also works).

    ``args``/``cfg`` are ignored (they are inert placeholders after safe loading). fp16 weights are upcast.
    ``embedder`` defaults to the file stem of ``source``. Returns ``(weights: dict[str, np.ndarray], config)``.
    """
    state = _fairseq_state(ckpt)
    if state is None:
        raise ConversionError(f"{source}: not a fairseq HuBERT/ContentVec checkpoint (no feature extractor weights)")
    state = _numpy_state(state, source)
    missing_wn = [k for k in _FAIRSEQ_POS_CONV if k not in state]
    if missing_wn and "encoder.pos_conv.0.weight" not in state:
        raise ConversionError(f"{source}: positional conv weights missing ({', '.join(missing_wn)})")
    state = fuse_weight_norms(state, dim_for=_weight_norm_dim(("encoder.pos_conv.0",), source))
    weights = apply_rules(state, _FAIRSEQ_RULES, _FAIRSEQ_DROP, source)
    _check_shapes(weights, source)
    has_final_proj = "final_proj.weight" in weights
    name = embedder if embedder is not None else Path(str(source)).stem
    return weights, _config(has_final_proj, "fairseq", name)


def _validate_hf_config(config: dict, source: str) -> float:
    """Refuse any transformers config that is not the HuBERT-base architecture; return its layer_norm_eps."""
    if not isinstance(config, dict):
        raise ConversionError(f"{source}: config.json is not a JSON object")
    if config.get("model_type") not in ("hubert", None):
        raise ConversionError(f"{source}: config.json model_type is {config.get('model_type')!r}, expected 'hubert'")
    expected = {
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "intermediate_size": INTERMEDIATE_SIZE,
        "conv_dim": list(CONV_DIM),
        "conv_kernel": list(CONV_KERNEL),
        "conv_stride": list(CONV_STRIDE),
        "conv_bias": False,
        "feat_extract_norm": "group",
        "feat_extract_activation": "gelu",
        "hidden_act": "gelu",
        "feat_proj_layer_norm": True,
        "do_stable_layer_norm": False,
        "num_conv_pos_embeddings": POS_CONV_KERNEL,
        "num_conv_pos_embedding_groups": POS_CONV_GROUPS,
        "conv_pos_batch_norm": False,
        "use_weighted_layer_sum": False,
    }
    # transformers' own defaults for keys an older config.json may omit
    defaults = {"feat_proj_layer_norm": True, "conv_pos_batch_norm": False, "use_weighted_layer_sum": False,
                "do_stable_layer_norm": False, "feat_extract_activation": "gelu", "hidden_act": "gelu",
                "conv_bias": False}
    differ = []
    for key, want in expected.items():
        got = config.get(key, defaults.get(key, "<absent>"))
        if isinstance(got, tuple):
            got = list(got)
        if got != want:
            differ.append(f"{key}={got!r} (HuBERT-base: {want!r})")
    if differ:
        raise ConversionError(f"{source}: not a HuBERT-base architecture: {'; '.join(differ[:4])}")
    eps = config.get("layer_norm_eps", LAYER_NORM_EPS)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1e-2:
        raise ConversionError(f"{source}: config.json layer_norm_eps {eps!r} is not a small positive number")
    return float(eps)


def _unwrap_task_model(state: dict) -> dict:
    """A ``HubertForCTC``/``...ForSequenceClassification`` state dict without its ``hubert.`` prefix (the heads
    stay, to be dropped by name); any other state dict unchanged."""
    if not any(isinstance(k, str) and k.startswith(_TASK_PREFIX) for k in state):
        return state
    return {(k[len(_TASK_PREFIX):] if isinstance(k, str) and k.startswith(_TASK_PREFIX) else k): v
            for k, v in state.items()}


def convert_hubert_state(state: dict, hf_config: dict, source: str = "checkpoint", embedder: str | None = None):
    """Convert a transformers ``HubertModel`` state dict (optionally with ``final_proj.*``) given its config.json
    contents. Returns ``(weights, config)``."""
    eps = _validate_hf_config(hf_config, source)
    state = _numpy_state(_unwrap_task_model(state), source)
    state = fuse_weight_norms(state, dim_for=_weight_norm_dim((_POS_CONV,), source))
    weights = apply_rules(state, _HF_RULES, _HF_DROP, source)
    _check_shapes(weights, source)
    has_final_proj = "final_proj.weight" in weights
    return weights, _config(has_final_proj, "transformers", embedder, eps)


def _read_hf_weights(directory: Path) -> tuple[dict, Path]:
    st = directory / HF_WEIGHT_FILES[0]
    if st.is_file():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st)), st
        except Exception as e:  # safetensors raises its own error type; report it as one line
            raise ConversionError(f"{st}: cannot read tensors ({e})") from None
    pt = directory / HF_WEIGHT_FILES[1]
    if pt.is_file():
        from ..checkpoint import load_checkpoint

        state = load_checkpoint(pt)
        if not isinstance(state, dict):
            raise ConversionError(f"{pt}: does not contain a state dict")
        return state, pt
    raise ConversionError(f"{directory}: no {' or '.join(HF_WEIGHT_FILES)} next to config.json")


def convert_hubert_transformers(directory, source: str | None = None, embedder: str | None = None):
    """Convert a transformers HuBERT/ContentVec directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``). ``embedder`` defaults to the directory name. Returns ``(weights, config)``."""
    directory = Path(directory)
    source = str(source) if source is not None else str(directory)
    cfg_path = directory / HF_CONFIG
    try:
        hf_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{source}: no config.json (not a transformers model directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{cfg_path}: unreadable config.json ({e})") from None
    _validate_hf_config(hf_config, str(cfg_path))
    state, weights_path = _read_hf_weights(directory)
    name = embedder if embedder is not None else directory.resolve().name
    return convert_hubert_state(state, hf_config, str(weights_path), name)
