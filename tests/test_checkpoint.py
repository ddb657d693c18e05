"""The safe checkpoint reader: exact tensors for every dtype/layout, and nothing from the file ever runs."""

import argparse
import io
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from rvc_mlx.checkpoint import Placeholder, load_checkpoint
from rvc_mlx.errors import CheckpointError


def _sample_object():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {
        "weight": {
            "f32": base,
            "view": base[1:, 2:].t(),  # strided view with offset, shares storage with f32
            "f64": torch.randn(3, generator=g, dtype=torch.float64),
            "f16": torch.randn(3, 4, generator=g).half(),
            "bf16": torch.randn(7, generator=g).bfloat16(),
            "i64": torch.arange(5),
            "i32": torch.arange(4, dtype=torch.int32),
            "i16": torch.arange(3, dtype=torch.int16) - 1,
            "i8": torch.tensor([-3, 4], dtype=torch.int8),
            "u8": torch.tensor([0, 255], dtype=torch.uint8),
            "bool": torch.tensor([True, False]),
            "scalar": torch.tensor(1.5),
            "empty": torch.zeros(0, 3),
            "param": torch.nn.Parameter(torch.ones(2)),
        },
        "config": [1, 2, [3, 4]],
        "args": argparse.Namespace(x=1, y="z"),
        "np": np.arange(4.0),
        "sr": "40k",
    }


def _expected(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_every_dtype_and_layout(tmp_path, legacy):
    obj = _sample_object()
    path = tmp_path / "m.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    got = load_checkpoint(path)
    for key, tensor in obj["weight"].items():
        want = _expected(tensor)
        assert got["weight"][key].dtype == want.dtype, key
        assert got["weight"][key].shape == want.shape, key
        np.testing.assert_array_equal(got["weight"][key], want, err_msg=key)
    assert got["config"] == [1, 2, [3, 4]] and got["sr"] == "40k"
    np.testing.assert_array_equal(got["np"], np.arange(4.0))
    assert isinstance(got["args"], Placeholder) and got["args"].name == "argparse.Namespace"
    assert got["args"].state == {"x": 1, "y": "z"}


def test_upcast_half(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"w": torch.tensor([0.1, 2.0]).half()}, path)
    got = load_checkpoint(path, upcast_half=True)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, torch.tensor([0.1, 2.0]).half().float().numpy())


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


class _GetattrEvil:
    def __reduce__(self):
        return (getattr, (str, "upper"))  # the first step of getattr(os, "system") gadget chains


@pytest.mark.parametrize("make", ["system", "eval", "getattr"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, make, legacy):
    marker = tmp_path / "pwned"
    payload = {
        "system": _Evil(f"touch {marker}"),
        "eval": _EvalEvil(f"open({str(marker)!r}, 'w').write('x')"),
        "getattr": _GetattrEvil(),
    }[make]
    path = tmp_path / "evil.pth"
    torch.save({"weight": {"a": torch.ones(2)}, "x": payload}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "refuses" in msg
    assert not marker.exists()


def test_raw_pickle_in_zip_calling_subprocess_is_refused(tmp_path):
    """A hand-made data.pkl (not produced by torch) that reaches subprocess via STACK_GLOBAL."""
    marker = tmp_path / "pwned"
    evil = (
        b"\x80\x04\x8c\nsubprocess\x94\x8c\x04call\x94\x93\x94"
        + pickle.dumps((["touch", str(marker)],), protocol=4)[2:-1]
        + b"R."
    )
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    with pytest.raises(CheckpointError, match="refuses"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_classes_become_inert(tmp_path):
    """Classes from packages we do not import (omegaconf, fairseq, ...) are recorded, never imported."""
    buf = io.BytesIO()
    # GLOBAL some_unimportable.module Thing ; EMPTY_TUPLE ; NEWOBJ ; {'a': 1} ; BUILD ; STOP
    buf.write(b"\x80\x02csome_unimportable.module\nThing\nq\x00)\x81}q\x01X\x01\x00\x00\x00aK\x01sb.")
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
    obj = load_checkpoint(path)
    assert isinstance(obj, Placeholder) and obj.name == "some_unimportable.module.Thing"
    assert obj.state == {"a": 1}


def _good_file(tmp_path):
    path = tmp_path / "good.pth"
    torch.save({"weight": {"a": torch.randn(64, 64), "b": torch.randn(10).half()}, "config": [1, 2]}, path)
    return path


def test_truncated_files_give_one_line_errors(tmp_path):
    data = _good_file(tmp_path).read_bytes()
    for cut in (0, 3, 100, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_fuzzed_files_never_escape_as_other_errors(tmp_path):
    """Random byte flips: either the file still reads or the error is a CheckpointError."""
    data = bytearray(_good_file(tmp_path).read_bytes())
    rng = random.Random(1)
    outcomes = {"ok": 0, "error": 0}
    for i in range(150):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        path = tmp_path / "fuzz.pth"
        path.write_bytes(bytes(mutated))
        try:
            load_checkpoint(path)
            outcomes["ok"] += 1
        except CheckpointError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 0  # the fuzzing did hit the parser


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
