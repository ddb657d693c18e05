"""Training curves: our loop against rvc==0.3.5's (tests/reference/rvc_training.py) over many steps, and exact
resume over a long run.

Both sides start from the same random-weight tiny generator (with enc_q; RVC's classes built from a tiny 18-item
config list) and RVC's discriminator, and see the same batches in the same order (``STEPS_PER_EPOCH`` fixed
batches per epoch) with the same injected noise per step; each keeps one AdamW per network for the whole run and
decays the learning rate per epoch.

A GAN is chaotic: fp32 rounding differences (summation order) grow step by step, so the curves cannot agree to
rounding for long. "Tracks" is measured: the per-term max relative gap over the raw per-step curves and over
the per-epoch means, with tolerances set from the measurement (see ``CURVE_RTOL``); seeded faults (the mel
weight, the learning rate) must exceed them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np
import pytest

from rvc_mlx.train import data as D
from rvc_mlx.train.fit import FitConfig, OptimConfig, fit
from rvc_mlx.train.session import new_trainer
from tests.reference import rvc_training as R
from tests.reference.rvc_models import Variant
from tests.test_train_fit import TINY, make_experiment, params_equal, settings
from tests.train_support import mlx_batch, mlx_noise, ours_trainer

VARIANT = Variant("v2", "40k", True)
SEGMENT = 8  # decoder frames per item (3200 samples): a fast step
LENGTHS = [24, 20]  # frames per item: a padded batch of two
STEPS_PER_EPOCH = 4  # the fixed batches, in this order every epoch
NET_SEED, NOISE_SEED = 7, 1000
TERMS = ("disc", "gen_all", "mel", "kl", "fm", "gen")
LONG, SHORT = 200, 4  # steps of the long and the short comparison (one epoch: the optimiser state carries)
# Max relative gaps (raw per step / per-epoch mean) measured at LONG steps: disc 0.45/0.22 (its loss falls from
# 8.9 to ~0.05, so the relative gap is of a small number: 0.04 absolute), gen_all 9.7e-4/2.0e-4, mel 4.3e-5/3.3e-5,
# kl 1.8e-5/6.1e-6, fm 1.3e-2/2.3e-3, gen 9.2e-3/8.3e-4; they grow with the steps (disc 1.5e-3 at 48 steps, 2.8e-2
# at 100), as rounding differences do in a chaotic system. Tolerances: about 2-4x the measurement. Re-run later
# (2026-12-04): disc 0.16/0.093, gen_all 7.4e-4/1.8e-4, mel 4.3e-5/3.8e-5, kl 1.4e-5/7.1e-6, fm 8.6e-3/2.1e-3,
# gen 4.6e-3/1.3e-3; faults: mel weight 40 moves mel by 0.11, learning rate x2 moves gen_all by 0.77.
CURVE_RTOL = {"disc": {"raw": 1.0, "epoch": 0.5}, "gen_all": {"raw": 3e-3, "epoch": 1e-3},
              "mel": {"raw": 2e-4, "epoch": 1e-4}, "kl": {"raw": 1e-4, "epoch": 3e-5},
              "fm": {"raw": 5e-2, "epoch": 1e-2}, "gen": {"raw": 3e-2, "epoch": 3e-3}}
SHORT_GAP = 1e-4  # every term, raw and per epoch, over SHORT steps (measured: <= 2.7e-6 over 4, 6.5e-6 over 8)
SHORT_RTOL = {t: {"raw": SHORT_GAP, "epoch": SHORT_GAP} for t in TERMS}


def _batches() -> list[dict]:
    """The tiny dataset: ``STEPS_PER_EPOCH`` batches of two speech-like items each (``make_batch``)."""
    return [R.make_batch(VARIANT, LENGTHS, seed=i) for i in range(STEPS_PER_EPOCH)]


def _schedule(steps: int) -> tuple[list[dict], list[dict]]:
    """Batch and injected noise of each step (the same batch order every epoch, fresh noise every step)."""
    data = _batches()
    batches = [data[s % STEPS_PER_EPOCH] for s in range(steps)]
    noises = [R.make_noise(VARIANT, b, TINY["inter_channels"], NOISE_SEED + s, SEGMENT) for s, b in enumerate(batches)]
    return batches, noises


def _networks():
    return R.build_networks(VARIANT, NET_SEED, R.small_config(VARIANT, TINY, SEGMENT))


@functools.lru_cache(maxsize=None)
def reference_curve(steps: int) -> tuple[dict, ...]:
    """The reference loop's loss terms per step."""
    net_g, net_d = _networks()
    return tuple(R.reference_loop(net_g, net_d, VARIANT, *_schedule(steps), STEPS_PER_EPOCH))


