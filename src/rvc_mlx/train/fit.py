"""The RVC GAN training step (and loop) in MLX.

One step, as the reference's ``train_and_evaluate``:

1. the generator's forward gives ``y_hat`` (a random segment per item) and the latents;
2. the discriminator is updated on ``(y, stop_gradient(y_hat))`` with its LSGAN loss;
3. the *updated* discriminator scores ``(y, y_hat)`` again and the generator is updated on
   ``mel L1·45 + KL + feature matching·2 + LSGAN``.

MLX keeps no graph between calls, so step 3 repeats the generator's forward inside the differentiated function
(with the same noise and segments: identical values). Optimiser: AdamW (lr 1e-4, betas 0.8/0.99, eps 1e-9,
torch's default weight decay 0.01, bias-corrected), learning rate × 0.999875 per epoch, float32, no gradient
clipping (the reference only measures the norm).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from ..atomic import atomic_write
from ..backend import enabled, set_enabled
from ..errors import InputError
from ..nn.conv import training_convs
from . import losses as L
from . import plots
from .data import BUCKET_BOUNDARIES, TrainingSet, collate, epoch_batches
from .nets import Batch, MultiPeriodDiscriminator, TrainingSynthesizer, TrainNoise, load_params, slice_segments
from .pretrained import check_params

NON_DIFFERENTIABLE_FAST_PATHS = ("exp",)  # NumPy-evaluated exp/tanh/sigmoid would cut the gradient


@dataclass(frozen=True)
class OptimConfig:
    """RVC's ``train`` section."""

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    weight_decay: float = 0.01  # torch.optim.AdamW's default (RVC does not set it)
    lr_decay: float = 0.999875  # per epoch
    c_mel: float = L.C_MEL
    c_kl: float = L.C_KL


@contextlib.contextmanager
def training_mode():
    """Fast paths whose results carry no gradient off, convs in their training form (``nn.conv.training_convs``)."""
    saved = {name: enabled(name) for name in NON_DIFFERENTIABLE_FAST_PATHS}
    for name in saved:
        set_enabled(name, False)
    try:
        with training_convs():
            yield
    finally:
        for name, on in saved.items():
            set_enabled(name, on)


def adamw(cfg: OptimConfig) -> optim.AdamW:
    return optim.AdamW(learning_rate=cfg.learning_rate, betas=list(cfg.betas), eps=cfg.eps,
                       weight_decay=cfg.weight_decay, bias_correction=True)


def grad_norms(grads: dict[str, mx.array], depth: int = 1) -> dict[str, float]:
    """L2 norm of the gradients per top-level module (the first ``depth`` name parts) and ``total``.

    Sums of squares are taken in float64: MLX's CPU float32 sum accumulates sequentially, which is 0.7 % off for a
    5 M-element gradient (measured on the scale discriminator's last conv)."""
    sums: dict[str, float] = {}
    with mx.stream(mx.cpu):  # float64 lives on the CPU stream
        for name, g in grads.items():
            key = ".".join(name.split(".")[:depth])
            sums[key] = sums.get(key, 0.0) + float(mx.sum(mx.square(g.astype(mx.float64))))
    out = {k: math.sqrt(v) for k, v in sums.items()}
    out["total"] = math.sqrt(sum(sums.values()))
    return out


@dataclass
class StepResult:
    """Loss terms (floats) and gradient norms of one step (the gradients themselves on request)."""

    losses: dict[str, float]
    grad_norm_g: dict[str, float]
    grad_norm_d: dict[str, float]
    starts: list[int] = field(default_factory=list)
    grads_g: dict[str, mx.array] | None = None
    grads_d: dict[str, mx.array] | None = None
    mels: tuple[mx.array, mx.array] | None = None  # log mel of the first item's segment: real, generated


