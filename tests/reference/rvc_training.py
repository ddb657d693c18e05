"""The reference training step and loop: rvc==0.3.5's networks (``SynthesizerTrnMs*NSFsid`` with enc_q,
``MultiPeriodDiscriminator[V2]``), losses and mel functions, composed in the order of RVC's ``train.py``
(discriminator update first, then the generator against the updated discriminator), AdamW as RVC builds it
(created once per run) and its per-epoch ``ExponentialLR``.

The random inputs (posterior ε, segment starts, NSF source noise) are injected so both sides use the same ones.
Test-only code.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np
import torch

from .rvc_models import Variant, coarse_pitch, config_list, model_class, randomize, train_config

HOPS = {32000: 320, 40000: 400, 48000: 480}
N_FFT = {32000: 1024, 40000: 2048, 48000: 2048}  # filter_length = win_length (rvc configs)
N_MELS = {32000: 80, 40000: 125, 48000: 128}
LEARNING_RATE, BETAS, ADAM_EPS, LR_DECAY = 1e-4, (0.8, 0.99), 1e-9, 0.999875  # hps.train
C_MEL, C_KL = 45, 1.0
# positions in the 18-item config list of the hps.model fields a tiny network changes, and of the segment size
CONFIG_INDEX = {"segment_frames": 1, "inter_channels": 2, "hidden_channels": 3, "filter_channels": 4,
                "n_heads": 5, "n_layers": 6, "upsample_initial_channel": 13, "spk_embed_dim": 15, "gin_channels": 16}
BASE_HZ, STEP_HZ, PITCHES = 120.0, 15.0, 5  # make_batch's fundamental: one of PITCHES bases by seed


def train_segment_frames(variant: Variant) -> int:
    """RVC's training segment in frames: ``hps.train.segment_size // hop`` of the variant's config (32 at 40k,
    40 at 32k, 24 for v1 48k, 36 for v2 48k). The exported config list's item 1 is a literal 32 instead."""
    return train_config(variant)["segment_size"] // HOPS[variant.sample_rate]


def training_config(variant: Variant) -> list:
    """The config list with the training segment in item 1, as ``train.py`` builds the generator."""
    cfg = list(config_list(variant))
    cfg[CONFIG_INDEX["segment_frames"]] = train_segment_frames(variant)
    return cfg


def small_config(variant: Variant, sizes: dict, segment_frames: int) -> list:
    """RVC's config list for the variant with the ``CONFIG_INDEX`` fields in ``sizes`` replaced (a tiny
    network) and the given training segment."""
    cfg = list(config_list(variant))
    for name, value in {**sizes, "segment_frames": segment_frames}.items():
        if name in CONFIG_INDEX:
            cfg[CONFIG_INDEX[name]] = value
    return cfg


def build_networks(variant: Variant, seed: int = 7, cfg: list | None = None):
    """Random-weight training generator (with enc_q; from ``cfg``, default ``training_config``) and
    discriminator, float32, train mode."""
    sys.argv = sys.argv[:1]
    from rvc.lib.infer_pack import models

    torch.manual_seed(seed)
    cfg = cfg or training_config(variant)
    cls = model_class(variant.version, variant.f0)
    net_g = cls(*cfg, is_half=False) if variant.f0 else cls(*cfg)
    randomize(net_g, seed)
    disc = models.MultiPeriodDiscriminatorV2 if variant.version == "v2" else models.MultiPeriodDiscriminator
    net_d = disc()
    return net_g.train(), net_d.train()


