"""RVC-format export written without torch (``rvc_mlx.train.rvc_pth``).

The writer against ``torch.load(weights_only=True)`` and our own safe reader; the voice export against the
independent reference rvc==0.3.5: a random-weight RVC-Project voice is converted by our converter, written back
by the exporter, then loaded strictly by rvc's own model class and run deterministically next to the original
file and our MLX synthesizer. Seeded faults (weight norm with g = 1, a transposed square conv) show the parity
check fails when the export is wrong.
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.convert.common import LAYOUTS
from rvc_mlx.convert.rvc import convert_voice
from rvc_mlx.errors import ConversionError, FormatError, InputError, OutputError
from rvc_mlx.models.synthesizer import Synthesizer
from rvc_mlx.store import save
from rvc_mlx.train import rvc_pth
from rvc_mlx.train.rvc_pth import export_voice, rvc_state_dict, save_rvc_pth, save_torch, write_torch
from tests.reference import rvc_models as R

MIN_CORR = 0.9999
FRAMES = 10  # 4000 samples at 40 kHz; rvc's generator costs ~0.1 s of CPU per frame here
INPUT_SEED = 5
VARIANTS = {v.name: v for v in R.VARIANTS}
DEFAULT_CASES = ("v2-40k-f0", "v1-32k-nof0")  # v1 and v2, f0 and no-f0, 40k and another rate
FAULT_CASE = "v2-40k-f0"
FP16_RTOL = 1.01 * 2.0**-10  # v and g each rounded to float16 once (2^-11 apiece, compounded)


# -- the torch zip-pickle writer ---------------------------------------------------------------------------------


def _structures():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 6)).astype(np.float32)
    big_endian = np.arange(5, dtype=">i4")
    yield "nested", {
        "weight": {"a.weight": rng.standard_normal((3, 2, 5)).astype(np.float16), "a.bias": base[0],
                   "ids": np.arange(7, dtype=np.int64)},
        "config": [1025, 32, 0.5, "1", [3, 7, 11], [[1, 3, 5]] * 3, None, True, False],
        "info": "20epoch ✓ ünïcode", "sr": "40k", "f0": 1, "big": 2**40, "neg": -3, "pi": 3.141592653589793,
    }
    yield "dtypes", {d: (np.arange(6) % 3 == 0 if d == "bool" else (np.arange(6) - 2).astype(d))
                     for d in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")}
    yield "edge_shapes", {"scalar": np.array(2.5, np.float32), "scalar_i": np.array(-7, np.int64),
                          "empty": np.zeros((0, 3), np.float32), "empty_last": np.zeros((3, 0), np.float16),
                          "one": np.ones((1,), np.float16), "unit_axes": np.ones((2, 1, 3), np.float32)}
    yield "non_contiguous", {"transposed": base.T, "strided": base[::2, 1::3], "reversed": base[::-1, ::-1],
                             "broadcast": np.broadcast_to(base[0], (3, 6)), "big_endian": big_endian,
                             "fortran": np.asfortranarray(base)}
    yield "containers", [OrderedDict(b=1, a=np.float32(0.25)), (1, "x", base[1]), [], {}, np.int64(5)]


def _plain(obj):
    """torch.load / load_checkpoint output -> comparable Python/numpy (tensors as numpy)."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _assert_same(got, want, where="obj"):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape, f"{where}: {got.dtype}{got.shape}"
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, np.generic):
        assert type(got) is type(want.item()) and got == want.item(), where
    elif isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name,obj", list(_structures()), ids=[n for n, _ in _structures()])
def test_writer_round_trips_through_torch_and_our_reader(name, obj, tmp_path):
    path = tmp_path / "obj.pth"
    save_torch(path, obj)
    _assert_same(_plain(torch.load(path, weights_only=True)), obj)
    _assert_same(load_checkpoint(path), obj)


