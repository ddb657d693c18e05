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