def make_batch(variant: Variant, lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A padded batch as RVC's collate builds it, from speech-like random audio: ``wave (B, T·hop)``,
    ``spec (B, n_fft/2+1, T)`` (the reference's spectrogram of each item at its own length, zero padded),
    ``phone (B, T, dim)``, ``pitch``/``pitchf`` ``(B, T)``, lengths, ``sid``. Harmonic audio with a 0.7 Hz
    vibrato around a fundamental that depends on ``seed`` (so batches of different seeds sound different)."""
    from rvc.lib.train.mel_processing import spectrogram_torch

    rng = np.random.default_rng(seed)
    sr = variant.sample_rate
    hop, n_fft = HOPS[sr], N_FFT[sr]
    t_max = max(lengths)
    b = len(lengths)
    wave = np.zeros((b, t_max * hop), np.float32)
    spec = np.zeros((b, n_fft // 2 + 1, t_max), np.float32)
    phone = np.zeros((b, t_max, variant.feature_dim), np.float32)
    pitchf = np.zeros((b, t_max), np.float32)
    for i, t in enumerate(lengths):
        n = t * hop
        k = np.arange(n) / sr
        f = BASE_HZ + STEP_HZ * (seed % PITCHES) + 60 * np.sin(2 * math.pi * 0.7 * k + i)
        ph = 2 * math.pi * np.cumsum(f) / sr
        x = 0.3 * np.sin(ph) + 0.1 * np.sin(2 * ph + 0.3) + 0.02 * rng.standard_normal(n)
        wave[i, :n] = x
        spec[i, :, :t] = spectrogram_torch(torch.from_numpy(wave[i : i + 1, :n]), n_fft, sr, hop, n_fft)[0].numpy()
        phone[i, :t] = rng.standard_normal((t, variant.feature_dim))
        f0 = 100 + 150 * rng.random(t)
        f0[rng.random(t) < 0.2] = 0.0  # unvoiced frames
        pitchf[i, :t] = f0
    pitch = coarse_pitch(pitchf)
    return {"wave": wave, "spec": spec, "phone": phone, "pitch": pitch, "pitchf": pitchf,
            "lengths": np.array(lengths, np.int64), "sid": np.arange(b, dtype=np.int64) % 3}


def make_noise(variant: Variant, batch: dict, inter: int = 192, seed: int = 1,
               segment: int | None = None) -> dict[str, np.ndarray]:
    """Posterior ε ``(B, inter, T)`` (torch layout), segment starts ``(B,)``, source noise ``(B, L, 1)``
    for a training segment of ``segment`` frames (default RVC's, ``train_segment_frames``)."""
    rng = np.random.default_rng(seed)
    b, _, t = batch["spec"].shape
    seg = segment or train_segment_frames(variant)
    starts = np.array([rng.integers(0, n - seg + 1) for n in batch["lengths"]], np.int64)
    return {"eps": rng.standard_normal((b, inter, t)).astype(np.float32), "starts": starts,
            "source": rng.standard_normal((b, seg * HOPS[variant.sample_rate], 1)).astype(np.float32)}


@contextlib.contextmanager
def injected(noise: dict, lengths: np.ndarray, segment: int):
    """``torch.randn_like`` returns the given ε / source noise (by shape), ``torch.rand([B])`` the fractions that
    make ``rand_slice_segments`` pick ``starts``; other ``torch.rand`` calls (SineGen's initial phase, which it
    zeroes for the fundamental) return zeros."""
    eps, source = torch.from_numpy(noise["eps"]), torch.from_numpy(noise["source"])
    frac = torch.from_numpy((noise["starts"] + 0.5) / (lengths - segment + 1)).float()
    real_randn_like, real_rand = torch.randn_like, torch.rand

    def randn_like(x, *a, **k):
        for candidate in (eps, source):
            if tuple(x.shape) == tuple(candidate.shape):
                return candidate.clone().to(x.dtype)
        raise AssertionError(f"unexpected randn_like{tuple(x.shape)}")

    def rand(*size, **k):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (list, tuple)) else tuple(size)
        return frac.clone() if shape == tuple(frac.shape) else torch.zeros(shape)

    torch.randn_like, torch.rand = randn_like, rand
    try:
        yield
    finally:
        torch.randn_like, torch.rand = real_randn_like, real_rand


def _norms(module: torch.nn.Module, depth: int) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        key = ".".join(name.split(".")[:depth])
        sums[key] = sums.get(key, 0.0) + float(p.grad.double().pow(2).sum())
    out = {k: math.sqrt(v) for k, v in sums.items()}
    out["total"] = math.sqrt(sum(sums.values()))
    return out


def adamw(module: torch.nn.Module, lr: float = LEARNING_RATE) -> torch.optim.AdamW:
    """The optimiser as RVC's train.py builds it (torch's default weight decay 0.01)."""
    return torch.optim.AdamW(module.parameters(), lr, betas=BETAS, eps=ADAM_EPS)


def reference_step(net_g, net_d, variant: Variant, batch: dict, noise: dict, lr: float = LEARNING_RATE) -> dict:
    """One RVC training step with fresh optimisers; returns the loss terms, gradient norms and gradients."""
    return train_step(net_g, net_d, adamw(net_g, lr), adamw(net_d, lr), variant, batch, noise, keep_grads=True)


def reference_loop(net_g, net_d, variant: Variant, batches: list[dict], noises: list[dict], steps_per_epoch: int,
                   lr: float = LEARNING_RATE) -> list[dict[str, float]]:
    """RVC's training loop over ``batches[i]`` with ``noises[i]`` (step i), one AdamW per network for the whole
    run, the learning rate × ``LR_DECAY`` after every ``steps_per_epoch`` steps. Returns each step's loss terms."""
    optim_g, optim_d = adamw(net_g, lr), adamw(net_d, lr)
    schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=LR_DECAY) for o in (optim_g, optim_d)]
    curve = []
    for step, (batch, noise) in enumerate(zip(batches, noises), 1):
        curve.append(train_step(net_g, net_d, optim_g, optim_d, variant, batch, noise)["losses"])
        if step % steps_per_epoch == 0:
            for scheduler in schedulers:
                scheduler.step()
    return curve


