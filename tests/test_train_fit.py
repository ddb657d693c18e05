"""The training loop on a tiny network and a tiny experiment folder: batches as RVC's loader makes them,
checkpoints, exact resume, the exported voice (rvc-mlx and RVC formats), and bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from rvc_mlx.errors import InputError
from rvc_mlx.train import data as D
from rvc_mlx.train import features as F
from rvc_mlx.train import plots
from rvc_mlx.train.fit import FitConfig, fit, latest_checkpoint
from rvc_mlx.train.session import RunSettings, export_voice_files, new_trainer

SR, HOP = 40000, 400
# v1: its discriminator has 5 periods (2..11) to v2's 8 (2..37); at these tiny lengths a step costs ~ the sum of
# the periods (the 1024-channel convs run once per column), so v1 keeps the loop tests fast
VERSION, DIM = "v1", 256
TINY = {"inter_channels": 16, "hidden_channels": 16, "filter_channels": 32, "n_layers": 1,
        "upsample_initial_channel": 32, "gin_channels": 16}
FRAMES = [150, 190, 230, 260]  # spectrogram frames per segment: two length buckets, one batch of 2 each


def settings() -> RunSettings:
    return RunSettings(name="tiny", version=VERSION, sample_rate=SR, use_f0=True, segment_frames=4, n_speakers=2,
                       model=TINY)


def make_experiment(exp, frames=FRAMES, seed=0):
    """Segments as the prepare and features steps leave them: gt wav, 50 fps features, coarse pitch, f0."""
    rng = np.random.default_rng(seed)
    for sub in ("0_gt_wavs", F.FEATURE_DIRS[VERSION], "2a_f0", "2b-f0nsf"):
        (exp / sub).mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(frames):
        name = f"{i}_0"  # file i, its segment 0
        k = np.arange(t * HOP) / SR
        sf.write(exp / "0_gt_wavs" / f"{name}.wav", (0.3 * np.sin(2 * math.pi * (110 + 20 * i) * k)).astype(np.float32),
                 SR, subtype="FLOAT")
        np.save(exp / F.FEATURE_DIRS[VERSION] / f"{name}.npy", rng.standard_normal((t // 2 + 1, DIM)).astype(np.float32))
        f0 = 100 + 50 * rng.random(t + 1)
        np.save(exp / "2b-f0nsf" / f"{name}.wav.npy", f0.astype(np.float32))
        np.save(exp / "2a_f0" / f"{name}.wav.npy", np.clip(np.rint(f0 / 4), 1, 255).astype(np.int64))


def params_equal(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(mx.abs(a[k] - b[k]).max()) for k in a)


def test_batches_follow_rvc_buckets():
    lengths = [150, 170, 190, 230, 260, 950, 90]
    batches = D.epoch_batches(lengths, 2, seed=1, epoch=1)
    flat = [i for b in batches for i in b]
    assert 5 not in flat and 6 not in flat  # outside 100..900: dropped, as RVC
    for b in batches:  # one bucket per batch
        assert len({next(j for j in range(9) if D.BUCKET_BOUNDARIES[j] < lengths[i] <= D.BUCKET_BOUNDARIES[j + 1])
                    for i in b}) == 1
    assert sorted(set(flat)) == [0, 1, 2, 3, 4] and all(len(b) == 2 for b in batches)  # filled by repetition
    assert D.epoch_batches(lengths, 2, 1, 1) == batches and D.epoch_batches(lengths, 2, 1, 2) != batches


def test_items_are_cut_and_padded_as_rvc(tmp_path):
    make_experiment(tmp_path)
    s = settings()
    data = D.TrainingSet(tmp_path, VERSION, True, s.spectrogram())
    item = data.item(0)
    # features repeated x2 (76 -> 152 frames), then everything cut to the spectrogram's 150 frames
    assert item.phone.shape == (150, DIM) and item.spec.shape == (150, 1025) and len(item.wave) == 150 * HOP
    assert np.array_equal(item.phone[1], item.phone[0])
    assert (tmp_path / "0_gt_wavs" / "0_0.spec.npy").exists()  # cached like RVC's .spec.pt
    batch = D.collate([data.item(0), data.item(2)], True)
    assert batch.spec.shape == (2, 230, 1025) and batch.spec_lengths.tolist() == [230, 150]
    assert float(mx.abs(batch.spec[1, 150:]).max()) == 0.0


def test_resumed_training_ends_with_the_uninterrupted_weights(tmp_path):
    """Also: the per-epoch loss log, curves and mel picture, and the export of the trained voice."""
    cfg = FitConfig(epochs=2, batch_size=2, save_every=1, seed=5)
    straight = tmp_path / "straight"
    make_experiment(straight)
    s = settings()
    trainer = new_trainer(s, seed=3)
    before = dict(trainer.params_g)
    report = fit(straight, trainer, D.TrainingSet(straight, VERSION, True, s.spectrogram()), cfg)
    assert report.epochs == 2 and report.steps == 4 and all(np.isfinite(l["gen_all"]) for l in report.losses)
    assert params_equal(before, trainer.params_g) > 1e-5

    split = tmp_path / "split"
    make_experiment(split)
    first = new_trainer(s, seed=3)
    fit(split, first, D.TrainingSet(split, VERSION, True, s.spectrogram()), FitConfig(**{**cfg.__dict__, "epochs": 1}))
    # a run killed after logging a step of epoch 2 but before its checkpoint: the resume drops that line
    plots.append_log(split, [{"epoch": 2, "step": 3, "mel": 1.0}])
    again = new_trainer(s, seed=99)  # a fresh process would start from other weights: the checkpoint wins
    resumed = fit(split, again, D.TrainingSet(split, VERSION, True, s.spectrogram()), cfg)
    assert resumed.resumed_from.endswith("00000002.safetensors") and resumed.steps == 4
    assert params_equal(again.params_g, trainer.params_g) == 0.0
    assert params_equal(again.params_d, trainer.params_d) == 0.0
    assert [l["gen_all"] for l in resumed.losses] == [l["gen_all"] for l in report.losses[2:]]
    # the optimiser state went through the checkpoint too: one more step from each agrees
    assert int(again.opt_g.state["step"]) == int(trainer.opt_g.state["step"]) == 4
    # the loss log of the resumed run is the uninterrupted run's
    assert plots.read_log(split) == plots.read_log(straight) == report.losses
    _check_plots(straight, report.losses)
    _check_export(trainer, s, tmp_path / "out")


def _check_plots(exp, log):
    import xml.etree.ElementTree as ET

    from PIL import Image

    assert [r["step"] for r in log] == [1, 2, 3, 4] and [r["epoch"] for r in log] == [1, 1, 2, 2]
    for epoch in (1, 2):
        with Image.open(exp / "plots" / f"mel_{epoch:04d}.png") as im:  # an independent PNG decoder
            pixels = np.asarray(im.convert("RGB"))
        # real over generated: 4 segment frames wide, 2 x 125 mel bands (+2 rows between), 3 x 3 pixels each
        assert pixels.shape == (3 * (2 * 125 + 2), 3 * 4, 3) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 4
    svg = ET.parse(exp / "plots" / "losses.svg").getroot()
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    assert len(lines) == len(plots.TERMS) and all(len(e.get("points").split()) == 2 for e in lines)
    assert plots.epoch_means(log)["mel"][1] == (2, pytest.approx((log[2]["mel"] + log[3]["mel"]) / 2))


def _check_export(trainer, s, out):
    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.models.synthesizer import Synthesizer

    files = export_voice_files(trainer, s, out, "2epoch")
    voice = Synthesizer.load(files["voice"])
    assert voice.config.n_speakers == 2 and voice.config.inter_channels == 16
    ckpt = load_checkpoint(files["pth"])
    assert ckpt["info"] == "2epoch" and ckpt["version"] == VERSION and not any(k.startswith("enc_q") for k in ckpt["weight"])


def _record_speakers(exp, speakers):
    """prepare.json as the prepare step leaves it for a dataset with speaker subfolders (file index -> id)."""
    files = {f"spk{sid}/take{i}.wav": {"index": i, "speaker": sid} for i, sid in enumerate(speakers)}
    (exp / "prepare.json").write_text(json.dumps({"version": 1, "sample_rate": SR, "files": files}))


def test_each_speaker_trains_its_own_embedding(tmp_path):
    make_experiment(tmp_path)
    _record_speakers(tmp_path, [0, 1, 1, 0])  # segments 0_0 .. 3_0 of files 0..3
    s = replace(settings(), n_speakers=3)
    assert D.TrainingSet(tmp_path, VERSION, True, s.spectrogram()).sids == [0, 1, 1, 0]
    mute = F.mute_feature_path(tmp_path, VERSION)  # as the features step leaves it: RVC's mute sample per speaker x2
    mute.parent.mkdir(parents=True)
    np.save(mute, np.random.default_rng(0).standard_normal((149, DIM)).astype(np.float32))
    data = D.TrainingSet(tmp_path, VERSION, True, s.spectrogram())
    assert data.sids == [0, 1, 1, 0, 0, 0, 1, 1] and [data.item(i).sid for i in range(8)] == data.sids
    silent = data.item(7)
    assert data.names[7] == "mute" and data.lengths()[4:] == [300] * 4 and silent.spec.shape[0] == 298
    assert not silent.wave.any() and not silent.pitchf.any() and set(silent.pitch.tolist()) == {1}
    trainer = new_trainer(s, seed=3)
    before = np.array(trainer.params_g["emb_g.weight"])
    batch = D.collate([data.item(0), data.item(1)], True)  # one step on speakers 0 and 1
    trainer.step(batch, trainer.net_g.draw_noise(batch, mx.random.key(0)))
    moved = np.abs(np.array(trainer.params_g["emb_g.weight"]) - before).max(axis=1)
    # Adam moves a trained row by ~lr per element; the unused speaker 2 only by weight decay (lr·0.01·|w|)
    assert min(moved[:2]) > 1e-4 and moved[2] < 0.1 * min(moved[:2]), moved
    with pytest.raises(InputError, match="2 speakers"):
        D.TrainingSet(tmp_path, VERSION, True, s.spectrogram(), sid=0)
    _record_speakers(tmp_path, [0, 1, 3, 0])
    with pytest.raises(InputError, match="speaker id 3 in the data; the model has 3"):
        fit(tmp_path, trainer, D.TrainingSet(tmp_path, VERSION, True, s.spectrogram()), FitConfig(epochs=2))


def test_missing_or_empty_training_data_is_one_line(tmp_path):
    s = settings()
    with pytest.raises(InputError, match="0_gt_wavs: missing"):
        D.TrainingSet(tmp_path, VERSION, True, s.spectrogram())
    make_experiment(tmp_path)
    for p in (tmp_path / "2a_f0").iterdir():
        p.unlink()
    with pytest.raises(InputError, match="no segment has all of its training files"):
        D.TrainingSet(tmp_path, VERSION, True, s.spectrogram())
    assert latest_checkpoint(tmp_path) is None


def test_cli_fit_and_export(tmp_path, capsys):
    from dataclasses import asdict

    from rvc_mlx.command import main
    from rvc_mlx.train.session import save_settings

    exp = tmp_path / "exp"
    assert main(["train", "fit", str(exp), "--epochs", "1"]) == 1  # nothing prepared yet
    assert "0_gt_wavs: missing" in capsys.readouterr().err
    make_experiment(exp)
    save_settings(exp, settings())  # the run's settings (a tiny network) as the first step writes them
    assert main(["train", "export", str(exp)]) == 1
    assert "no training checkpoint yet" in capsys.readouterr().err
    assert main(["train", "fit", str(exp), "--version", "v2"]) == 1
    assert "set up with version 'v1'" in capsys.readouterr().err
    assert main(["train", "fit", str(exp), "--epochs", "1", "--batch-size", "2"]) == 0
    assert "fit: epoch 1, step 2" in capsys.readouterr().out
    assert main(["train", "fit", str(exp), "--epochs", "1", "--batch-size", "2"]) == 0  # done: nothing to redo
    assert "resumed from" in capsys.readouterr().out
    assert main(["train", "export", str(exp), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tiny.safetensors").exists() and (tmp_path / "out" / "tiny.pth").exists()
    assert asdict(settings()) == asdict(__import__("rvc_mlx.train.session", fromlist=["x"]).load_settings(exp))