def test_writer_zip_layout(tmp_path):
    """torch's record layout: data.pkl, byteorder, data/0..N, version "3"; stored, each payload 64-byte aligned;
    the same object always gives the same bytes; a tensor has torch's contiguous stride."""
    obj = {"a": np.ones((2, 3), np.float16), "b": np.zeros((5,), np.int64), "c": [np.float32(1)], "d": np.zeros(0)}
    path = tmp_path / "x.pth"
    save_torch(path, obj)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist()]
        assert names == ["archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/data/1",
                         "archive/data/2", "archive/version"]
        assert zf.read("archive/byteorder") == b"little" and zf.read("archive/version") == b"3\n"
        assert zf.testzip() is None
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = np.frombuffer(raw[info.header_offset + 26:info.header_offset + 30], "<u2")
            assert (info.header_offset + 30 + int(name_len) + int(extra_len)) % 64 == 0, info.filename
        assert zf.read("archive/data/0") == np.ones((2, 3), np.float16).tobytes()
    buf = io.BytesIO()
    write_torch(buf, obj)
    assert buf.getvalue() == raw
    t = torch.load(path, weights_only=True)["a"]
    assert t.stride() == (3, 1) and t.is_contiguous()
    mapped = torch.load(path, weights_only=True, mmap=True)  # storages mapped straight from the aligned records
    assert torch.equal(mapped["a"], t) and torch.equal(mapped["b"], torch.zeros(5, dtype=torch.int64))


def test_writer_shares_one_storage_for_one_array(tmp_path):
    a = np.arange(4, dtype=np.float32)
    save_torch(tmp_path / "x.pth", {"x": a, "y": [a], "z": a.copy()})
    t = torch.load(tmp_path / "x.pth", weights_only=True)
    assert t["x"].untyped_storage().data_ptr() == t["y"][0].untyped_storage().data_ptr()
    assert t["x"].untyped_storage().data_ptr() != t["z"].untyped_storage().data_ptr()


@pytest.mark.parametrize("bad", [{"s": {1, 2}}, {"c": np.zeros(2, np.complex64)}, {"o": object()},
                                 {(1, 2): 3}, {"b": b"bytes"}], ids=["set", "complex", "object", "tuple_key", "bytes"])
def test_writer_refuses_what_weights_only_cannot_hold(bad, tmp_path):
    with pytest.raises(TypeError):
        save_torch(tmp_path / "x.pth", bad)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_writer_failure_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"cannot write") as err:
        save_torch(tmp_path / "file" / "x.pth", {"a": 1})
    assert "\n" not in str(err.value)


def test_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from rvc_mlx.train.rvc_pth import save_torch; import tempfile, os; "
            "d = tempfile.mkdtemp(); save_torch(os.path.join(d, 'x.pth'), {'a': np.ones(3)}); "
            "import shutil; shutil.rmtree(d); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the voice export against rvc==0.3.5 ------------------------------------------------------------------------


def _corr(a, b) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.fixture(scope="module")
def voices(ref_cache, tmp_path_factory):
    """variant name -> the reference voice converted by us (``weights``, ``config``, ``converted`` file), its
    ``original`` torch checkpoint and fixed inputs; the torch model and outputs are made on first use
    (:func:`_model`, :func:`_reference`, :func:`_ours`)."""
    cache = {}

    def get(name):
        if name not in cache:
            variant = VARIANTS[name]
            path = R.checkpoint_path(ref_cache, variant)
            weights, config = convert_voice(load_checkpoint(path), str(path))
            folder = tmp_path_factory.mktemp(name)
            converted = folder / "voice.safetensors"
            save(converted, weights, config)
            feats, pitch, f0 = R.make_inputs(variant.feature_dim, FRAMES, seed=INPUT_SEED)
            cache[name] = SimpleNamespace(
                variant=variant, path=path, weights=weights, config=config, converted=converted, folder=folder,
                original=R.load_torch_checkpoint(path), model=None, reference=None, ours=None,
                inputs=(feats, pitch, f0) if variant.f0 else (feats, None, None))
        return cache[name]

    return get


def _model(v) -> torch.nn.Module:
    """One rvc model per variant (building one is the slow part); tests load their weights into it strictly."""
    if v.model is None:
        v.model = _rvc_model_for(v.original)
    return v.model


def _reference(v) -> np.ndarray:
    """rvc's deterministic output from the original file (cached next to the cached checkpoint)."""
    if v.reference is None:
        cached = v.path.with_name(f"{v.path.stem}-deterministic-{FRAMES}f-s{INPUT_SEED}.npy")
        if not cached.exists():
            tmp = cached.with_suffix(".part.npy")
            np.save(tmp, _infer(v, v.original["weight"]))
            tmp.replace(cached)
        v.reference = np.load(cached)
    return v.reference