def train_step(net_g, net_d, optim_g, optim_d, variant: Variant, batch: dict, noise: dict,
               keep_grads: bool = False) -> dict:
    """One RVC step (discriminator, then generator) with the given optimisers; the training segment is
    ``net_g.segment_size`` frames. Returns the loss terms, gradient norms and (``keep_grads``) gradients."""
    from rvc.lib.infer_pack import commons
    from rvc.lib.train.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
    from rvc.lib.train import mel_processing
    from rvc.lib.train.mel_processing import mel_spectrogram_torch, spec_to_mel_torch

    # rvc caches its mel filters by fmax and dtype only (one rate per training process): drop another rate's
    mel_processing.mel_basis.clear()
    sr = variant.sample_rate
    hop, n_fft, n_mels = HOPS[sr], N_FFT[sr], N_MELS[sr]
    segment = net_g.segment_size
    seg_samples = segment * hop
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    lengths = t["lengths"]
    with injected(noise, batch["lengths"], segment):
        if variant.f0:
            out = net_g(t["phone"], lengths, t["pitch"], t["pitchf"], t["spec"], lengths, t["sid"])
        else:
            out = net_g(t["phone"], lengths, t["spec"], lengths, t["sid"])
    y_hat, ids_slice, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = out
    assert ids_slice.tolist() == noise["starts"].tolist()
    mel = spec_to_mel_torch(t["spec"], n_fft, n_mels, sr, 0.0, None)
    y_mel = commons.slice_segments(mel, ids_slice, segment)
    y_hat_mel = mel_spectrogram_torch(y_hat.float().squeeze(1), n_fft, n_mels, sr, hop, n_fft, 0.0, None)
    wave = commons.slice_segments(t["wave"][:, None], ids_slice * hop, seg_samples)

    y_d_hat_r, y_d_hat_g, _, _ = net_d(wave, y_hat.detach())
    loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
    optim_d.zero_grad()
    loss_disc.backward()
    norm_d = _norms(net_d, 2)
    grads_d = {k: p.grad.numpy().copy() for k, p in net_d.named_parameters()} if keep_grads else None
    optim_d.step()

    y_d_hat_r, y_d_hat_g, fmap_r, fmap_g = net_d(wave, y_hat)
    loss_mel = torch.nn.functional.l1_loss(y_mel, y_hat_mel) * C_MEL
    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * C_KL
    loss_fm = feature_loss(fmap_r, fmap_g)
    loss_gen, _ = generator_loss(y_d_hat_g)
    loss_gen_all = loss_gen + loss_fm + loss_mel + loss_kl
    optim_g.zero_grad()
    loss_gen_all.backward()
    norm_g = _norms(net_g, 1)
    grads_g = ({k: p.grad.numpy().copy() for k, p in net_g.named_parameters() if p.grad is not None}
               if keep_grads else None)
    optim_g.step()
    losses = {"disc": loss_disc, "gen_all": loss_gen_all, "mel": loss_mel, "kl": loss_kl, "fm": loss_fm,
              "gen": loss_gen}
    return {"losses": {k: float(v) for k, v in losses.items()}, "norm_g": norm_g, "norm_d": norm_d,
            "grads_g": grads_g, "grads_d": grads_d}
