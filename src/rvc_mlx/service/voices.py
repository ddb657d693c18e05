"""The voice library: converted voices (and their ``.index``) under ``$RVC_MLX_HOME/voices/<name>/``.

Each voice is a folder holding ``voice.safetensors`` (our format, converted by the safe reader), optionally
``voice.index`` (faiss), and ``voice.json`` (where it came from). Names are checked so that no name can leave the
folder. ``resolve_voice`` turns what a user passes as ``-m`` (a library name, a converted file or an RVC ``.pth``)
into a converted file; a ``.pth`` given by path is converted once and cached by content hash.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import publish_modes, staging_dir
from ..errors import FormatError, InputError, RvcMlxError
from ..hub import models_dir

VOICE_FILE = "voice.safetensors"
INDEX_FILE = "voice.index"
META_FILE = "voice.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}$")
VOICE_SUFFIXES = (".pth", ".pt", ".safetensors", ".zip")
ZIP_MAX_MEMBERS = 64
ZIP_MAX_BYTES = 2 << 30  # uncompressed bytes of the members we extract (a voice is ~55 MB, an index up to ~1 GB)

# Facts shown by `info`, in order: (config key, label)
INFO_FIELDS = (
    ("kind", "kind"),
    ("version", "version"),
    ("sample_rate", "sample rate"),
    ("use_f0", "f0"),
    ("n_speakers", "speakers"),
    ("feature_dim", "feature dim"),
    ("vocoder", "vocoder"),
    ("embedder", "embedder"),
    ("model", "model"),
)


def model_facts(path: str | Path) -> dict:
    """Facts about a converted file or a convertible checkpoint/directory (converted in memory, nothing written)."""
    from .. import store
    from ..convert import convert_file, parameter_count

    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        config = store.read_config(path)
        shapes = store.tensor_shapes(path)
        facts = {k: config.get(k) for k, _ in INFO_FIELDS}
        facts["parameters"] = sum(_prod(s) for s in shapes.values())
        facts["format"] = f"rvc-mlx {config.get('format_version')}"
        dtype = store.storage_dtype(path)
        if dtype != "float32":
            facts["format"] += f", tensors stored as {dtype}"
    else:
        weights, config = convert_file(path)
        facts = {k: config.get(k) for k, _ in INFO_FIELDS}
        facts["parameters"] = parameter_count(weights)
        facts["format"] = "torch checkpoint (not converted)" if path.is_file() else "transformers directory"
    facts["source_sha256"] = config.get("source_sha256")
    return facts


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def check_name(name: str) -> str:
    """``name`` if it is a valid voice name (letters, digits, space and ``._+-``, at most 64, no leading dot)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name.endswith((".", " ")) or ".." in name:
        raise InputError(f"invalid voice name {name!r}: use letters, digits, spaces and ._+- (at most 64)")
    return name


def name_from_filename(filename: str) -> str:
    """A voice name made from an uploaded file's name: its stem with anything unusual replaced."""
    stem = Path(filename).stem if filename else ""
    name = re.sub(r"[^A-Za-z0-9 ._+-]", "_", stem).strip(" ._")[:64].strip(" ._")
    return name or "voice"


@dataclass(frozen=True)
class Voice:
    """One library voice: its converted file, optional index and the facts a front end shows."""

    name: str
    path: str
    index: str | None
    version: str | None
    sample_rate: int | None
    use_f0: bool | None
    n_speakers: int | None
    vocoder: str | None
    embedder: str | None
    source: str | None
    source_sha256: str | None
    added: float | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["has_index"] = d.pop("index") is not None
        d.pop("path")  # server paths stay on the server
        return d


