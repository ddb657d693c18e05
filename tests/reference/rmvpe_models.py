"""Reference RMVPE for parity tests: rvc==0.3.5's ``E2E(4, 1, (2, 2))`` with random weights, saved like the real
``rmvpe.pt`` (a bare state dict, float16 tensors; rvc's loader copies them into its float32 model).

A default-initialised E2E marks every frame voiced with an arbitrary pitch (DESIGN §6), so the weights are made
speech-like: BatchNorm running statistics are set from the activations of a speech-like signal (every layer then
sees normalised inputs, as in a trained network), BatchNorm affines, GRU and the final Linear are randomised, and
the Linear is scaled and shifted so the frame-wise maximum salience spreads widely around the 0.03 voicing
threshold: most frames are clearly voiced or unvoiced, with a clear argmax. Test-only code (uses torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

SEED = 1234
SR = 16000
THRESHOLD = 0.03
GRU_STD = 0.08  # larger makes the backward GRU chaotic: every frame then depends on the padding
PEAK_SPREAD = 1.5  # std of the per-frame max logit: wide around the threshold, rarely saturating
CALIBRATION_SECONDS = 8.0
BUILD_VERSION = 3  # bump when the construction changes (invalidates cached files)


def speech_like(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Deterministic speech-like test audio (float32, peak ~0.5): harmonic 'syllables' with gliding f0
    (90–320 Hz) and formant-like spectral tilt, separated by pauses, over a low noise floor."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    out = 0.003 * rng.standard_normal(n)
    pos = 0
    while pos < n:
        dur = int(sr * rng.uniform(0.12, 0.45))
        gap = int(sr * rng.uniform(0.03, 0.25))
        seg = slice(pos, min(pos + dur, n))
        m = seg.stop - seg.start
        if m > 0:
            f_start, f_end = rng.uniform(90, 320, size=2)
            f0 = np.linspace(f_start, f_end, m) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t[:m]))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            voice = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**1.2 for k in range(1, 16))
            env = np.sin(np.pi * np.linspace(0, 1, m)) ** 0.5
            out[seg] += 0.25 * env * voice
        pos += dur + gap
    return (0.5 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)


def _randomise(model, audio: np.ndarray, seed: int) -> None:
    from rvc.lib.rmvpe import MelSpectrogram

    g = torch.Generator().manual_seed(seed)
    mel_fn = MelSpectrogram(False, 128, SR, 1024, 160, None, 30, 8000)
    mel = mel_fn(torch.from_numpy(audio)[None], center=True)
    n = mel.shape[-1]
    mel = torch.nn.functional.pad(mel, (0, -n % 32))  # as RMVPE.mel2hidden
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.weight.copy_(0.6 + 0.8 * torch.rand(bn.weight.shape, generator=g))
            bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
        for p in model.fc[0].parameters():
            p.copy_(GRU_STD * torch.randn(p.shape, generator=g))
        model.cnn.weight.mul_(3.0)
        # running statistics = batch statistics of the speech-like input, layer by layer
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one pass sets running stats to the batch stats
        model.train()
        model(mel)
        model.eval()
        # scale/shift the output layer: per-frame max logit spread PEAK_SPREAD around logit(THRESHOLD)
        fc1 = model.fc[1]
        fc1.bias.copy_(0.5 * torch.randn(fc1.bias.shape, generator=g))
        hidden = model.fc[0](model.cnn(model.unet(mel.transpose(-1, -2).unsqueeze(1))).transpose(1, 2).flatten(-2))
        logits = fc1(hidden)[0, :n]
        peak = logits.max(dim=1).values
        scale = PEAK_SPREAD / float(peak.std())
        fc1.weight.mul_(scale)
        fc1.bias.mul_(scale)
        shift = float(np.log(THRESHOLD / (1 - THRESHOLD))) - float(peak.median()) * scale
        fc1.bias.add_(shift)
        for bn in bns:
            bn.momentum = 0.01


def build_rmvpe(path: Path, seed: int = SEED) -> Path:
    """Write a random-weight, speech-like ``rmvpe.pt`` (bare E2E state dict) to ``path``."""
    from rvc.lib.rmvpe import E2E

    torch.manual_seed(seed)
    model = E2E(4, 1, (2, 2))
    _randomise(model, speech_like(CALIBRATION_SECONDS, seed=seed + 1), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the released rmvpe.pt stores its ~90M parameters in float16 (181 MB); so does the reference
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def cached_rmvpe(cache_dir: Path) -> Path:
    """The reference ``rmvpe.pt`` under ``cache_dir`` (built on first use)."""
    path = Path(cache_dir) / f"rmvpe_ref_v{BUILD_VERSION}_s{SEED}" / "rmvpe.pt"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        build_rmvpe(tmp)
        tmp.replace(path)
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