def _ours(v) -> np.ndarray:
    """rvc-mlx's deterministic output from our converted file."""
    if v.ours is None:
        v.ours = Synthesizer.load(v.converted).synthesize(*v.inputs, sid=0, noise="none")
    return v.ours


def _infer(v, state: dict) -> np.ndarray:
    """rvc's deterministic ``infer`` with ``state`` loaded strictly into the variant's model."""
    model = _model(v)
    model.load_state_dict(state, strict=True)
    with R.deterministic():
        return R.reference_infer(model, *v.inputs, sid=0)[0]


def _rvc_model_for(cpt: dict) -> torch.nn.Module:
    """rvc's model class built from the file's own config (RVC overwrites spk_embed_dim with emb_g's rows),
    enc_q deleted as RVC's inference does, then every key loaded strictly (RVC itself uses strict=False)."""
    config = list(cpt["config"])
    config[-3] = cpt["weight"]["emb_g.weight"].shape[0]
    model = R.new_model(cpt["version"], bool(cpt["f0"]), config)
    del model.enc_q
    model.load_state_dict(cpt["weight"], strict=True)
    return model.float().eval()


def _export_parity(v, out) -> dict:
    """Correlation and max |diff| of rvc's output from the exported file vs the original file and vs rvc-mlx."""
    audio = _infer(v, torch.load(out, weights_only=True)["weight"])
    ref, ours = _reference(v), _ours(v)
    return {"vs_original_corr": _corr(audio, ref), "vs_original_max_abs": float(np.abs(audio - ref).max()),
            "vs_mlx_corr": _corr(audio, ours), "vs_mlx_max_abs": float(np.abs(audio - ours).max())}


def _case_params():
    for name in VARIANTS:
        yield pytest.param(name, id=name, marks=[] if name in DEFAULT_CASES else [pytest.mark.slow])


