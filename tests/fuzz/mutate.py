"""A seeded mutation engine: generic byte mutations plus structure-aware ones per file format.

Every mutator is ``f(data: bytes, rng: numpy Generator) -> bytes``; a case is 1-3 mutators applied to a seed.
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
import zipfile

import numpy as np

HUGE = [2**31 - 1, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1, 2**40, 0, 1, 2**31, 2**16 + 1]


def _pos(data: bytes, rng) -> int:
    return int(rng.integers(0, max(len(data), 1)))


def bit_flip(data, rng):
    if not data:
        return data
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = _pos(b, rng)
        b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def byte_run(data, rng):
    i = _pos(data, rng)
    n = int(rng.choice([1, 2, 4, 8, 16, 64, 512]))
    fill = [bytes([int(rng.integers(0, 256))]) * n, b"\xff" * n, b"\x00" * n,
            rng.integers(0, 256, n, dtype=np.uint8).tobytes()][int(rng.integers(0, 4))]
    if rng.random() < 0.5:
        return data[:i] + fill + data[i + n:]
    return data[:i] + fill + data[i:]


def truncate(data, rng):
    return data[: _pos(data, rng)]


def delete_range(data, rng):
    i = _pos(data, rng)
    return data[:i] + data[i + int(rng.integers(1, 64)):]


def duplicate_range(data, rng):
    i = _pos(data, rng)
    return data[:i] + data[i:i + int(rng.integers(1, 256))] * 2 + data[i + 256:]


def huge_field(data, rng):
    """A 2/4/8-byte little-endian field set to a huge (or zero) value, at an aligned offset near the start."""
    if len(data) < 8:
        return data
    width = int(rng.choice([2, 4, 8]))
    limit = min(len(data) - width, 4096)
    i = int(rng.integers(0, limit + 1)) // width * width if rng.random() < 0.7 else int(rng.integers(0, limit + 1))
    v = int(rng.choice(HUGE)) % (1 << (8 * width))
    if rng.random() < 0.3:
        v = (int.from_bytes(data[i:i + width], "little") + int(rng.choice([-1, 1, 2, -8]))) % (1 << (8 * width))
    return data[:i] + v.to_bytes(width, "little") + data[i + width:]


GENERIC = [bit_flip, byte_run, truncate, delete_range, duplicate_range, huge_field]


# ------------------------------------------------------------------------------------------- pickles / zip


def _mutate_pickle(pkl: bytes, rng) -> bytes:
    """Edit one opcode of a pickle: its integer argument set huge/negative, a string renamed, the opcode dropped
    or doubled, or a nested pickle (the pickle itself, or a hostile one) spliced in as a bytes value."""
    try:
        ops = list(pickletools.genops(pkl))
    except Exception:
        return bit_flip(pkl, rng)
    if not ops:
        return pkl
    k = int(rng.integers(0, len(ops)))
    op, arg, pos = ops[k]
    end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
    choice = rng.random()
    if op.name in ("BININT", "BININT1", "BININT2", "LONG1", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET") \
            and choice < 0.6:
        v = int(rng.choice([2**31 - 1, -1, -(2**31), 0, 2**30, 255, 65535]))
        return pkl[:pos] + b"J" + struct.pack("<i", max(min(v, 2**31 - 1), -(2**31))) + pkl[end:]
    if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "GLOBAL", "SHORT_BINSTRING", "BINUNICODE8") and choice < 0.6:
        words = [b"os system", b"torch FloatStorage", b"torch HalfStorage", b"torch LongStorage",
                 b"torch._utils _rebuild_tensor_v2", b"builtins eval", b"collections OrderedDict", b"999",
                 b"cpu", b"storage", b"x" * 300, b"", b"\xff\xfe"]
        w = words[int(rng.integers(0, len(words)))]
        if op.name == "GLOBAL":
            mod, _, name = w.partition(b" ")
            return pkl[:pos] + b"c" + mod + b"\n" + (name or b"x") + b"\n" + pkl[end:]
        return pkl[:pos] + b"\x8c" + bytes([min(len(w), 255)]) + w[:255] + pkl[end:]
    if choice < 0.7:
        return pkl[:pos] + pkl[end:]
    if choice < 0.8:
        return pkl[:end] + pkl[pos:end] + pkl[end:]
    if choice < 0.9:  # nested pickle as a bytes value (a pickle inside the pickle)
        inner = pkl if rng.random() < 0.5 else b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idR."
        return pkl[:pos] + b"B" + struct.pack("<I", len(inner)) + inner + b"0" + pkl[pos:]
    return bit_flip(pkl[pos:end], rng).join([pkl[:pos], pkl[end:]])


def _legacy_pickle_spans(data: bytes):
    """Byte spans of the pickles at the start of a legacy torch file (magic, protocol, sys info, object, keys)."""
    spans, pos = [], 0
    for _ in range(5):
        try:
            ops = list(pickletools.genops(data[pos:]))
        except Exception:
            break
        end = pos + ops[-1][2] + 1
        spans.append((pos, end))
        pos = end
    return spans


def pickle_edit(data, rng):
    if data[:2] == b"PK":
        return zip_member_edit(data, rng, pickle_only=True)
    spans = _legacy_pickle_spans(data)
    if not spans:
        return bit_flip(data, rng)
    a, b = spans[min(int(rng.choice([3, 3, 3, 4, 2, 0])), len(spans) - 1)]
    return data[:a] + _mutate_pickle(data[a:b], rng) + data[b:]


def zip_member_edit(data, rng, pickle_only: bool = False):
    """Rewrite the zip with one member changed: the pickle (opcode edit), a storage (cut/grown/flipped), a member
    dropped, renamed or duplicated."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [(i, zf.read(i)) for i in zf.infolist()]
    except Exception:
        return bit_flip(data, rng)
    if not members:
        return bit_flip(data, rng)
    pkls = [k for k, (i, _) in enumerate(members) if i.filename.endswith("data.pkl")]
    k = pkls[0] if (pickle_only or rng.random() < 0.5) and pkls else int(rng.integers(0, len(members)))
    info, body = members[k]
    what = "pickle" if k in pkls else ["cut", "grow", "flip", "drop", "rename", "dup"][int(rng.integers(0, 6))]
    if what == "pickle":
        members[k] = (info, _mutate_pickle(body, rng))
    elif what == "cut":
        members[k] = (info, body[: _pos(body, rng)])
    elif what == "grow":
        members[k] = (info, body + b"\x00" * int(rng.integers(1, 64)))
    elif what == "flip":
        members[k] = (info, bit_flip(body, rng))
    elif what == "drop":
        del members[k]
    elif what == "rename":
        info.filename = info.filename.rsplit("/", 1)[0] + "/" + ["data.pkl", "9999", "../x", "byteorder"][
            int(rng.integers(0, 4))]
    else:
        members.append(members[k])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info, body in members:
            zi = zipfile.ZipInfo(info.filename)
            zi.compress_type = zipfile.ZIP_DEFLATED if rng.random() < 0.1 else zipfile.ZIP_STORED
            zf.writestr(zi, body)
    return out.getvalue()


