"""The converted format: round trip, strict loading, and one-line errors for damaged files."""

import json
import struct

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from rvc_mlx import store
from rvc_mlx.errors import FormatError


def _save(tmp_path, name="m.safetensors", kind="rmvpe"):
    path = tmp_path / name
    weights = {"lin.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "lin.bias": np.ones(2, np.float32)}
    store.save(path, weights, {"kind": kind, "sample_rate": 16000})
    return path, weights


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)


def test_round_trip_and_metadata(tmp_path):
    path, weights = _save(tmp_path)
    loaded, config = store.load(path, kind="rmvpe")
    assert config["format"] == "rvc-mlx" and config["format_version"] == store.FORMAT_VERSION
    assert config["kind"] == "rmvpe" and config["sample_rate"] == 16000
    for k, v in weights.items():
        np.testing.assert_array_equal(np.array(loaded[k]), v)
    assert store.tensor_shapes(path) == {"lin.weight": (2, 3), "lin.bias": (2,)}
    model = _Tiny()
    store.load_into(model, loaded, str(path))
    np.testing.assert_array_equal(np.array(model.lin.weight), weights["lin.weight"])


def test_wrong_kind_is_a_clear_error(tmp_path):
    path, _ = _save(tmp_path)
    with pytest.raises(FormatError, match="is a rmvpe model, expected a voice model"):
        store.load(path, kind="voice")


def test_strict_loading_lists_missing_unexpected_and_wrong_shapes():
    model = _Tiny()
    weights = {"lin.weight": mx.zeros((3, 3)), "extra.weight": mx.zeros(1)}
    with pytest.raises(FormatError) as err:
        store.load_into(model, weights, "f.safetensors")
    msg = str(err.value)
    assert "missing 1: lin.bias" in msg and "unexpected 1: extra.weight" in msg
    assert "lin.weight (3, 3) != (2, 3)" in msg and "\n" not in msg


