"""``rvc-mlx train STEP EXP``: the training pipeline from the command line (a front end).

Steps: ``prepare`` (recordings -> segments), ``features`` (HuBERT + F0), ``index``, ``fit`` (the GAN loop),
``export`` (the voice as rvc-mlx ``.safetensors`` and RVC ``.pth``); ``all`` runs them in order. Every step
resumes: what is done is not redone. The run's model settings are kept in ``EXP/train.json`` by the first step
that is given them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from ..errors import InputError
from ..service.args import add_base_model_flags

BAR = 20  # characters of the fit step's progress bar
STEPS = ("all", "prepare", "features", "index", "fit", "export")


def _settings(args):
    from .session import RunSettings, load_settings, save_settings

    exp = Path(args.exp)
    saved = load_settings(exp)
    given = {k: v for k, v in (("version", args.version), ("sample_rate", args.sample_rate),
                               ("f0_method", args.f0_method)) if v is not None}
    if saved is None:
        s = RunSettings(name=args.name or exp.name, **given)
        s = replace(s, use_f0=s.f0_method != "none")
        save_settings(exp, s)
        return s
    differ = {k: (getattr(saved, k), v) for k, v in given.items() if getattr(saved, k) != v}
    if differ:
        raise InputError(f"{exp / 'train.json'}: this experiment was set up with "
                         + ", ".join(f"{k} {a!r} (not {b!r})" for k, (a, b) in differ.items())
                         + "; use a new experiment folder")
    return saved


def _progress(label: str):
    def show(done, total, name):
        print(f"\r{label}: {done}/{total} {name}".ljust(70), end="", file=sys.stderr, flush=True)
    return show


def run_step(step: str, args) -> None:
    s = _settings(args)
    exp = Path(args.exp)
    if step == "prepare":
        from .prepare import prepare

        if not args.dataset:
            raise InputError("train prepare needs --dataset FOLDER (the recordings)")
        report = prepare(args.dataset, exp, s.sample_rate, progress=_progress("prepare"))
        print(file=sys.stderr)
        print(report.summary())
        if len(report.speakers) > 1:
            print("  speakers: " + ", ".join(f"{sid} {name}" for name, sid in report.speakers.items()))
        for skip in report.skipped:
            print(f"  skipped {skip.source}: {skip.reason}{f' ({skip.detail})' if skip.detail else ''}")
    elif step == "features":
        from .features import extract_features

        report = extract_features(exp, args.hubert, s.version, f0_method=None if not s.use_f0 else s.f0_method,
                                  rmvpe_path=args.rmvpe, crepe_path=args.crepe, fcpe_path=args.fcpe,
                                  progress=_progress("features"))
        print(file=sys.stderr)
        print(report.summary())
    elif step == "index":
        from .index import build_index

        print(f"index: {build_index(exp, s.name, s.version)}")
    elif step == "fit":
        from . import plots
        from .data import TrainingSet
        from .fit import FitConfig, fit
        from .session import new_trainer

        trainer = new_trainer(s, pretrained_g=args.pretrained_g, pretrained_d=args.pretrained_d, seed=args.seed)
        data = TrainingSet(exp, s.version, s.use_f0, s.spectrogram(), sid=args.speaker)
        cfg = FitConfig(epochs=args.epochs, batch_size=args.batch_size, save_every=args.save_every, seed=args.seed)

        started = time.monotonic()
        steps_run = [0]

        def show(epoch, step_no, losses, done, total):
            steps_run[0] += 1
            per_step = (time.monotonic() - started) / steps_run[0]
            bar = "#" * (BAR * done // total)
            print(f"\repoch {epoch}/{args.epochs} [{bar:<{BAR}}] {done}/{total} {per_step:.1f} s/step | "
                  f"mel {losses['mel']:.3f} kl {losses['kl']:.3f} fm {losses['fm']:.3f} gen {losses['gen']:.3f} "
                  f"disc {losses['disc']:.3f}", end="", file=sys.stderr, flush=True)

        report = fit(exp, trainer, data, cfg, meta={"name": s.name}, progress=show)
        print(file=sys.stderr)
        print(f"fit: epoch {report.epochs}, step {report.steps}"
              + (f" (resumed from {report.resumed_from})" if report.resumed_from else "")
              + (f"; checkpoint {report.checkpoint}" if report.checkpoint else ""))
        if report.steps:
            print(f"  loss log {exp / plots.LOG_FILE}, curves {exp / plots.PLOTS_DIR / 'losses.svg'}, "
                  f"mel pictures {exp / plots.PLOTS_DIR}/mel_EPOCH.png")
    elif step == "export":
        from .fit import latest_checkpoint, load_checkpoint
        from .session import export_voice_files, new_trainer

        found = latest_checkpoint(exp)
        if found is None:
            raise InputError(f"{exp}: no training checkpoint yet (run train fit first)")
        trainer = new_trainer(s)
        meta = load_checkpoint(found, trainer)
        files = export_voice_files(trainer, s, args.output or exp, info=f"{meta['epoch']}epoch")
        print(f"export: {files['voice']} and {files['pth']} (epoch {meta['epoch']}, step {meta['step']})")


def cmd_train(args) -> int:
    steps = STEPS[1:] if args.step == "all" else (args.step,)
    for step in steps:
        run_step(step, args)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a voice: prepare, features, index, fit, export (or all)")
    p.add_argument("step", choices=STEPS, help="the step to run ('all': every step in order)")
    p.add_argument("exp", help="the experiment folder (RVC's layout; created if absent)")
    p.add_argument("--dataset", help="prepare: folder of recordings")
    p.add_argument("--name", help="the voice's name (default: the experiment folder's)")
    p.add_argument("--version", choices=("v1", "v2"), help="v1 (256-d features) or v2 (768-d) (default v2)")
    p.add_argument("--sample-rate", type=int, choices=(32000, 40000, 48000), help="model rate (default 40000)")
    p.add_argument("--f0-method", help="F0 for training data (default rmvpe; 'none' trains a pitchless voice)")
    add_base_model_flags(p)
    p.add_argument("--pretrained-g", help="fit: pretrained generator (RVC's f0G40k.pth etc.; default: scratch)")
    p.add_argument("--pretrained-d", help="fit: pretrained discriminator (RVC's f0D40k.pth etc.)")
    p.add_argument("--epochs", type=int, default=20, help="fit: total epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=4, help="fit: segments per step (default 4)")
    p.add_argument("--save-every", type=int, default=5, help="fit: checkpoint every N epochs (default 5)")
    p.add_argument("--speaker", type=int, help="fit: speaker id of a one-speaker dataset (default 0; a dataset "
                   "with speaker subfolders uses their ids)")
    p.add_argument("--seed", type=int, default=1234, help="fit: random seed (batches, noise, scratch weights)")
    p.add_argument("-o", "--output", help="export: folder for NAME.safetensors and NAME.pth (default: EXP)")
    p.set_defaults(func=cmd_train)
