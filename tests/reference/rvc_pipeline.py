"""Test-only: run rvc==0.3.5's ``Pipeline.pipeline`` (the reference) on our random-weight models.

The reference wants a fairseq HuBERT object (``extract_features(source, padding_mask, output_layer)`` and
``final_proj``); :class:`FairseqStyleHubert` gives transformers' ``HubertModel`` that interface (fairseq's
``output_layer=i`` is transformers' ``hidden_states[i]``). Noise is zeroed with ``rvc_models.deterministic``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import hubert_models, rmvpe_models, rvc_models

# Applio voices by name: (vocoder, sample rate); their net_g is Applio's Synthesizer (see applio_models).
APPLIO_VOICES = {"applio-mrf-40k": ("MRF HiFi-GAN", 40000), "applio-refinegan-32k": ("RefineGAN", 32000),
                 "applio-refinegan-24k": ("RefineGAN", 24000), "applio-mrf-48k": ("MRF HiFi-GAN", 48000)}

REFERENCE_CONFIG = SimpleNamespace(x_pad=1, x_query=6, x_center=38, x_max=41, is_half=False, device="cpu")
INDEX_SEED = 7


class FairseqStyleHubert(torch.nn.Module):
    def __init__(self, model, final_proj):
        super().__init__()
        self.model, self.final_proj = model, final_proj

    def extract_features(self, source, padding_mask=None, output_layer=None):
        hidden = self.model(source, output_hidden_states=True).hidden_states
        return hidden[output_layer if output_layer is not None else -1], None


class ReferenceModels:
    """Paths of our converted models and the matching torch reference objects, built once per session."""

    def __init__(self, cache: Path):
        from rvc_mlx import store
        from rvc_mlx.convert import convert_file

        self.cache = Path(cache)
        hub_dir = hubert_models.ensure_reference(self.cache / "hubert")
        self.hubert_ref = FairseqStyleHubert(*hubert_models.load_reference_model(hub_dir)).eval()
        self.rmvpe_pt = rmvpe_models.cached_rmvpe(self.cache)
        self.converted = self.cache / "converted"
        self.hubert_path = self._convert(hub_dir / hubert_models.FAIRSEQ_FILE, "hubert_base", store, convert_file)
        self.rmvpe_path = self._convert(self.rmvpe_pt, "rmvpe", store, convert_file)
        self._voices: dict[str, tuple[Path, torch.nn.Module, dict]] = {}

    def _convert(self, src: Path, name: str, store, convert_file) -> Path:
        out = self.converted / f"{name}-{rmvpe_models.file_digest(src)}.safetensors"
        if not out.exists():
            weights, config = convert_file(src)
            store.save(out, weights, config)
        return out

    def voice(self, name: str):
        """(converted path, torch reference net_g, torch checkpoint dict) for variant ``name`` e.g. "v2-40k-f0",
        or an Applio voice of ``APPLIO_VOICES``."""
        if name not in self._voices:
            from rvc_mlx import store
            from rvc_mlx.convert import convert_file

            if name in APPLIO_VOICES:
                from . import applio_models

                pth = applio_models.checkpoint_path(self.cache, *APPLIO_VOICES[name])
                ckpt = rvc_models.load_torch_checkpoint(pth)
                net_g = applio_models.reference_model(ckpt)
            else:
                variant = next(v for v in rvc_models.VARIANTS if v.name == name)
                pth = rvc_models.checkpoint_path(self.cache, variant)
                ckpt = rvc_models.load_torch_checkpoint(pth)
                net_g = rvc_models.reference_model(ckpt)
            out = self._convert(pth, f"voice-{name}", store, convert_file)
            self._voices[name] = (out, net_g, ckpt)
        return self._voices[name]

    def index(self, dim: int) -> Path:
        """A faiss IVF index (as RVC trains them) over HuBERT-like features of other audio, ``dim``-d."""
        import faiss

        path = self.cache / f"features-{dim}-s{INDEX_SEED}.index"
        if not path.exists():
            audio = hubert_models.speech_like(16000 * 12, seed=INDEX_SEED) * 0.8
            with torch.no_grad():
                src = torch.from_numpy(audio)[None]
                layer = 9 if dim == 256 else 12
                feats, _ = self.hubert_ref.extract_features(src, None, layer)
                if dim == 256:
                    feats = self.hubert_ref.final_proj(feats)
            vecs = feats[0].numpy().astype(np.float32)
            rng = np.random.default_rng(INDEX_SEED)
            vecs = vecs + 0.5 * vecs.std() * rng.standard_normal(vecs.shape).astype(np.float32)
            n_ivf = max(1, min(int(16 * np.sqrt(vecs.shape[0])), vecs.shape[0] // 39))
            index = faiss.index_factory(dim, f"IVF{n_ivf},Flat")
            index.train(vecs)
            index.add(vecs)
            faiss.extract_index_ivf(index).nprobe = 1
            tmp = path.with_suffix(".part")
            faiss.write_index(index, str(tmp))
            tmp.replace(path)
        return path


def reference_convert(models: ReferenceModels, voice: str, audio16k: np.ndarray, *, pitch=0, f0_method="pm",
                      index=None, index_rate=0.75, filter_radius=3, resample_sr=0, rms_mix_rate=0.25,
                      protect=0.33, sid=0, f0_file=None) -> tuple[np.ndarray, int]:
    """rvc==0.3.5 ``VC.vc_single`` + ``Pipeline.pipeline`` with zeroed noise. Returns (int16 audio, sample rate)."""
    from rvc.modules.vc.pipeline import Pipeline

    _, net_g, ckpt = models.voice(voice)
    tgt_sr = ckpt["config"][-1]
    os.environ["rmvpe_root"] = str(models.rmvpe_pt.parent)
    audio = np.asarray(audio16k, dtype=np.float32).copy()
    peak = np.abs(audio).max() / 0.95  # VC.vc_single
    if peak > 1:
        audio /= peak
    pipe = Pipeline(tgt_sr, REFERENCE_CONFIG)
    times = {"npy": 0, "f0": 0, "infer": 0}
    f0_obj = SimpleNamespace(name=str(f0_file)) if f0_file else None
    with rvc_models.deterministic():
        out = pipe.pipeline(
            models.hubert_ref, net_g, sid, audio, "input.wav", times, pitch, f0_method,
            str(index) if index else "", index_rate, ckpt.get("f0", 1), filter_radius, tgt_sr, resample_sr,
            rms_mix_rate, ckpt.get("version", "v1"), protect, f0_obj,
        )
    sr = resample_sr if tgt_sr != resample_sr >= 16000 else tgt_sr
    return out, sr