def zip_header_edit(data, rng):
    """A field of a local or central zip header set huge or off by one (sizes, CRC, name length, offsets)."""
    sigs = [(b"PK\x03\x04", [14, 18, 22, 26, 28]), (b"PK\x01\x02", [16, 20, 24, 28, 30, 42]),
            (b"PK\x05\x06", [8, 10, 12, 16])]
    sig, fields = sigs[int(rng.integers(0, 3))]
    hits = [i for i in range(len(data)) if data.startswith(sig, i)] if len(data) < 300_000 else []
    if not hits:
        return huge_field(data, rng)
    i = hits[int(rng.integers(0, len(hits)))] + int(rng.choice(fields))
    width = 2 if data[i:i + 2] and rng.random() < 0.3 else 4
    v = int(rng.choice([0, 1, 2**32 - 1, 2**31, 0xFFFF])) % (1 << (8 * width))
    if rng.random() < 0.3:
        v = (int.from_bytes(data[i:i + width], "little") + 1) % (1 << (8 * width))
    return data[:i] + v.to_bytes(width, "little") + data[i + width:]


PTH = [pickle_edit, pickle_edit, zip_member_edit, zip_header_edit]


# ----------------------------------------------------------------------------------------------- safetensors


def _split_st(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_st(header, body, rng):
    raw = json.dumps(header).encode()
    if rng.random() < 0.3:
        raw += b" " * int(rng.integers(0, 8))
    return struct.pack("<Q", len(raw)) + raw + body


_ODD = [None, True, -1, 1.5, "x", [], {}, [1, 2], 2**63, -(2**63), 10**30, "F32", [2**40, 2**40], "\u0000"]


def header_edit(data, rng):
    """One edit of the safetensors header: a tensor's dtype, shape or offsets, a field removed/added/renamed,
    the header length field, or ``__metadata__`` itself."""
    try:
        header, body = _split_st(data)
    except Exception:
        return huge_field(data, rng)
    names = [k for k in header if k != "__metadata__"]
    r = rng.random()
    if r < 0.1:  # the length field
        (n,) = struct.unpack("<Q", data[:8])
        v = int(rng.choice([n + 1, n - 1, 0, 2**63, 2**64 - 1, len(data)]))
        return struct.pack("<Q", v % 2**64) + data[8:]
    if not names:
        return _join_st(header, body, rng)
    name = names[int(rng.integers(0, len(names)))]
    entry = header[name]
    if r < 0.3:
        entry["dtype"] = ["F16", "F32", "BF16", "I64", "U8", "BOOL", "F64", "F8_E4M3", "f32", "Q4", 7][
            int(rng.integers(0, 11))]
    elif r < 0.5:
        shape = list(entry.get("shape", []))
        op = int(rng.integers(0, 5))
        if op == 0 and shape:
            shape[int(rng.integers(0, len(shape)))] = _ODD[int(rng.integers(0, len(_ODD)))]
        elif op == 1 and shape:
            shape[int(rng.integers(0, len(shape)))] += int(rng.choice([-1, 1]))
        elif op == 2:
            shape.append(int(rng.choice([0, 1, 2])))
        elif op == 3:
            shape = shape[:-1] if shape else [2**62, 2**62]
        else:
            shape = shape[::-1]
        entry["shape"] = shape
    elif r < 0.7:
        offs = list(entry.get("data_offsets", [0, 0]))
        op = int(rng.integers(0, 4))
        if op == 0:
            offs = offs[::-1]
        elif op == 1:
            offs[int(rng.integers(0, 2))] = _ODD[int(rng.integers(0, len(_ODD)))]
        elif op == 2:
            offs = [o + int(rng.choice([-4, -1, 1, 2, len(body)])) if isinstance(o, int) else o for o in offs]
        else:
            offs = [0, len(body)]
        entry["data_offsets"] = offs
    elif r < 0.8:
        choice = int(rng.integers(0, 4))
        if choice == 0:
            del header[name]
        elif choice == 1:
            header[name + ".copy"] = dict(entry)
        elif choice == 2:
            header[name] = _ODD[int(rng.integers(0, len(_ODD)))]
        else:
            entry.pop(["dtype", "shape", "data_offsets"][int(rng.integers(0, 3))], None)
    else:
        meta = header.get("__metadata__")
        header["__metadata__"] = [_ODD[int(rng.integers(0, len(_ODD)))], None, [], "x", {"config": 1}][
            int(rng.integers(0, 5))] if not isinstance(meta, dict) or rng.random() < 0.2 else meta
    return _join_st(header, body, rng)


_CONFIG_VALUES = [None, True, False, -1, 0, 1, 2**31, 2**62, 10**30, 1e308, float("nan"), "x", "", [], {}, [1, 2],
                  [[1]], {"a": 1}, "voice", "hubert", "v1", "v2", 256, 768, 40000, "40k", [0], [10**9]]


def metadata_edit(data, rng):
    """An edit of ``__metadata__``: format/version strings, the config JSON replaced by another JSON type, a
    config field removed or given a value of another type or range."""
    try:
        header, body = _split_st(data)
        meta = dict(header.get("__metadata__") or {})
        config = json.loads(meta.get("config", "{}"))
    except Exception:
        return huge_field(data, rng)
    r = rng.random()
    if r < 0.1:
        meta["format_version"] = ["0", "2", "-1", "1.0", "", " 1", "99999999999999999999", "١"][int(rng.integers(0, 8))]
    elif r < 0.15:
        meta[["format", "format_version", "config"][int(rng.integers(0, 3))]] = "rvc-mlx"
    elif r < 0.2:
        meta.pop(["format", "format_version", "config"][int(rng.integers(0, 3))], None)
    elif r < 0.3:
        meta["config"] = json.dumps(_CONFIG_VALUES[int(rng.integers(0, len(_CONFIG_VALUES)))])
    elif r < 0.35:
        meta["config"] = meta.get("config", "")[: _pos(meta.get("config", ""), rng)]
    elif isinstance(config, dict) and config:
        keys = list(config)
        for _ in range(int(rng.integers(1, 4))):
            key = keys[int(rng.integers(0, len(keys)))]
            if rng.random() < 0.2:
                config.pop(key, None)
            else:
                config[key] = _CONFIG_VALUES[int(rng.integers(0, len(_CONFIG_VALUES)))]
        meta["config"] = json.dumps(config)
    header["__metadata__"] = meta
    return _join_st(header, body, rng)


SAFETENSORS = [header_edit, header_edit, metadata_edit, metadata_edit]


# ------------------------------------------------------------------------------------------------ faiss index


def index_field(data, rng):
    """One of the faiss header/structure fields (dimension, ntotal, nlist, vector/list counts) set huge, zero,
    negative or off by one, or a fourcc swapped."""
    fields = []
    for tag in (b"IxF2", b"IwFl", b"IxFI"):
        at = data.find(tag)
        while at >= 0:
            fields += [(at, 4), (at + 4, 4), (at + 8, 8), (at + 37, 4), (at + 41, 8)]
            if tag == b"IwFl":
                fields += [(at + 41, 8), (at + 49, 8)]
            at = data.find(tag, at + 1)
    for tag in (b"ilar", b"full", b"sprs"):
        at = data.find(tag)
        if at >= 0:
            fields += [(at + 4, 8), (at + 12, 8)]
    if not fields or rng.random() < 0.15:
        if rng.random() < 0.5 and fields:
            at = fields[0][0] - 4 if data[:4] in (b"IxF2", b"IwFl") else 0
            tags = [b"IxF2", b"IwFl", b"IxFI", b"IxFl", b"IwPQ", b"IHNf", b"IxMp", b"\0\0\0\0"]
            return data[:at] + tags[int(rng.integers(0, len(tags)))] + data[at + 4:]
        return huge_field(data, rng)
    i, width = fields[int(rng.integers(0, len(fields)))]
    if i + width > len(data):
        return data
    v = int(rng.choice(HUGE + [2**63, 3, 7, 8, 9, 16, 40, 41, 2]))
    if rng.random() < 0.3:
        v = int.from_bytes(data[i:i + width], "little") + int(rng.choice([-1, 1, 2]))
    v %= 1 << (8 * width)
    return data[:i] + v.to_bytes(width, "little") + data[i + width:]


INDEX = [index_field, index_field, index_field]


# ----------------------------------------------------------------------------------------------------- F0 CSV

_NUMBERS = [b"nan", b"inf", b"-inf", b"1e309", b"-1", b"0", b"1e-320", b"99999999", b"1e30", b"-0", b"0x10",
            b"1_000", b"\xef\xbb\xbf0", b" ", b"", b"1,2", b"1,2,3,4", b"\x00", b"\xff\xfe", b"\r", b"\n" * 3,
            b"time,f0,voiced", b"0.5,100,2", b"0.1,200,0", b"1e6,100", b"-5,100", b"3.0,1e5"]


def csv_edit(data, rng):
    """A number replaced (NaN, Inf, huge, negative, hex ...), a delimiter changed, lines dropped/duplicated/
    reordered, the header altered, a BOM or CRLF line ends, or the file made very long."""
    lines = data.split(b"\n")
    r = rng.random()
    i = int(rng.integers(0, len(lines)))
    if r < 0.4:
        cells = lines[i].split(b",")
        j = int(rng.integers(0, len(cells)))
        cells[j] = _NUMBERS[int(rng.integers(0, len(_NUMBERS)))]
        lines[i] = b",".join(cells)
    elif r < 0.5:
        lines[i] = lines[i].replace(b",", [b";", b"\t", b" ", b",,", b""][int(rng.integers(0, 5))])
    elif r < 0.6:
        del lines[i]
    elif r < 0.7:
        lines = lines[::-1] if rng.random() < 0.5 else lines + lines
    elif r < 0.75:
        lines = [b"\xef\xbb\xbf" + lines[0]] + lines[1:]
    elif r < 0.8:
        return data.replace(b"\n", b"\r\n")
    elif r < 0.85:  # many frames far apart in time: a long curve from a short file
        return data + b"".join(b"%d,100\n" % t for t in rng.integers(0, 10**int(rng.integers(1, 7)), 20))
    else:
        lines.insert(i, _NUMBERS[int(rng.integers(0, len(_NUMBERS)))])
    return b"\n".join(lines)


F0 = [csv_edit, csv_edit, csv_edit]


# -------------------------------------------------------------------------------------------------------- audio


def wav_field(data, rng):
    """A RIFF/WAVE header field set huge, zero or off by one: RIFF size, fmt (format tag, channels, rate, byte
    rate, block align, bits), data size; or a chunk id renamed."""
    if data[:4] != b"RIFF":
        return huge_field(data, rng)
    fmt, dat = data.find(b"fmt "), data.find(b"data")
    fields = [(4, 4)]
    if fmt >= 0:
        fields += [(fmt + 4, 4), (fmt + 8, 2), (fmt + 10, 2), (fmt + 12, 4), (fmt + 16, 4), (fmt + 20, 2),
                   (fmt + 22, 2)]
    if dat >= 0:
        fields += [(dat + 4, 4)]
    if rng.random() < 0.1:
        at = [0, 8, fmt, dat][int(rng.integers(0, 4))]
        return data[:at] + [b"RIFX", b"JUNK", b"LIST", b"fmt ", b"data"][int(rng.integers(0, 5))] + data[at + 4:]
    i, width = fields[int(rng.integers(0, len(fields)))]
    v = int(rng.choice(HUGE + [3, 6, 8, 24, 64, 0xFFFE, 255]))
    if rng.random() < 0.3:
        v = int.from_bytes(data[i:i + width], "little") + int(rng.choice([-1, 1, 2]))
    v %= 1 << (8 * width)
    return data[:i] + v.to_bytes(width, "little") + data[i + width:]


AUDIO = [wav_field, wav_field]

STRUCTURED = {"pth": PTH, "safetensors": SAFETENSORS, "index": INDEX, "f0": F0, "audio": AUDIO}


def mutate(target: str, data: bytes, rng) -> bytes:
    """1-3 mutations of ``data``: structure-aware ones for ``target`` about two times in three."""
    for _ in range(int(rng.integers(1, 4))):
        pool = STRUCTURED[target] if rng.random() < 0.65 else GENERIC
        try:
            data = pool[int(rng.integers(0, len(pool)))](data, rng)
        except Exception:  # a structured mutator met input it cannot parse (an earlier mutation): flip bits instead
            data = bit_flip(data, rng)
    return data