def test_damaged_files_give_one_line_errors(tmp_path):
    path, _ = _save(tmp_path)
    data = path.read_bytes()
    cases = {
        "empty": b"",
        "short": data[:5],
        "huge_header": struct.pack("<Q", 1 << 40) + data[8:],
        "not_json": struct.pack("<Q", 4) + b"\xff\xfe{}" + data[12:],
        "truncated": data[:-10],
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(FormatError) as err:
            store.load(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value), name


def test_foreign_and_future_files_are_refused(tmp_path):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": np.zeros(2, np.float32)}, str(plain))
    with pytest.raises(FormatError, match="not an rvc-mlx file"):
        store.load(plain)
    future = tmp_path / "future.safetensors"
    meta = {"format": "rvc-mlx", "format_version": "99", "config": json.dumps({"kind": "voice"})}
    save_file({"a": np.zeros(2, np.float32)}, str(future), metadata=meta)
    with pytest.raises(FormatError, match="newer"):
        store.load(future)


def test_save_is_atomic(tmp_path):
    path, _ = _save(tmp_path)
    before = path.read_bytes()
    with pytest.raises(FormatError):
        store.save(path, {"a": np.zeros(1, np.float32)}, {"kind": "nonsense"})
    with pytest.raises(Exception):  # fails inside the writer: the old file must survive, no temp file left
        store.save(path, {"a": np.array([object()])}, {"kind": "voice"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# -- a damaged header or metadata is one line, whoever reads it (read_config, tensor_shapes, load) ----------------


def _rewrite(path, dest, edit):
    """Copy converted file ``path`` to ``dest`` with its header JSON changed by ``edit(header) -> header``
    (the tensor data is kept byte for byte)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8 : 8 + n]))
    text = json.dumps(header).encode()
    dest.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    return dest


def _set_meta(**fields):
    def edit(header):
        header["__metadata__"].update(fields)
        for k in [k for k, v in fields.items() if v is None]:
            del header["__metadata__"][k]
        return header

    return edit


def _set_config(**fields):
    def edit(header):
        config = json.loads(header["__metadata__"]["config"])
        config.update(fields)
        for k in [k for k, v in fields.items() if v is None]:
            del config[k]
        header["__metadata__"]["config"] = json.dumps(config)
        return header

    return edit


def _set_tensor(name, **fields):
    def edit(header):
        header[name].update(fields)
        return header

    return edit


def _replace(key, value):
    def edit(header):
        header[key] = value
        return header

    return edit


BAD_METADATA = {
    "metadata list": (_replace("__metadata__", ["format", "rvc-mlx"]), "metadata"),
    "metadata not strings": (_set_meta(format_version=1), "metadata"),
    "config list": (_set_meta(config=json.dumps(["kind", "voice"])), "config"),
    "config string": (_set_meta(config=json.dumps("voice")), "config"),
    "config number": (_set_meta(config="3"), "config"),
    "config null": (_set_meta(config="null"), "config"),
    "config not json": (_set_meta(config="{kind"), "config"),
    "config missing": (_set_meta(config=None), "config"),
    "format missing": (_set_meta(format=None), "not an rvc-mlx file"),
    "format_version missing": (_set_meta(format_version=None), "format_version"),
    "format_version word": (_set_meta(format_version="one"), "format_version"),
    "format_version zero": (_set_meta(format_version="0"), "format_version"),
    "config format_version list": (_set_config(format_version=[1]), "format_version"),
    "config format other": (_set_config(format="other"), "format"),
    "kind missing": (_set_config(kind=None), "kind"),
    "kind list": (_set_config(kind=["rmvpe"]), "kind"),
    "kind number": (_set_config(kind=3), "kind"),
}

BAD_TENSORS = {  # lin.weight is (2, 3) float32 = 24 bytes, lin.bias (2,) float32 = 8 bytes
    "dtype size": (_set_tensor("lin.weight", dtype="F64"), "lin.weight"),
    "dtype unknown": (_set_tensor("lin.weight", dtype="Q7"), "dtype"),
    "dtype missing": (lambda h: {**h, "lin.bias": {k: v for k, v in h["lin.bias"].items() if k != "dtype"}}, "bias"),
    "shape larger": (_set_tensor("lin.weight", shape=[3, 3]), "lin.weight"),
    "shape smaller": (_set_tensor("lin.weight", shape=[2, 2]), "lin.weight"),
    "shape negative": (_set_tensor("lin.weight", shape=[-2, -3]), "shape"),
    "shape float": (_set_tensor("lin.weight", shape=[2.0, 3]), "shape"),
    "shape bool": (_set_tensor("lin.bias", shape=[True, 2]), "shape"),
    "shape string": (_set_tensor("lin.weight", shape="23"), "shape"),
    "offsets beyond the end": (_set_tensor("lin.bias", data_offsets=[10**6, 10**6 + 8]), "lin.bias"),
    "offsets negative": (_set_tensor("lin.bias", data_offsets=[-8, 0]), "lin.bias"),
    "offsets reversed": (_set_tensor("lin.bias", data_offsets=[8, 0]), "lin.bias"),
    "offsets three": (_set_tensor("lin.bias", data_offsets=[0, 4, 8]), "lin.bias"),
    "offsets float": (_set_tensor("lin.bias", data_offsets=[0.0, 8.0]), "lin.bias"),
    "overlap": (None, "overlap"),  # built below: bias inside weight's bytes
    "tensor not an object": (_replace("lin.bias", [0, 8]), "lin.bias"),
}


def _overlap(header):
    w = header["lin.weight"]["data_offsets"]
    header["lin.bias"]["data_offsets"] = [w[0], w[0] + 8]
    return header


BAD_TENSORS["overlap"] = (_overlap, "overlap")


@pytest.mark.parametrize("case", [*BAD_METADATA, *BAD_TENSORS])
def test_damaged_header_is_one_line_for_every_reader(tmp_path, case):
    path, _ = _save(tmp_path)
    edit, needle = {**BAD_METADATA, **BAD_TENSORS}[case]
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit)
    readers = [store.read_config, store.load, store.load_numpy]
    if case in BAD_TENSORS:  # the header itself is damaged: even the shapes are not told
        readers.append(store.tensor_shapes)
    for read in readers:
        with pytest.raises(FormatError) as err:
            read(bad)
        msg = str(err.value)
        assert msg.startswith(f"{bad}: ") and "\n" not in msg and needle in msg, (case, read.__name__, msg)


def test_header_length_must_fit_and_data_must_be_covered(tmp_path):
    path, _ = _save(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cases = {
        "length past the end": struct.pack("<Q", len(data) - 7) + data[8:],
        "length into the data": struct.pack("<Q", n + 4) + data[8:],
        "length huge": struct.pack("<Q", 2**64 - 1) + data[8:],
        "trailing bytes": data + b"\0" * 16,
    }
    for name, blob in cases.items():
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(blob)
        for read in (store.read_config, store.tensor_shapes, store.load):
            with pytest.raises(FormatError) as err:
                read(bad)
            assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value), (name, read.__name__)


def test_valid_rewritten_header_still_loads(tmp_path):
    """The test's own rewriting keeps a file valid when nothing is changed (so the cases above test the change)."""
    path, weights = _save(tmp_path)
    same = _rewrite(path, tmp_path / "same.safetensors", lambda h: h)
    loaded, config = store.load(same, kind="rmvpe")
    assert config["kind"] == "rmvpe" and store.tensor_shapes(same)["lin.weight"] == (2, 3)
    np.testing.assert_array_equal(np.array(loaded["lin.weight"]), weights["lin.weight"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage_rounds_once_and_loads_as_float32(tmp_path, dtype):
    """Stored half: half the bytes, rounded to nearest even (MLX's cast, checked against a numpy bit-level
    rounding for bfloat16), and both loaders give float32; integer tensors are kept."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((64, 64)).astype(np.float32), "ids": np.arange(4, dtype=np.int64)}
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    store.save(full, weights, {"kind": "voice"})
    store.save(half, weights, {"kind": "voice"}, dtype=dtype)
    assert store.storage_dtype(full) == "float32" and store.storage_dtype(half) == dtype
    assert half.stat().st_size < 0.6 * full.stat().st_size
    if dtype == "float16":
        expected = weights["w"].astype(np.float16).astype(np.float32)
    else:  # round to nearest even on the upper 16 bits
        bits = weights["w"].view(np.uint32).astype(np.uint64)
        expected = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    loaded, _ = store.load(half)
    assert loaded["w"].dtype == mx.float32 and np.array_equal(np.array(loaded["w"]), expected)
    assert np.array_equal(np.array(loaded["ids"]), weights["ids"])
    as_numpy, _ = store.load_numpy(half)
    assert as_numpy["w"].dtype == np.float32 and np.array_equal(as_numpy["w"], expected)
    assert 0 < np.max(np.abs(expected - weights["w"])) <= (2**-11 if dtype == "float16" else 2**-8) * 4.5
    with pytest.raises(FormatError, match="cannot store tensors as 'int8'"):
        store.save(tmp_path / "x.safetensors", weights, {"kind": "voice"}, dtype="int8")