class Trainer:
    """Holds the two networks, their training parameters (weight norm as ``g``/``v``) and optimisers.

    ``params_g``/``params_d``: flat ``{name: array}`` from :func:`nets.training_params`."""

    def __init__(self, net_g: TrainingSynthesizer, net_d: MultiPeriodDiscriminator, params_g: dict, params_d: dict,
                 spec: L.SpectrogramConfig, cfg: OptimConfig = OptimConfig()):
        self.net_g, self.net_d = net_g, net_d
        self.params_g, self.params_d = dict(params_g), dict(params_d)
        self.spec, self.cfg = spec, cfg
        self.basis = spec.mel_basis()
        self.opt_g, self.opt_d = adamw(cfg), adamw(cfg)

    def set_epoch(self, epoch: int) -> None:
        """Learning rate of (1-based) ``epoch``: ``lr · decay^(epoch − 1)``, as the reference's ExponentialLR."""
        lr = self.cfg.learning_rate * self.cfg.lr_decay ** (epoch - 1)
        self.opt_g.learning_rate = lr
        self.opt_d.learning_rate = lr

    def _real(self, batch: Batch, starts: mx.array) -> tuple[mx.array, mx.array]:
        """The real audio segment ``(B, L, 1)`` and its log mel ``(B, segment, n_mels)`` (from the batch's spec)."""
        seg = self.net_g.segment_frames
        wave = slice_segments(batch.wave[..., None], starts * self.spec.hop, seg * self.spec.hop)
        mel = L.spec_to_mel(slice_segments(batch.spec, starts, seg), self.basis)
        return wave, mel

    def step(self, batch: Batch, noise: TrainNoise, keep_grads: bool = False, between=None) -> StepResult:
        """One discriminator and one generator update on ``batch`` with the given random inputs.

        ``between(trainer)``, if given, runs after the discriminator's update (tests use it to line up both
        sides' discriminators before comparing the generator's step)."""
        with training_mode():
            d = self.update_discriminator(batch, noise)
            if between is not None:
                between(self)
            g = self.update_generator(batch, noise)
        losses = {"disc": d["loss"], **g["losses"]}
        starts = [int(s) for s in noise.starts.tolist()]
        kept = (g["grads"], d["grads"]) if keep_grads else (None, None)
        return StepResult(losses, g["norms"], d["norms"], starts, *kept, mels=g["mels"])

    def update_discriminator(self, batch: Batch, noise: TrainNoise) -> dict:
        """The discriminator's LSGAN update on ``(y, stop_gradient(y_hat))``. Call within ``training_mode``."""
        wave, _ = self._real(batch, noise.starts)
        load_params(self.net_g, self.params_g)
        y_hat = mx.stop_gradient(self.net_g.forward_train(batch, noise)["y_hat"])

        def d_loss(params_d):
            load_params(self.net_d, params_d)
            d_r, d_g, _, _ = self.net_d(wave, y_hat)
            return L.discriminator_loss(d_r, d_g)[0]

        loss, grads = mx.value_and_grad(d_loss)(self.params_d)
        norms = grad_norms(grads, depth=2)
        self.params_d = self.opt_d.apply_gradients(grads, self.params_d)
        mx.eval(self.params_d, self.opt_d.state)
        return {"loss": float(loss), "norms": norms, "grads": grads}

    def update_generator(self, batch: Batch, noise: TrainNoise) -> dict:
        """The generator's update against the current discriminator. Call within ``training_mode``."""
        wave, y_mel = self._real(batch, noise.starts)
        load_params(self.net_d, self.params_d)

        def g_loss(params_g):
            load_params(self.net_g, params_g)
            out = self.net_g.forward_train(batch, noise)
            y_hat_mel = L.mel_spectrogram(out["y_hat"][..., 0], self.spec, self.basis)
            _, d_g, f_r, f_g = self.net_d(wave, out["y_hat"])
            terms = {
                "mel": mx.mean(mx.abs(y_mel - y_hat_mel)) * self.cfg.c_mel,
                "kl": L.kl_loss(out["z_p"], out["logs_q"], out["m_p"], out["logs_p"], out["y_mask"]) * self.cfg.c_kl,
                "fm": L.feature_loss(f_r, f_g),
                "gen": L.generator_loss(d_g)[0],
            }
            return sum(terms.values()), (terms, y_hat_mel[0])

        (loss, (terms, mel_0)), grads = mx.value_and_grad(g_loss)(self.params_g)
        norms = grad_norms(grads)
        self.params_g = self.opt_g.apply_gradients(grads, self.params_g)
        mx.eval(self.params_g, self.opt_g.state)
        losses = {"gen_all": float(loss), **{k: float(v) for k, v in terms.items()}}
        return {"losses": losses, "norms": norms, "grads": grads, "mels": (y_mel[0], mel_0)}


