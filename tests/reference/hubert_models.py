"""Reference HuBERT-base content encoders with random weights, saved in the formats RVC users have.

No real HuBERT/ContentVec weights can be downloaded here, so parity is proven against ``transformers.HubertModel``
(an independent PyTorch implementation) with seeded random weights, plus a ``final_proj`` Linear(768, 256) as
in fairseq's HuBERT (RVC v1 applies it to the layer-9 output). The same weights are written as:

- a transformers directory with ``model.safetensors`` (new ``parametrizations.weight.original0/1`` weight norm);
- a transformers directory with ``pytorch_model.bin`` (legacy ``weight_g/weight_v`` names);
- a fairseq ``hubert_base.pt`` (``{"args", "cfg", "model", ...}``) with fairseq names, weight norm as
  ``encoder.pos_conv.0.weight_g/weight_v`` and the training-only ``mask_emb`` and ``label_embs_concat``.

Default transformers init is nearly degenerate for parity purposes (LayerNorms are identities, biases zero), so
every tensor is re-drawn with scales that keep activations O(1) and make every stage (GroupNorm, positional conv,
attention, FFN, final_proj) move the output well beyond the test tolerance, while the features keep varying
over time through all 12 layers (std over time ≥ ~0.4 of the total std; with plain random attention it
collapses to ~0.01 by layer 12, and parity would mostly test per-channel constants).

Test-only code: imports torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

SEED = 1234
HIDDEN = 768
FINAL_PROJ_DIM = 256
N_LAYERS = 12
N_LABELS = 504  # fairseq hubert_base: 500 k-means units + 4 specials
SAMPLE_RATE = 16000

HF_ST_DIR = "hubert_hf_safetensors"
HF_BIN_DIR = "hubert_hf_bin"
FAIRSEQ_FILE = "hubert_base.pt"
REFERENCE_VERSION = 2  # bump when the weights change: cached checkpoints and outputs are then rebuilt
BUILD_MARK = f"hubert_reference_v{REFERENCE_VERSION}.json"


def _randomize(model: torch.nn.Module, final_proj: torch.nn.Linear, seed: int) -> None:
    """Re-draw every parameter with non-trivial, seeded values."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    with torch.no_grad():
        for name, p in list(model.named_parameters()) + [("final_proj." + n, q) for n, q in final_proj.named_parameters()]:
            shape = tuple(p.shape)
            if "pos_conv_embed" in name and name.endswith("original0"):  # weight_g, shape (1, 1, 128)
                p.copy_(torch.rand(shape, generator=g) * 1.5 + 0.5)
            elif "pos_conv_embed" in name and name.endswith("original1"):  # weight_v (768, 48, 128)
                p.copy_(normal(shape, 1.0))
            elif "pos_conv_embed" in name and name.endswith("bias"):
                p.copy_(normal(shape, 0.1))
            elif "feature_extractor.conv_layers" in name and name.endswith("conv.weight"):
                fan_in = shape[1] * shape[2]
                p.copy_(normal(shape, math.sqrt(2.0 / fan_in)))
            elif "layer_norm" in name and name.endswith("weight"):  # LayerNorm / GroupNorm gains
                p.copy_(normal(shape, 0.2, mean=1.0))
            elif "layer_norm" in name and name.endswith("bias"):
                # small: large per-channel constants would swamp the time-varying part of the features
                p.copy_(normal(shape, 0.03))
            elif "attention.out_proj" in name and name.endswith("weight"):
                # attention of random weights averages over time; at full scale, 12 layers of it wash out
                # the frame-to-frame variation (std over time falls to ~1% of the total at layer 12)
                p.copy_(normal(shape, 0.3 / math.sqrt(shape[1])))
            elif name.endswith("weight") and len(shape) == 2:  # Linear
                p.copy_(normal(shape, 1.0 / math.sqrt(shape[1])))
            elif name.endswith("bias"):
                p.copy_(normal(shape, 0.1))
            elif name == "masked_spec_embed":
                p.copy_(torch.rand(shape, generator=g))
            else:
                raise AssertionError(f"unhandled reference parameter {name} {shape}")


def build_transformers_hubert(seed: int = SEED):
    """Return ``(HubertModel, final_proj)`` in eval mode with seeded random weights."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    config = HubertConfig()
    model = HubertModel(config).eval()
    final_proj = torch.nn.Linear(config.hidden_size, config.classifier_proj_size).eval()
    _randomize(model, final_proj, seed)
    return model, final_proj


def hf_state_dict(model, final_proj) -> dict[str, torch.Tensor]:
    """The transformers state dict (``parametrizations`` weight norm) plus ``final_proj.*`` (ContentVec style)."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k, v in final_proj.state_dict().items():
        state["final_proj." + k] = v.detach().clone().contiguous()
    return state