@pytest.mark.parametrize("name", list(_case_params()))
def test_export_matches_rvc_reference(name, voices):
    v = voices(name)
    out = v.folder / "exported.pth"
    save_rvc_pth(out, v.weights, v.config)

    # (a) torch's safe loader takes it; the metadata is savee's, the config list the one RVC's JSON gives
    cpt = torch.load(out, weights_only=True)
    assert list(cpt) == ["weight", "config", "info", "sr", "f0", "version"]
    assert cpt["config"] == R.config_list(v.variant) == v.original["config"]
    assert (cpt["info"], cpt["sr"], cpt["f0"], cpt["version"]) == ("20epoch", v.variant.sr, int(v.variant.f0),
                                                                 v.variant.version)
    assert set(cpt["weight"]) == set(v.original["weight"]) and not any("enc_q" in k for k in cpt["weight"])
    assert all(t.dtype == torch.float16 for t in cpt["weight"].values())
    for k, t in cpt["weight"].items():
        assert t.shape == v.original["weight"][k].shape, k

    # (b) rvc's own model class, from the file's config, every key present (and used for the parity below)
    v.model = _rvc_model_for(cpt)

    # (c) deterministic inference: vs the original file (rvc) and vs our converted voice (rvc-mlx)
    m = _export_parity(v, out)
    print(f"\n{name}: " + ", ".join(f"{k} {x:.7f}" if "corr" in k else f"{k} {x:.2e}" for k, x in m.items()))
    assert m["vs_original_corr"] >= MIN_CORR and m["vs_mlx_corr"] >= MIN_CORR, m

    # (d) our converter reads the export back: untouched tensors exactly, re-parametrised ones to float16
    weights, config = convert_voice(load_checkpoint(out), str(out))
    assert config == v.config
    assert set(weights) == set(v.weights)
    wn = _wn_modules(cpt["weight"])
    for k, w in v.weights.items():
        if k[: -len(".weight")] in wn:
            np.testing.assert_allclose(weights[k], w, rtol=FP16_RTOL, atol=1e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(weights[k], w, err_msg=k)


def _wn_modules(state) -> set[str]:
    return {k[: -len(".weight_g")] for k in state if k.endswith(".weight_g")}


def _without_reparametrisation(w, dtype):
    """Seeded fault: the fused weight written as weight_v with g = 1 (drops every row's magnitude)."""
    return np.ones((w.shape[0],) + (1,) * (w.ndim - 1), dtype), w.astype(dtype)


def _swap_square_conv(original):
    """Seeded fault: square convs (in == out channels) get their channel axes swapped in torch layout."""

    def layout(array, kind, key):
        t = original(array, kind, key)
        return np.ascontiguousarray(t.transpose(1, 0, 2)) if kind == "conv1d" and t.shape[0] == t.shape[1] else t

    return layout


@pytest.mark.parametrize("fault", ["g_is_one", "square_conv_transposed"])
def test_seeded_fault_fails_the_parity_check(fault, voices, monkeypatch):
    v = voices(FAULT_CASE)
    if fault == "g_is_one":
        monkeypatch.setattr(rvc_pth, "_reparametrise", _without_reparametrisation)
    else:
        monkeypatch.setattr(rvc_pth, "_to_torch_layout", _swap_square_conv(rvc_pth._to_torch_layout))
    out = v.folder / f"fault-{fault}.pth"
    save_rvc_pth(out, v.weights, v.config)  # loads strictly: only the numbers are wrong
    m = _export_parity(v, out)
    print(f"\n{fault}: vs original corr {m['vs_original_corr']:.4f} max-abs {m['vs_original_max_abs']:.2e}")
    assert m["vs_original_corr"] < MIN_CORR and m["vs_mlx_corr"] < MIN_CORR, m


def test_trainer_weight_norm_pairs_are_written_as_given(voices):
    """The trainer's (g, v) in MLX layout (v like the weight, g of any shape of the right size) give the
    original file's float16 weight_g/weight_v bit for bit; fused and paired modules can be mixed."""
    v = voices(FAULT_CASE)
    src = v.original["weight"]
    wn = _wn_modules(src)
    weights = {k: w for k, w in v.weights.items() if k[: -len(".weight")] not in wn}
    for i, module in enumerate(sorted(wn)):
        layout = "conv_transpose1d" if ".ups." in module else "conv1d"
        g, vv = src[module + ".weight_g"].float().numpy(), src[module + ".weight_v"].float().numpy()
        if i % 3 == 2:  # some stay fused
            weights[module + ".weight"] = v.weights[module + ".weight"]
            continue
        weights[module + ".weight_v"] = LAYOUTS[layout](vv)
        weights[module + ".weight_g"] = LAYOUTS[layout](g) if i % 3 == 0 else g.reshape(-1)
    state = rvc_state_dict(weights)
    assert set(state) == set(src)
    for i, module in enumerate(sorted(wn)):
        if i % 3 != 2:
            for s in (".weight_g", ".weight_v"):
                np.testing.assert_array_equal(state[module + s], src[module + s].numpy(), err_msg=module + s)
    _model(v).load_state_dict({k: torch.from_numpy(a) for k, a in state.items()}, strict=True)


def test_zero_weight_rows_survive_weight_norm():
    """A weight-normed conv with an all-zero output channel: torch's weight_norm gives zeros, not NaN."""
    w = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    w[2] = 0
    g, v = rvc_pth._reparametrise(w, "float16")
    back = torch._weight_norm(torch.from_numpy(v).float(), torch.from_numpy(g).float(), 0).numpy()
    assert np.isfinite(back).all() and not back[2].any()
    np.testing.assert_allclose(back, w, rtol=FP16_RTOL, atol=1e-7)


def test_float32_export(voices, tmp_path):
    v = voices(FAULT_CASE)
    save_rvc_pth(tmp_path / "f32.pth", v.weights, v.config, info="mine", dtype="float32")
    cpt = torch.load(tmp_path / "f32.pth", weights_only=True)
    assert cpt["info"] == "mine" and all(t.dtype == torch.float32 for t in cpt["weight"].values())
    weights, _ = convert_voice(load_checkpoint(tmp_path / "f32.pth"))
    for k, w in v.weights.items():
        np.testing.assert_allclose(weights[k], w, rtol=1e-6, atol=1e-7, err_msg=k)


def test_export_voice_from_converted_file(voices, tmp_path):
    """The library entry: a converted .safetensors (float32 or float16 storage) back to an RVC .pth."""
    v = voices(FAULT_CASE)
    meta = export_voice(v.converted, tmp_path / "a.pth")
    assert meta == {"config": v.original["config"], "info": "20epoch", "sr": "40k", "f0": 1, "version": "v2"}
    state = rvc_state_dict(v.weights)
    written = torch.load(tmp_path / "a.pth", weights_only=True)["weight"]
    assert list(written) == list(state)
    for k, a in state.items():
        np.testing.assert_array_equal(written[k].numpy(), a, err_msg=k)
    half = tmp_path / "half.safetensors"
    save(half, v.weights, v.config, dtype="float16")
    export_voice(half, tmp_path / "c.pth", info="from half")
    assert torch.load(tmp_path / "c.pth", weights_only=True)["info"] == "from half"

    save(tmp_path / "rmvpe.safetensors", {"x": np.zeros(2, np.float32)}, {"kind": "rmvpe"})
    with pytest.raises(FormatError, match="is a rmvpe model, not a voice"):
        export_voice(tmp_path / "rmvpe.safetensors", tmp_path / "d.pth")
    assert not (tmp_path / "d.pth").exists()


def _with(weights, **changes):
    out = dict(weights)
    for k, val in changes.items():
        k = k.replace("__", ".")
        if val is None:
            del out[k]
        else:
            out[k] = val
    return out


def test_export_errors_are_one_line(voices, tmp_path):
    v = voices(FAULT_CASE)
    w, c = v.weights, v.config
    up = w["dec.ups.0.weight"]
    g_up = np.ones(up.shape[2], np.float32)
    emb = w["emb_g.weight"]
    whole = [  # the whole voice: checks of names and shapes against the config, and of the config itself
        (ConversionError, r"missing 1: dec.conv_post.weight", _with(w, dec__conv_post__weight=None), c),
        (ConversionError, "wrong shape 1: enc_p.proj.weight",
         _with(w, enc_p__proj__weight=w["enc_p.proj.weight"][:, :, :5]), c),
        (ConversionError, "vocoder is RefineGAN", w, {**c, "vocoder": "RefineGAN"}),
        (ConversionError, "config says 3 speakers", w, {**c, "n_speakers": 3}),
        (ConversionError, "32k, 40k or 48k", w, {**c, "sample_rate": 44100}),
        (ConversionError, "upsample rates", w, {**c, "sample_rate": 48000}),  # found by reading it back
    ]
    for error, match, weights, config in whole:
        with pytest.raises(error, match=match) as err:
            save_rvc_pth(tmp_path / "x.pth", weights, config)
        assert "\n" not in str(err.value), match
    assert not (tmp_path / "x.pth").exists()
    tensors = [  # the state dict alone
        (ConversionError, "not part of an RVC voice: dec.extra.weight", {"dec.extra.weight": np.zeros((2, 2))}, {}),
        (ConversionError, "not part of an RVC voice: enc_p.proj.weight_g",
         {"enc_p.proj.weight_g": np.ones(4), "enc_p.proj.weight_v": np.ones((4, 1, 2))}, {}),
        (ConversionError, "both a fused weight and weight_g/weight_v",
         {"dec.ups.0.weight": up, "dec.ups.0.weight_v": up, "dec.ups.0.weight_g": g_up}, {}),
        (ConversionError, "lacks dec.ups.0.weight_g", {"dec.ups.0.weight_v": up}, {}),
        (ConversionError, "weight_g has 3 values", {"dec.ups.0.weight_v": up, "dec.ups.0.weight_g": np.ones(3)}, {}),
        (ConversionError, "emb_g.weight: weights contain NaN", {"emb_g.weight": emb * np.nan}, {}),
        (ConversionError, "beyond the float16 range; export with dtype float32", {"emb_g.weight": emb * 1e6}, {}),
        (InputError, "bfloat16", {"emb_g.weight": emb}, {"dtype": "bfloat16"}),
    ]
    for error, match, weights, kw in tensors:
        with pytest.raises(error, match=match) as err:
            rvc_state_dict(weights, **kw)
        assert "\n" not in str(err.value), match
    assert rvc_state_dict({"emb_g.weight": emb * 1e6}, dtype="float32")["emb_g.weight"].dtype == np.float32
    training = {"emb_g.weight": emb, "enc_q.enc.in_layers.0.weight_v": np.zeros((2, 2, 2), np.float32)}
    assert list(rvc_state_dict(training)) == ["emb_g.weight"]  # the posterior encoder is dropped as RVC does