# -- the loop ------------------------------------------------------------------------------------------------

# hps.train.segment_size (samples) of RVC's configs; the decoder trains on segment_size // hop frames
SEGMENT_SAMPLES = {("v1", 32000): 12800, ("v2", 32000): 12800, ("v1", 40000): 12800, ("v2", 40000): 12800,
                   ("v1", 48000): 11520, ("v2", 48000): 17280}
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "rvc-mlx-train"


@dataclass
class FitConfig:
    """What to train and how long. ``segment_frames`` None: RVC's segment for the version and rate."""

    epochs: int
    batch_size: int = 4
    save_every: int = 5  # epochs between checkpoints (and at the last epoch)
    keep: int = 2  # checkpoints kept
    seed: int = 1234
    segment_frames: int | None = None
    plots: bool = True  # the loss log, loss curves and a mel picture per epoch (train/plots.py)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class FitReport:
    epochs: int  # last finished epoch
    steps: int
    resumed_from: str | None
    losses: list[dict] = field(default_factory=list)  # per step: epoch, step and the loss terms
    checkpoint: str | None = None


def _flat_state(state: dict, prefix: str) -> dict[str, mx.array]:
    """An optimiser state ``{"step": a, "learning_rate": a, name: {"m": a, "v": a}}`` -> flat arrays."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update({f"{prefix}{key}|{sub}": v for sub, v in value.items()})
        else:
            out[f"{prefix}|{key}"] = value
    return out


def _unflat_state(arrays: dict[str, mx.array], prefix: str) -> dict:
    state: dict = {}
    for name, value in arrays.items():
        if not name.startswith(prefix):
            continue
        key, _, sub = name[len(prefix):].rpartition("|")
        if key:
            state.setdefault(key, {})[sub] = value
        else:
            state[sub] = value
    return state


def save_checkpoint(exp_dir: str | os.PathLike, trainer: Trainer, epoch: int, step: int, keep: int,
                    meta: dict) -> Path:
    """Write ``checkpoints/{step:08d}.safetensors`` (both networks' training parameters and optimiser states;
    epoch, step and ``meta`` in the header) atomically, and drop all but the newest ``keep``."""
    folder = Path(exp_dir) / CHECKPOINT_DIR
    arrays = {**{f"g/{k}": v for k, v in trainer.params_g.items()}, **{f"d/{k}": v for k, v in trainer.params_d.items()},
              **_flat_state(trainer.opt_g.state, "opt_g/"), **_flat_state(trainer.opt_d.state, "opt_d/")}
    header = {"format": CHECKPOINT_FORMAT, "meta": json.dumps({**meta, "epoch": epoch, "step": step})}
    path = folder / f"{step:08d}.safetensors"
    atomic_write(path, lambda tmp: mx.save_safetensors(tmp, arrays, metadata=header))
    for old in sorted(folder.glob("[0-9]*.safetensors"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(exp_dir: str | os.PathLike) -> Path | None:
    found = sorted((Path(exp_dir) / CHECKPOINT_DIR).glob("[0-9]*.safetensors"))
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, trainer: Trainer) -> dict:
    """Restore a checkpoint into ``trainer`` (strict: names and shapes must be the model's). Returns its meta."""
    try:
        arrays, header = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise InputError(f"{path}: cannot read the checkpoint ({e})") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not an rvc-mlx training checkpoint")
    params_g = {k[2:]: v for k, v in arrays.items() if k.startswith("g/")}
    params_d = {k[2:]: v for k, v in arrays.items() if k.startswith("d/")}
    check_params(trainer.params_g, params_g, f"{path} (generator)")
    check_params(trainer.params_d, params_d, f"{path} (discriminator)")
    trainer.params_g, trainer.params_d = params_g, params_d
    trainer.opt_g.state = _unflat_state(arrays, "opt_g/")
    trainer.opt_d.state = _unflat_state(arrays, "opt_d/")
    return json.loads(header["meta"])


def step_key(seed: int, step: int) -> mx.array:
    """The PRNG key of (1-based) ``step``: a function of the seed and the step alone, so resuming is exact."""
    return mx.random.key(((seed & 0xFFFFFFFF) << 32) | (step & 0xFFFFFFFF))


def fit(exp_dir: str | os.PathLike, trainer: Trainer, data: TrainingSet, cfg: FitConfig, *, meta: dict | None = None,
        resume: bool = True, progress=None) -> FitReport:
    """Train ``trainer`` on ``data`` for ``cfg.epochs`` epochs, checkpointing into ``exp_dir/checkpoints``.

    With ``resume`` the newest checkpoint is loaded first and training goes on from the epoch after it: the
    batches and random inputs of a step depend only on the seed, epoch and step, so an interrupted and resumed
    run ends with the weights of an uninterrupted one. ``progress(epoch, step, losses, done, total)`` after each
    step (``done`` of the epoch's ``total`` steps). A kill loses at most the steps since the last checkpoint.
    With ``cfg.plots`` the loss log, loss curves and a mel picture are written per epoch (train/plots.py)."""
    meta = dict(meta or {})
    n_speakers = trainer.net_g.config.n_speakers
    if max(data.sids) >= n_speakers:
        raise InputError(f"{data.exp}: speaker id {max(data.sids)} in the data; the model has {n_speakers} "
                         "speaker embeddings")
    start_epoch, step, resumed = 1, 0, None
    found = latest_checkpoint(exp_dir) if resume else None
    if found is not None:
        saved = load_checkpoint(found, trainer)
        start_epoch, step, resumed = int(saved["epoch"]) + 1, int(saved["step"]), str(found)
    history = plots.truncate_log(exp_dir, step) if cfg.plots else []  # a killed run's later steps are redone
    report = FitReport(epochs=start_epoch - 1, steps=step, resumed_from=resumed)
    lengths = data.lengths()
    for epoch in range(start_epoch, cfg.epochs + 1):
        trainer.set_epoch(epoch)
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        if not batches:
            raise InputError(f"{data.exp}: no segment is between {BUCKET_BOUNDARIES[0]} and "
                             f"{BUCKET_BOUNDARIES[-1]} frames long (RVC's length buckets)")
        first = len(report.losses)
        for k, indices in enumerate(batches):
            step += 1
            batch = collate([data.item(i) for i in indices], data.use_f0)
            noise = trainer.net_g.draw_noise(batch, step_key(cfg.seed, step))
            result = trainer.step(batch, noise)
            report.losses.append({"epoch": epoch, "step": step, **result.losses})
            if progress is not None:
                progress(epoch, step, result.losses, k + 1, len(batches))
        report.epochs, report.steps = epoch, step
        if cfg.plots:
            history += report.losses[first:]
            plots.append_log(exp_dir, report.losses[first:])
            plots.write_epoch(exp_dir, epoch, history, tuple(np.array(m) for m in result.mels))
        if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
            report.checkpoint = str(save_checkpoint(exp_dir, trainer, epoch, step, cfg.keep, meta))
    return report
