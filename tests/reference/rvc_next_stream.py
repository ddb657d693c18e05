"""Test-only: rvc-next 0.2.16's realtime ``StreamEngine`` (the streaming reference) on our random-weight models.

rvc-next (GPL-3.0, installed ``--no-deps`` by scripts/setup-dev, never vendored) ports RVC's realtime GUI
(``infer/rtrvc.py`` + ``realtime_gui.py``) to one class, ``rvc_next.engine.stream.engine.StreamEngine``: one
block in at the device rate, one block out. Our MLX streaming engine is compared with it block by block.

Recipe (:func:`reference_engine`):

1. :func:`assets_dir` lays out rvc-next's ``assets/`` under the test cache (``<cache>/rvc-next-assets``), as
   symlinks to the models the rest of the suite already builds, so both sides load identical weights:

   ============================  =================================================  =============================
   rvc-next asset                what it links to                                   our side loads
   ============================  =================================================  =============================
   ``hubert_base/``              the transformers HuBERT folder                     ``models.hubert_path``
                                 (``hubert_models.HF_ST_DIR``, random weights +     (converted from the same
                                 ``final_proj``; no ``preprocessor_config.json``,   weights' fairseq file)
                                 so rvc-next does not normalise the audio)
   ``rmvpe/rmvpe.pt``            ``models.rmvpe_pt`` (random-weight, fp16)          ``models.rmvpe_path``
   ``fcpe/fcpe_c_v001.pt``       torchfcpe 0.0.4's bundled checkpoint (real         the same file: pass
                                 weights; rvc-next's ported FCPE reads exactly      ``fcpe=str(fcpe_weights())``
                                 that format; it is what our FCPE tests use too)    (a ``.pt`` is converted on load)
   voice ``.pth``                ``rvc_models.checkpoint_path(cache, variant)``     ``models.voice(name)[0]``
   ============================  =================================================  =============================

2. ``Runtime(assets, device="cpu", precision="fp32")`` (one per assets dir, cached here: HuBERT, the pitch
   models and voices are loaded once per session) builds the voice with rvc-next's own synthesizer
   (``engine/models/synthesizer.py``); ``StreamEngine`` folds its weight norm, as the original realtime loader.

3. Noise. The only random calls on rvc-next's inference path are those of its synthesizer: ``torch.randn_like``
   for the prior ``z_p = m_p + exp(logs_p)·ε·0.66666`` and for the NSF SineGen's additive noise, and
   ``torch.rand`` for SineGen's initial phase ``rand_ini``. With ``deterministic=True`` (the default) the
   engine's ``process`` runs inside :func:`zero_noise` (= ``rvc_models.deterministic``: both return zeros),
   so two fresh engines fed the same blocks give bit-identical output (checked by :func:`check_noise_zeroing`;
   with ``deterministic=False`` they differ). Nothing else in ``process`` (HuBERT in eval mode, RMVPE, FCPE,
   the sinc resamplers, SOLA) draws random numbers.

Measured equal (bit for bit on CPU): rvc-next's RMVPE ``infer_from_audio(x, thred=0.03)`` and rvc==0.3.5's; its
FCPE and torchfcpe's ``infer(x, sr=16000, decoder_mode="local_argmax", threshold=0.006)``; its
``extract_features(hubert, x, version)`` and transformers ``hidden_states[9]`` + ``final_proj`` (v1) /
``hidden_states[12]`` (v2) of the same folder.

torch's thread count is left as the rest of tests/reference leaves it (unset: torch's default).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import hubert_models, rmvpe_models, rvc_models

ASSETS_DIR = "rvc-next-assets"
_RUNTIMES: dict[str, object] = {}


def _link(dst: Path, src: Path) -> None:
    """``dst`` -> ``src`` (absolute symlink), replaced when it points elsewhere."""
    src = Path(src).resolve()
    if dst.is_symlink() and Path(os.readlink(dst)) == src:
        return
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())


def fcpe_weights() -> Path:
    """torchfcpe's bundled ``fcpe_c_v001.pt``: rvc-next's ``fcpe`` asset and our default FCPE source."""
    from rvc_mlx.convert.crepe import find_packaged_weights

    return find_packaged_weights("fcpe")


def assets_dir(models) -> Path:
    """rvc-next's ``assets/`` layout under the test cache, linked to the suite's models (see module doc)."""
    root = Path(models.cache) / ASSETS_DIR
    hub = hubert_models.ensure_reference(Path(models.cache) / "hubert") / hubert_models.HF_ST_DIR
    _link(root / "hubert_base", hub)
    _link(root / "rmvpe" / "rmvpe.pt", models.rmvpe_pt)
    _link(root / "fcpe" / "fcpe_c_v001.pt", fcpe_weights())
    return root


def runtime(models):
    """rvc-next's ``Runtime`` (CPU, fp32) on :func:`assets_dir`, one per assets dir."""
    from rvc_next.engine.runtime import Runtime

    root = assets_dir(models)
    key = str(root)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Runtime(root, device="cpu", precision="fp32", max_voices=12)
    return _RUNTIMES[key]