def our_curve(steps: int, optim: OptimConfig = OptimConfig()) -> list[dict]:
    """Our ``Trainer`` from the reference's initial weights over the same schedule (``set_epoch`` per epoch)."""
    net_g, net_d = _networks()
    trainer = ours_trainer(VARIANT, net_g, net_d, R.small_config(VARIANT, TINY, SEGMENT), optim)
    curve = []
    for s, (batch, noise) in enumerate(zip(*_schedule(steps))):
        if s % STEPS_PER_EPOCH == 0:
            trainer.set_epoch(s // STEPS_PER_EPOCH + 1)
        curve.append(trainer.step(mlx_batch(batch, VARIANT.f0), mlx_noise(noise)).losses)
    return curve


def _epoch_means(values: np.ndarray) -> np.ndarray:
    """``(steps,)`` -> ``(epochs,)`` mean per epoch."""
    return values.reshape(-1, STEPS_PER_EPOCH).mean(axis=1)


def curve_gaps(ref: list[dict], ours: list[dict]) -> dict[str, dict[str, float]]:
    """Per term: max relative gap over the raw per-step curves (``raw``) and over the per-epoch means
    (``epoch``): ``max |ours − ref| / |ref|``."""
    gaps = {}
    for term in TERMS:
        r = np.array([step[term] for step in ref], np.float64)
        o = np.array([step[term] for step in ours], np.float64)
        rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b)))  # noqa: E731
        gaps[term] = {"raw": rel(o, r), "epoch": rel(_epoch_means(o), _epoch_means(r))}
    return gaps


def _within(gaps: dict, tolerance: dict) -> bool:
    """Every term's raw and per-epoch gap within ``tolerance[term][kind]``."""
    return all(gaps[t][kind] <= limit for t in TERMS for kind, limit in tolerance[t].items())


def _show(label: str, gaps: dict) -> None:
    print(f"\n{label}: " + ", ".join(f"{t} raw {g['raw']:.2e} epoch {g['epoch']:.2e}" for t, g in gaps.items()))


@pytest.mark.slow
def test_long_run_loss_curves_track_rvc():
    gaps = curve_gaps(reference_curve(LONG), our_curve(LONG))
    _show(f"{LONG} steps", gaps)
    assert _within(gaps, CURVE_RTOL), gaps


@pytest.mark.slow  # measured 442 s on the shared 2-core machine (a tiny step costs RVC's full discriminator)
def test_short_run_loss_curves_track_rvc():
    gaps = curve_gaps(reference_curve(SHORT), our_curve(SHORT))
    _show(f"{SHORT} steps", gaps)
    assert _within(gaps, SHORT_RTOL), gaps


FAULTS = {"mel weight 40": OptimConfig(c_mel=40.0), "learning rate x2": OptimConfig(learning_rate=2e-4)}
FAULT_STEPS = 8  # two epochs


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_seeded_faults_leave_the_reference_curves(fault):
    """A fault must exceed the LONG-run tolerances. The gaps are maxima over the steps (and epochs) and the
    first steps of a LONG run are these, so exceeding them within ``FAULT_STEPS`` means failing the LONG test."""
    gaps = curve_gaps(reference_curve(FAULT_STEPS), our_curve(FAULT_STEPS, FAULTS[fault]))
    _show(f"{FAULT_STEPS} steps, {fault}", gaps)
    assert not _within(gaps, CURVE_RTOL)


RESUME_FRAMES = list(range(110, 190, 10))  # 8 items in one length bucket: 4 batches of 2 per epoch


@pytest.mark.slow
def test_resumed_long_run_ends_with_the_uninterrupted_weights(tmp_path):
    s = settings()

    def dataset(folder):
        if not folder.exists():
            make_experiment(folder, RESUME_FRAMES)
        return D.TrainingSet(folder, s.version, True, s.spectrogram())

    cfg = FitConfig(epochs=1, batch_size=2, seed=5)
    per_epoch = len(D.epoch_batches(dataset(tmp_path / "straight").lengths(), cfg.batch_size, cfg.seed, 1))
    half = math.ceil(LONG / 2 / per_epoch)  # epochs: a checkpoint at about step LONG / 2, the end at about LONG
    cfg = replace(cfg, epochs=2 * half, save_every=half)
    straight = new_trainer(s, seed=3)
    report = fit(tmp_path / "straight", straight, dataset(tmp_path / "straight"), cfg)
    assert report.steps >= LONG and all(np.isfinite(step["gen_all"]) for step in report.losses)
    first = fit(tmp_path / "split", new_trainer(s, seed=3), dataset(tmp_path / "split"), replace(cfg, epochs=half))
    again = new_trainer(s, seed=99)  # a fresh process would start from other weights: the checkpoint wins
    resumed = fit(tmp_path / "split", again, dataset(tmp_path / "split"), cfg)
    assert resumed.resumed_from.endswith(f"{first.steps:08d}.safetensors") and resumed.steps == report.steps
    assert params_equal(again.params_g, straight.params_g) == 0.0
    assert params_equal(again.params_d, straight.params_d) == 0.0
    assert [step["gen_all"] for step in resumed.losses] == [step["gen_all"] for step in report.losses[first.steps:]]
