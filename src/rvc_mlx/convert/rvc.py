"""RVC voice models (RVC-Project and Applio ``.pth`` exports) -> rvc-mlx ``voice`` format.

Input: the plain checkpoint dict from the safe reader::

    weight   state dict of numpy arrays (usually float16), enc_q already removed by RVC's export
    config   RVC's positional 18-item list (see CONFIG_FIELDS)
    f0       1 (pitch-guided, NSF decoder) or 0
    version  "v1" (256-d features) or "v2" (768-d)
    sr       "40k" (RVC-Project) or 40000 (Applio)
    info     free text
    Applio also: embedder_model, vocoder, speakers_id, model_name, author, ...

Weight norm is fused in float32; layouts follow the module type in the rule tables (``RULES`` for the text
encoder, flow and speaker table, plus the vocoder's table in ``DECODER_RULES``); ``DROP`` lists what is discarded
on purpose. Every source tensor is mapped or dropped, otherwise conversion fails. Parameter names are kept
(``flow.flows.{0,2,4,6}`` stay as they are: the MLX flow keeps weightless Flip modules at the odd indices), except
that MRF HiFi-GAN's decoder is renamed to the NSF names it shares its body with (``mrf_to_nsf_names``).

The vocoder comes from the checkpoint's ``vocoder`` field (absent: HiFi-GAN); the decoder's key names must agree
with it, so a file whose field and weights disagree, an unknown vocoder (other Applio forks have more) and
Applio's pre-3.3 RefineGAN layout are each refused with one line.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import ConversionError
from .common import Rule, apply_rules, fuse_weight_norms

CONFIG_FIELDS = (
    "spec_channels",
    "segment_size",
    "inter_channels",
    "hidden_channels",
    "filter_channels",
    "n_heads",
    "n_layers",
    "kernel_size",
    "p_dropout",
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "upsample_rates",
    "upsample_initial_channel",
    "upsample_kernel_sizes",
    "spk_embed_dim",
    "gin_channels",
    "sr",
)
FEATURE_DIMS = {"v1": 256, "v2": 768}
SAMPLE_RATE_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}
FRAME_RATE = 100  # synthesizer frames per second: prod(upsample_rates) == sample_rate / FRAME_RATE
VOCODERS = ("HiFi-GAN", "MRF HiFi-GAN", "RefineGAN")  # Applio's names (models.synthesizer.VOCODERS)
# Decoder key prefixes that identify a vocoder (the same ones Applio's networks register).
VOCODER_KEYS = {
    "MRF HiFi-GAN": ("dec.mrfs.", "dec.upsamples."),
    "RefineGAN": ("dec.downsample_blocks.", "dec.upsample_conv_blocks.", "dec.mel_conv."),
    "HiFi-GAN": ("dec.ups.", "dec.resblocks."),
}
REFINEGAN_PRE_CONV = (16, 1, 7)  # Applio >= 3.3.0; the 3.2.9 layout has (256, 1, 7)
DEFAULT_EMBEDDER = "contentvec"  # RVC-Project's hubert_base.pt is the ContentVec model Applio calls "contentvec"

def _table(conv1d=(), conv_transpose1d=(), keep=()) -> list[Rule]:
    """Rules for modules by type: conv weights get their layout, their biases and ``keep`` patterns are kept."""
    return (
        [Rule(m + r"\.weight", "conv1d") for m in conv1d]
        + [Rule(m + r"\.weight", "conv_transpose1d") for m in conv_transpose1d]
        + [Rule(m + r"\.bias") for m in conv1d + conv_transpose1d]
        + [Rule(k) for k in keep]
    )


# Text encoder, flow and speaker table: the same in every voice model.
RULES = _table(
    conv1d=(
        r"enc_p\.encoder\.attn_layers\.\d+\.conv_[qkvo]",
        r"enc_p\.encoder\.ffn_layers\.\d+\.conv_[12]",
        r"enc_p\.proj",
        r"flow\.flows\.\d*[02468]\.(pre|post)",
        r"flow\.flows\.\d*[02468]\.enc\.(in_layers|res_skip_layers)\.\d+",
        r"flow\.flows\.\d*[02468]\.enc\.cond_layer",
    ),
    keep=(
        r"emb_g\.weight",
        r"enc_p\.emb_phone\.(weight|bias)",
        r"enc_p\.emb_pitch\.weight",
        r"enc_p\.encoder\.attn_layers\.\d+\.emb_rel_[kv]",
        r"enc_p\.encoder\.norm_layers_[12]\.\d+\.(gamma|beta)",
    ),
)
# HiFi-GAN (RVC's NSF / plain; MRF after ``mrf_to_nsf_names``).
HIFIGAN_RULES = _table(
    conv1d=(r"dec\.(conv_pre|conv_post|cond)", r"dec\.noise_convs\.\d+", r"dec\.resblocks\.\d+\.convs[12]\.\d+"),
    conv_transpose1d=(r"dec\.ups\.\d+",),
    keep=(r"dec\.m_source\.l_linear\.(weight|bias)",),
)
REFINEGAN_RULES = _table(
    conv1d=(
        r"dec\.(pre_conv|mel_conv|cond|conv_post)",
        r"dec\.downsample_blocks\.\d+",
        r"dec\.upsample_conv_blocks\.\d+\.input_conv",
        r"dec\.upsample_conv_blocks\.\d+\.blocks\.\d+\.1\.convs[12]\.\d+",
    ),
    keep=(r"dec\.upsample_conv_blocks\.\d+\.blocks\.\d+\.[02]\.weight",),  # AdaIN noise scales
) + [Rule(r"dec\.m_source\.merge\.0\.weight", target="dec.m_source.l_linear.weight")]
DECODER_RULES = {"HiFi-GAN": HIFIGAN_RULES, "MRF HiFi-GAN": HIFIGAN_RULES, "RefineGAN": REFINEGAN_RULES}
# Every converted name, for describing converted files (export manifests; RefineGAN's merge is renamed).
ALL_RULES = RULES + HIFIGAN_RULES + REFINEGAN_RULES
# Training-only parts: the posterior encoder (RVC's export drops it already; training states keep it).
DROP = [r"enc_q\..*"]


def is_training_checkpoint(ckpt) -> bool:
    """A training state (``G_*.pth`` generator or ``D_*.pth`` discriminator): ``model`` state dict plus
    optimizer/iteration, no ``weight``."""
    return isinstance(ckpt, dict) and "weight" not in ckpt and isinstance(ckpt.get("model"), dict) and (
        "optimizer" in ckpt or "iteration" in ckpt or "learning_rate" in ckpt
    ) and any(str(k).startswith(("enc_p.", "dec.", "flow.", "discriminators.")) for k in ckpt["model"])


def is_voice_checkpoint(ckpt) -> bool:
    """Whether ``ckpt`` looks like an RVC voice model (an export, or a training state that
    :func:`convert_voice` will refuse with a helpful message)."""
    if not isinstance(ckpt, dict):
        return False
    if is_training_checkpoint(ckpt):
        return True
    weight = ckpt.get("weight")
    return isinstance(weight, dict) and "emb_g.weight" in weight and any(
        str(k).startswith("enc_p.") for k in weight
    )


def _sample_rate(value, source: str) -> int:
    if isinstance(value, str):
        if value in SAMPLE_RATE_NAMES:
            return SAMPLE_RATE_NAMES[value]
        if value.isdigit():
            return int(value)
        raise ConversionError(f"{source}: unknown sample rate {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConversionError(f"{source}: unknown sample rate {value!r}") from None


def _named_config(ckpt: dict, weights: dict[str, np.ndarray], vocoder: str, source: str) -> dict:
    raw = ckpt.get("config")
    if not isinstance(raw, (list, tuple)) or len(raw) != len(CONFIG_FIELDS):
        raise ConversionError(
            f"{source}: 'config' must be RVC's {len(CONFIG_FIELDS)}-item list, got "
            f"{type(raw).__name__}{'' if not isinstance(raw, (list, tuple)) else f' of {len(raw)} items'}"
        )
    c = dict(zip(CONFIG_FIELDS, raw))
    if str(c["resblock"]) != "1":
        raise ConversionError(f"{source}: resblock type {c['resblock']!r} is not supported (only RVC's '1')")

    version = ckpt.get("version", "v1")
    if version not in FEATURE_DIMS:
        raise ConversionError(f"{source}: unknown RVC version {version!r} (expected v1 or v2)")
    phone = weights.get("enc_p.emb_phone.weight")
    if phone is None or phone.ndim != 2:
        raise ConversionError(f"{source}: no enc_p.emb_phone.weight; not an RVC voice model")
    feature_dim = int(phone.shape[1])
    if feature_dim != FEATURE_DIMS[version]:
        raise ConversionError(
            f"{source}: version {version} expects {FEATURE_DIMS[version]}-d features but the model takes {feature_dim}-d"
        )

    use_f0 = bool(int(ckpt.get("f0", 1)))
    has_source = any(k.startswith("dec.m_source.") for k in weights)
    has_pitch = "enc_p.emb_pitch.weight" in weights
    if use_f0 != has_source or use_f0 != has_pitch:
        raise ConversionError(
            f"{source}: f0={int(use_f0)} but the weights {'lack' if use_f0 else 'contain'} the pitch layers"
        )

    sample_rate = _sample_rate(ckpt.get("sr", c["sr"]), source)
    if _sample_rate(c["sr"], source) != sample_rate:
        raise ConversionError(f"{source}: sr {ckpt.get('sr')!r} disagrees with config sample rate {c['sr']!r}")
    rates = [int(u) for u in c["upsample_rates"]]
    if math.prod(rates) * FRAME_RATE != sample_rate:
        raise ConversionError(
            f"{source}: upsample rates {rates} give {math.prod(rates) * FRAME_RATE} Hz, not the model's {sample_rate} Hz"
        )
    kernels = [int(k) for k in c["upsample_kernel_sizes"]]
    if len(kernels) < len(rates) or any((k - u) % 2 for k, u in zip(kernels, rates)):
        raise ConversionError(f"{source}: upsample kernels {kernels} do not fit rates {rates}")

    if vocoder == "MRF HiFi-GAN" and any(u % 2 for u in rates):
        raise ConversionError(f"{source}: MRF HiFi-GAN with odd upsample rates {rates} is not supported")
    if vocoder == "RefineGAN" and len(rates) != 4:
        raise ConversionError(f"{source}: RefineGAN needs exactly 4 upsample rates, got {rates}")
    if vocoder != "HiFi-GAN" and not use_f0:
        raise ConversionError(f"{source}: a {vocoder} voice must be an f0 model (Applio has no pitchless {vocoder})")
    embedder = ckpt.get("embedder_model") or DEFAULT_EMBEDDER
    info = ckpt.get("info")
    return {
        "kind": "voice",
        "version": version,
        "sample_rate": sample_rate,
        "use_f0": use_f0,
        "feature_dim": feature_dim,
        "n_speakers": int(weights["emb_g.weight"].shape[0]),
        "inter_channels": int(c["inter_channels"]),
        "hidden_channels": int(c["hidden_channels"]),
        "filter_channels": int(c["filter_channels"]),
        "n_heads": int(c["n_heads"]),
        "n_layers": int(c["n_layers"]),
        "kernel_size": int(c["kernel_size"]),
        "resblock_kernel_sizes": [int(k) for k in c["resblock_kernel_sizes"]],
        "resblock_dilation_sizes": [[int(d) for d in ds] for ds in c["resblock_dilation_sizes"]],
        "upsample_rates": rates,
        "upsample_initial_channel": int(c["upsample_initial_channel"]),
        "upsample_kernel_sizes": kernels[: len(rates)],
        "gin_channels": int(c["gin_channels"]),
        "vocoder": vocoder,
        "embedder": str(embedder),
        "info": "" if info is None else str(info),
    }


def convert_voice(ckpt: dict, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict]:
    """Convert an RVC voice checkpoint dict. Returns ``(weights in MLX layout (float32), named config)``.

    Raises ``ConversionError`` (one line naming ``source``) for training states, unsupported vocoders,
    inconsistent configs and unrecognised tensors.
    """
    if is_training_checkpoint(ckpt):
        which = "D_*.pth: a discriminator" if any(
            str(k).startswith("discriminators.") for k in ckpt["model"]) else "G_*.pth: model"
        raise ConversionError(
            f"{source}: is a training checkpoint ({which} + optimizer state, no config); "
            "pass the exported small model from RVC's weights folder (assets/weights/<name>.pth) instead"
        )
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("weight"), dict):
        raise ConversionError(f"{source}: not an RVC voice model (no 'weight' state dict)")
    state = {str(k): np.asarray(v) for k, v in ckpt["weight"].items()}
    vocoder = vocoder_of(ckpt, state, source)
    if vocoder == "MRF HiFi-GAN":
        state = mrf_to_nsf_names(state, _resblock_count(ckpt, source))
    state = fuse_weight_norms(state)  # RVC and Applio use weight norm with dim 0 everywhere
    weights = apply_rules(state, RULES + DECODER_RULES[vocoder], DROP, source)
    config = _named_config(ckpt, weights, vocoder, source)
    return weights, config


def vocoder_of(ckpt: dict, state: dict, source: str) -> str:
    """The vocoder of a checkpoint: its ``vocoder`` field, which the decoder's key names must confirm (absent:
    the one the keys name, HiFi-GAN when they name none). One-line errors for unknown vocoders, a field that
    disagrees with the weights, and the RefineGAN layout of Applio 3.2.9 (which current Applio cannot load
    either)."""
    found = [v for v, prefixes in VOCODER_KEYS.items() if any(k.startswith(prefixes) for k in state)]
    named = str(ckpt.get("vocoder") or (found[0] if found else "HiFi-GAN"))
    canonical = {v.lower().replace("-", "").replace(" ", ""): v for v in VOCODERS}
    vocoder = canonical.get(named.lower().replace("-", "").replace(" ", ""))
    if vocoder is None:
        raise ConversionError(
            f"{source}: vocoder {named!r} is not supported (rvc-mlx reads {', '.join(VOCODERS)})"
        )
    if found and found[0] != vocoder:
        raise ConversionError(f"{source}: the checkpoint says vocoder {named!r} but its decoder weights are {found[0]}'s")
    pre = state.get("dec.pre_conv.weight_v", state.get("dec.pre_conv.parametrizations.weight.original1"))
    if vocoder == "RefineGAN" and pre is not None and tuple(pre.shape) != REFINEGAN_PRE_CONV:
        raise ConversionError(
            f"{source}: RefineGAN layout of Applio 3.2.9 (dec.pre_conv {tuple(pre.shape)}, current Applio has "
            f"{REFINEGAN_PRE_CONV}); Applio >= 3.3 cannot load it either: retrain the voice with a current Applio"
        )
    return vocoder


_MRF_LAYER = re.compile(r"dec\.mrfs\.(\d+)\.(\d+)\.layers\.(\d+)\.conv([12])\.(.+)")


def mrf_to_nsf_names(state: dict[str, np.ndarray], resblocks: int) -> dict[str, np.ndarray]:
    """MRF HiFi-GAN's decoder names -> RVC's NSF names (the same body): ``dec.upsamples.i`` -> ``dec.ups.i``,
    ``dec.mrfs.i.j.layers.k.conv{1,2}`` -> ``dec.resblocks.(resblocks·i + j).convs{1,2}.k``."""
    out = {}
    for key, value in state.items():
        m = _MRF_LAYER.fullmatch(key)
        if m:
            i, j, k, which, rest = m.groups()
            key = f"dec.resblocks.{resblocks * int(i) + int(j)}.convs{which}.{k}.{rest}"
        elif key.startswith("dec.upsamples."):
            key = "dec.ups." + key[len("dec.upsamples.") :]
        out[key] = value
    return out


def _resblock_count(ckpt: dict, source: str) -> int:
    raw = ckpt.get("config")
    if not isinstance(raw, (list, tuple)) or len(raw) != len(CONFIG_FIELDS):
        raise ConversionError(f"{source}: 'config' must be RVC's {len(CONFIG_FIELDS)}-item list")
    return len(dict(zip(CONFIG_FIELDS, raw))["resblock_kernel_sizes"])