def voice_pth(models, voice: str) -> Path:
    """The RVC-Project ``.pth`` of variant ``voice`` (e.g. "v2-40k-f0"), as our converted voice's source."""
    variant = next((v for v in rvc_models.VARIANTS if v.name == voice), None)
    if variant is None:
        raise ValueError(f"rvc-next reference: unknown voice {voice!r}; one of {[v.name for v in rvc_models.VARIANTS]}")
    return rvc_models.checkpoint_path(models.cache, variant)


def zero_noise():
    """A context in which rvc-next's synthesizer draws no noise (``torch.randn_like``/``torch.rand`` -> 0)."""
    return rvc_models.deterministic()


def _run_without_noise(engine) -> None:
    """Every block of ``engine`` (``process`` and ``prewarm`` both go through ``_process``) without noise."""
    step = engine._process

    def process_without_noise(block: np.ndarray) -> np.ndarray:
        with zero_noise():
            return step(block)

    engine._process = process_without_noise


def reference_engine(models, voice: str, *, f0_method: str = "rmvpe", sample_rate: int = 48000, block_ms: int = 250,
                     crossfade_ms: int = 50, context_ms: int = 2500, threshold_db: float = -60.0, pitch: float = 0.0,
                     index_path=None, index_rate: float = 0.0, rms_mix_rate: float = 0.0,
                     unvoiced: str = "original", phase_vocoder: bool = False, protect: float = 0.33,
                     speaker_id: int = 0, deterministic: bool = True):
    """A fresh rvc-next ``StreamEngine`` for our random-weight voice ``voice`` (a ``rvc_models.VARIANTS`` name).

    ``f0_method``: "rmvpe" | "fcpe" | "pm" (also "crepe"/"crepe-tiny"/"swift" if their assets existed).
    ``index_path``: a faiss index (e.g. ``models.index(768)``), used with ``index_rate``. Input/output denoise
    and formant are off (the GUI defaults); ``unvoiced="original"`` interpolates unvoiced f0 (RVC main).
    With ``deterministic`` (default) all synthesizer noise is zeroed for every ``process`` call.

    The engine: ``.process(block)`` (float32 mono, ``.block_size`` samples at ``sample_rate``) -> ``.block_size``
    samples; ``.skip_head``, ``.return_length`` (10 ms frames), ``.sola.last_offset``, ``.cache_pitch`` /
    ``.cache_pitchf`` (1024-frame torch caches), ``.tgt_sr``, ``.extra_frame``, ``.crossfade_frame``,
    ``.sola_buffer_frame``, ``.sola_search_frame``, ``.input_wav`` / ``.input_wav_res`` (rolling buffers).
    """
    from rvc_next.engine.convert.params import VoiceParams
    from rvc_next.engine.stream.engine import StreamEngine
    from rvc_next.engine.stream.params import StreamParams

    rt = runtime(models)
    loaded = rt.voice(voice_pth(models, voice))
    index = rt.index(index_path) if index_path is not None else None
    params = VoiceParams(speaker_id=speaker_id, pitch=pitch, formant=0.0, f0_method=f0_method, index_rate=index_rate,
                         protect=protect, rms_mix_rate=rms_mix_rate, unvoiced=unvoiced)
    stream = StreamParams(block_ms=block_ms, crossfade_ms=crossfade_ms, context_ms=context_ms,
                          threshold_db=threshold_db, phase_vocoder=phase_vocoder)
    engine = StreamEngine(rt, loaded, params, stream, sample_rate=sample_rate, index=index)
    if deterministic:
        _run_without_noise(engine)
    return engine


def check_noise_zeroing(models, voice: str = "v2-40k-f0", n_blocks: int = 3, seed: int = 0, **kw) -> tuple[bool, bool]:
    """(zeroed runs bit-identical, noisy runs differ) for two fresh engines fed the same blocks."""

    def run(deterministic: bool) -> np.ndarray:
        eng = reference_engine(models, voice, deterministic=deterministic, **kw)
        audio = rmvpe_models.speech_like(n_blocks * eng.block_size / eng.sample_rate + 0.1, seed=seed,
                                         sr=eng.sample_rate)
        n = eng.block_size
        return np.concatenate([eng.process(audio[i * n:(i + 1) * n]) for i in range(n_blocks)])

    zero_a, zero_b = run(True), run(True)
    noisy_a, noisy_b = run(False), run(False)
    return bool(np.array_equal(zero_a, zero_b)), not np.array_equal(noisy_a, noisy_b)