class VoiceLibrary:
    """Voices under ``root`` (default ``$RVC_MLX_HOME/voices``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else models_dir() / "voices"

    def folder(self, name: str) -> Path:
        folder = (self.root / check_name(name)).resolve()
        if folder.parent != self.root.resolve():
            raise InputError(f"invalid voice name {name!r}")
        return folder

    def exists(self, name: str) -> bool:
        try:
            return (self.folder(name) / VOICE_FILE).is_file()
        except InputError:
            return False

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if (p / VOICE_FILE).is_file()), key=str.lower)

    def list(self) -> list[Voice]:
        return [self.get(n) for n in self.names()]

    def get(self, name: str) -> Voice:
        from .. import store

        folder = self.folder(name)
        path = folder / VOICE_FILE
        if not path.is_file():
            raise NotFound(f"voice {name!r} not found")
        config = store.read_config(path)
        meta = {}
        if (folder / META_FILE).is_file():
            try:
                meta = json.loads((folder / META_FILE).read_text())
            except (OSError, ValueError):
                meta = {}
        index = folder / INDEX_FILE
        return Voice(
            name=folder.name, path=str(path), index=str(index) if index.is_file() else None,
            version=config.get("version"), sample_rate=config.get("sample_rate"), use_f0=config.get("use_f0"),
            n_speakers=config.get("n_speakers"), vocoder=config.get("vocoder"), embedder=config.get("embedder"),
            source=meta.get("source") if isinstance(meta, dict) else None,
            source_sha256=config.get("source_sha256"), added=meta.get("added") if isinstance(meta, dict) else None,
        )

    def remove(self, name: str) -> None:
        folder = self.folder(name)
        if not (folder / VOICE_FILE).is_file():
            raise NotFound(f"voice {name!r} not found")
        shutil.rmtree(folder)

    def add(self, model: str | Path, name: str | None = None, index: str | Path | None = None,
            source_name: str | None = None, replace: bool = False) -> Voice:
        """Add a voice from an RVC ``.pth``, a converted ``.safetensors`` or a ``.zip`` holding one of them
        (plus optionally an ``.index``). ``index`` may also be given separately. ``source_name``: the name the
        user gave the file (uploads arrive under temporary names). Nothing is left behind on failure."""
        model = Path(model)
        label = source_name or model.name
        if not model.is_file():
            raise InputError(f"{label}: voice model file not found")
        name = check_name(name or name_from_filename(label))
        folder = self.folder(name)
        if (folder / VOICE_FILE).exists() and not replace:
            raise Conflict(f"voice {name!r} already exists; remove it first or pick another name")
        staging = staging_dir(self.root, name)
        try:
            suffix = _suffix(model, label)
            if suffix == ".zip":
                model, zip_index = _unpack_zip(model, label, staging)
                index = index or zip_index
            config = _write_voice(model, label, staging / VOICE_FILE)
            if index is not None:
                _check_index(Path(index), config, staging / INDEX_FILE)
            meta = {"name": name, "source": Path(label).name, "added": time.time()}
            (staging / META_FILE).write_text(json.dumps(meta))
            publish_modes(staging)
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return self.get(name)


class NotFound(RvcMlxError):
    """Something a client named does not exist (HTTP 404)."""


class Conflict(RvcMlxError):
    """The request conflicts with what exists (HTTP 409)."""


def _suffix(model: Path, label: str) -> str:
    for candidate in (Path(label).suffix.lower(), model.suffix.lower()):
        if candidate in VOICE_SUFFIXES:
            return candidate
    with open(model, "rb") as f:
        head = f.read(4)
    return ".zip" if head == b"PK\x03\x04" and not _is_torch_zip(model) else ".pth"


def _is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _write_voice(model: Path, label: str, out: Path) -> dict:
    """Convert (or validate and copy) the voice model to ``out``; returns its config."""
    from .. import store
    from ..convert import convert_file

    if model.suffix.lower() == ".safetensors" or label.lower().endswith(".safetensors"):
        try:
            config = store.read_config(model)
            store.tensor_shapes(model)
        except FormatError as e:
            raise FormatError(f"{label}: {str(e).split(': ', 1)[-1]}") from None
        if config.get("kind") != "voice":
            raise InputError(f"{label}: is a {config.get('kind')} model, not a voice model")
        shutil.copyfile(model, out)
        return config
    try:
        weights, config = convert_file(model, kind="voice")
    except RvcMlxError as e:
        raise type(e)(str(e).replace(str(model), label)) from None
    store.save(out, weights, config)
    return config


def _check_index(index: Path, config: dict, out: Path) -> None:
    from ..retrieval import FeatureIndex

    if not index.is_file():
        raise InputError(f"{index.name}: index file not found")
    loaded = FeatureIndex.load(index)
    loaded.check_dim(int(config.get("feature_dim") or 0))
    shutil.copyfile(index, out)


def _unpack_zip(path: Path, label: str, staging: Path) -> tuple[Path, Path | None]:
    """The voice model (and index) inside a zip, copied into ``staging`` member by member (never
    ``extractall``: member names are not trusted), with the member count and sizes capped."""
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{label}: not a zip file (or a damaged one)") from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
        if len(infos) > ZIP_MAX_MEMBERS:
            raise InputError(f"{label}: zip has {len(infos)} files; a voice zip holds a .pth and an .index")
        models = [i for i in infos if i.filename.lower().endswith((".pth", ".safetensors"))]
        indexes = [i for i in infos if i.filename.lower().endswith(".index")]
        if len(models) != 1:
            found = ", ".join(i.filename for i in models) or "none"
            raise InputError(f"{label}: zip must hold exactly one .pth or .safetensors voice (found {found})")
        if len(indexes) > 1:  # RVC writes trained_*.index and added_*.index; retrieval uses added_*
            added = [i for i in indexes if Path(i.filename).name.startswith("added")]
            if len(added) != 1:
                raise InputError(f"{label}: zip holds several .index files: {', '.join(i.filename for i in indexes)}")
            indexes = added
        wanted = models + indexes
        if sum(i.file_size for i in wanted) > ZIP_MAX_BYTES:
            raise InputError(f"{label}: zip members are too large ({sum(i.file_size for i in wanted):,} bytes)")
        out = []
        for info in wanted:
            dest = staging / ("zip-model" + Path(info.filename).suffix.lower() if info in models else "zip.index")
            with z.open(info) as src, open(dest, "wb") as dst:
                copied = _copy_capped(src, dst, info.file_size)
            if copied != info.file_size:
                raise InputError(f"{label}: zip member {info.filename} is damaged")
            out.append(dest)
    return out[0], (out[1] if len(out) > 1 else None)


def _copy_capped(src, dst, limit: int) -> int:
    n = 0
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            return n
        n += len(chunk)
        if n > limit:  # more data than the header declared
            return n
        dst.write(chunk)


def resolve_voice(model: str | Path, library: VoiceLibrary | None = None) -> tuple[Path, Path | None]:
    """A converted voice file for ``model`` and the index that goes with it (library voices only):
    a library voice name, a converted ``.safetensors``, or an RVC ``.pth`` (converted once, cached by hash)."""
    from .. import store
    from ..convert import convert_file, sha256_file

    src = Path(model)
    library = library or VoiceLibrary()
    if not src.is_file():
        if isinstance(model, str) and library.exists(model):
            voice = library.get(model)
            return Path(voice.path), Path(voice.index) if voice.index else None
        raise RvcMlxError(f"{src}: voice model not found (not a file, nor a voice in {library.root})")
    if src.suffix == ".safetensors":
        return src, None
    cached = models_dir() / "cache" / "voices" / f"{src.stem}-{sha256_file(src)[:16]}.safetensors"
    if cached.is_file():
        try:
            store.read_config(cached)
            return cached, None
        except FormatError:
            pass  # damaged cache entry: convert again
    weights, config = convert_file(src, kind="voice")
    store.save(cached, weights, config)
    return cached, None