def legacy_weight_norm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``parametrizations.weight.original0/1`` -> ``weight_g/weight_v`` (older transformers checkpoints)."""
    out = {}
    for k, v in state.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        k = k.replace(".parametrizations.weight.original1", ".weight_v")
        out[k] = v
    return out


def fairseq_state_dict(state: dict[str, torch.Tensor], seed: int = SEED) -> dict[str, torch.Tensor]:
    """The same weights under fairseq ``HubertModel`` names, plus fairseq's training-only tensors."""
    out = {}
    for k, v in legacy_weight_norm_names(state).items():
        n = k
        if n.startswith("feature_extractor.conv_layers."):
            n = n.replace(".conv.weight", ".0.weight").replace(".layer_norm.", ".2.")
        elif n.startswith("feature_projection.layer_norm."):
            n = n.replace("feature_projection.layer_norm.", "layer_norm.")
        elif n.startswith("feature_projection.projection."):
            n = n.replace("feature_projection.projection.", "post_extract_proj.")
        elif n.startswith("encoder.pos_conv_embed.conv."):
            n = n.replace("encoder.pos_conv_embed.conv.", "encoder.pos_conv.0.")
        elif n.startswith("encoder.layers."):
            n = (
                n.replace(".attention.", ".self_attn.")
                .replace(".layer_norm.", ".self_attn_layer_norm.")
                .replace(".feed_forward.intermediate_dense.", ".fc1.")
                .replace(".feed_forward.output_dense.", ".fc2.")
            )
        elif n == "masked_spec_embed":
            n = "mask_emb"
        out[n] = v
    g = torch.Generator().manual_seed(seed + 1)
    out["label_embs_concat"] = torch.randn((N_LABELS, FINAL_PROJ_DIM), generator=g)
    return out


def fairseq_cfg():
    """A fairseq-style hydra config (omegaconf DictConfig) like the one inside ``hubert_base.pt``."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "_name": None,
            "common": {"fp16": True, "seed": 1337},
            "model": {
                "_name": "hubert",
                "label_rate": 50,
                "extractor_mode": "default",
                "encoder_layers": N_LAYERS,
                "encoder_embed_dim": HIDDEN,
                "encoder_ffn_embed_dim": 3072,
                "encoder_attention_heads": 12,
                "activation_fn": "gelu",
                "layer_norm_first": False,
                "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
                "conv_bias": False,
                "conv_pos": 128,
                "conv_pos_groups": 16,
                "final_dim": FINAL_PROJ_DIM,
                "logit_temp": 0.1,
            },
            "task": {"_name": "hubert_pretraining", "sample_rate": SAMPLE_RATE, "normalize": False, "labels": ["km"]},
        }
    )


def _build(cache: Path) -> None:
    from safetensors.torch import save_file

    model, final_proj = build_transformers_hubert()
    state = hf_state_dict(model, final_proj)

    st_dir = cache / HF_ST_DIR
    bin_dir = cache / HF_BIN_DIR
    for d in (st_dir, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
        model.config.to_json_file(str(d / "config.json"))
    save_file(state, str(st_dir / "model.safetensors"))
    torch.save(legacy_weight_norm_names(state), str(bin_dir / "pytorch_model.bin"))
    torch.save(
        {
            "args": None,
            "cfg": fairseq_cfg(),
            "model": fairseq_state_dict(state),
            "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 0}],
            "extra_state": {"epoch": 1},
        },
        str(cache / FAIRSEQ_FILE),
    )


def ensure_reference(cache: Path) -> Path:
    """Build (once) and return the cache directory holding the three reference checkpoints."""
    cache = Path(cache)
    mark = cache / BUILD_MARK
    if not mark.exists():
        _build(cache)
        mark.write_text(json.dumps({"seed": SEED}))
    return cache


def load_reference_model(cache: Path):
    """``(HubertModel, final_proj)`` rebuilt from the cached safetensors directory (identical weights)."""
    from safetensors.torch import load_file
    from transformers import HubertConfig, HubertModel

    st_dir = Path(cache) / HF_ST_DIR
    config = HubertConfig.from_json_file(str(st_dir / "config.json"))
    model = HubertModel(config).eval()
    final_proj = torch.nn.Linear(config.hidden_size, config.classifier_proj_size).eval()
    state = load_file(str(st_dir / "model.safetensors"))
    fp = {k[len("final_proj.") :]: state.pop(k) for k in list(state) if k.startswith("final_proj.")}
    model.load_state_dict(state, strict=True)
    final_proj.load_state_dict(fp, strict=True)
    return model, final_proj


def speech_like(n_samples: int, seed: int = 0) -> np.ndarray:
    """A deterministic voiced/unvoiced test signal at 16 kHz: gliding harmonics with formant-like weights,
    syllable-rate amplitude modulation, and noise bursts. float32, peak ~0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SAMPLE_RATE
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t) + 15.0 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(h * phase) / h * (1.0 + 0.8 * np.cos(2 * np.pi * h * 0.05)) for h in range(1, 25))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + 0.3) ** 2
    noise_gate = (np.sin(2 * np.pi * 1.3 * t) > 0.7).astype(np.float64)
    x = envelope * voiced * (1 - noise_gate) + noise_gate * rng.standard_normal(n_samples) * 0.3
    x += 0.01 * rng.standard_normal(n_samples)
    return (0.5 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


@torch.no_grad()
def reference_outputs(model, final_proj, audio: np.ndarray) -> dict[str, np.ndarray]:
    """transformers outputs for one utterance (RVC semantics: no attention mask, i.e. fairseq's all-False
    padding mask). ``hidden_states[i]`` is the output of encoder layer ``i`` (post-LN), which is what fairseq's
    ``extract_features(output_layer=i)`` returns. Returns (T, C) float32 arrays."""
    x = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None]
    out = model(x, output_hidden_states=True)
    hs = out.hidden_states
    return {
        "layer9": hs[9][0].numpy(),
        "final_proj9": final_proj(hs[9])[0].numpy(),
        "layer12": hs[12][0].numpy(),
        "last": out.last_hidden_state[0].numpy(),
    }
