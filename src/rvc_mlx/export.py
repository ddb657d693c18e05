"""Export a voice for ports (iOS / Swift): models in the MLX-layout format, retrieval vectors as a plain matrix,
a manifest describing every tensor, golden stage dumps, and FORMAT.md (the written contract).

Bundle layout (see ``data/FORMAT.md``, copied into every bundle)::

    BUNDLE/manifest.json  voice.safetensors  hubert.safetensors  [rmvpe.safetensors]  [index_vectors.safetensors]
           golden/clip1.safetensors  golden/clip2.safetensors  FORMAT.md

``export_bundle(...)`` writes it; ``load_bundle(dir)`` checks the checksums and returns a ``VoiceConverter`` that
behaves like the original voice (exact k-NN over the stored vectors). Nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .atomic import publish_modes, staging_dir
from .convert import sha256_file
from .errors import FormatError, InputError, RvcMlxError
from .store import STORAGE_DTYPES

BUNDLE_FORMAT = "rvc-mlx-bundle"
BUNDLE_FORMAT_VERSION = 1
TARGETS = ("ios",)
MANIFEST = "manifest.json"
FORMAT_DOC = "FORMAT.md"
INDEX_FILE = "index_vectors.safetensors"
INDEX_TENSOR = "vectors"
GOLDEN_DIR = "golden"
# Golden clips cut from the bundled demo recording: (name, start s, duration s)
GOLDEN_CLIPS = (("clip1", 0.5, 1.0), ("clip2", 3.0, 1.0))
SOURCE_STAGE = ("samples", "the clip fed to the pipeline (16 kHz mono float32), before peak limiting and high-pass")

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I32": "int32", "I64": "int64"}
# Axis order of each layout rule, in the stored (MLX) tensor.
LAYOUT_AXES = {
    "conv1d": "out, kernel, in",
    "conv_transpose1d": "out, kernel, in",
    "conv2d": "out, kh, kw, in",
    "conv_transpose2d": "out, kh, kw, in",
}
KEEP_AXES = {1: "channels", 2: "as PyTorch (Linear: out, in; Embedding: rows, dim; GRU: 3·hidden, in)",
             3: "as PyTorch (1, 2·window+1, head_dim)"}


def _rules_for(kind: str):
    from .convert import hubert, rmvpe, rvc

    return {"voice": rvc.ALL_RULES, "hubert": hubert.RULES, "rmvpe": rmvpe.RULES}[kind]


def tensor_layouts(kind: str, shapes: dict[str, tuple]) -> dict[str, dict]:
    """``name -> {shape, layout, axes}`` for a converted file of ``kind``, from the converter's rule table."""
    from .convert.common import layout_of

    rules = _rules_for(kind)
    out = {}
    for name, shape in sorted(shapes.items()):
        layout = layout_of(name, rules)
        if layout is None:
            raise FormatError(f"{kind}: tensor {name} is produced by no conversion rule")
        axes = LAYOUT_AXES.get(layout) or KEEP_AXES.get(len(shape), "as PyTorch")
        out[name] = {"shape": list(shape), "layout": layout, "axes": axes}
    return out


def _copy_model(src: Path, dst: Path, dtype: str) -> dict:
    """Copy a converted model, float tensors stored as ``dtype``; returns its config."""
    from . import store

    weights, config = store.load_numpy(src)
    config = {k: v for k, v in config.items() if k not in ("format", "format_version")}
    store.save(dst, weights, config, dtype=dtype)
    return store.read_config(dst)


def _file_entry(path: Path, kind: str, config: dict | None) -> dict:
    from safetensors import safe_open

    entry = {"kind": kind, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if config is not None:
        entry["config"] = config
    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_slice(k) for k in f.keys()}
        shapes = {k: tuple(s.get_shape()) for k, s in tensors.items()}
        dtypes = {k: SAFETENSORS_DTYPES.get(str(s.get_dtype()), str(s.get_dtype())) for k, s in tensors.items()}
    if kind in ("voice", "hubert", "rmvpe"):
        described = tensor_layouts(kind, shapes)
    else:
        described = {k: {"shape": list(v), "layout": "keep", "axes": "rows, dim"} for k, v in shapes.items()}
    entry["tensors"] = [{"name": k, "dtype": dtypes[k], **v} for k, v in described.items()]
    return entry


def pipeline_constants() -> dict:
    from . import pipeline, retrieval
    from .models import synthesizer

    return {
        "sample_rate_16k": pipeline.SAMPLE_RATE, "window": pipeline.WINDOW, "x_pad": pipeline.X_PAD,
        "x_query": pipeline.X_QUERY, "x_center": pipeline.X_CENTER, "x_max": pipeline.X_MAX,
        "input_peak": pipeline.INPUT_PEAK, "output_peak": pipeline.OUTPUT_PEAK,
        "high_pass": {"order": pipeline.HIGH_PASS_ORDER, "hz": pipeline.HIGH_PASS_HZ, "zero_phase": True},
        "protect_off": pipeline.PROTECT_OFF, "retrieval_k": retrieval.TOP_K,
        "retrieval_min_distance": retrieval.MIN_DISTANCE, "z_noise_scale": synthesizer.Z_NOISE_SCALE,
        "layer_norm_eps": synthesizer.LAYER_NORM_EPS, "flow_coupling_indices": [0, 2, 4, 6],
        "flow_reverse_order": [7, 6, 5, 4, 3, 2, 1, 0],
        "coarse_pitch": {"f0_min": 50.0, "f0_max": 1100.0, "bins": 255, "rounding": "half-to-even (rint)",
                         "unvoiced": 1},
        "rmvpe_decode": {"cents_per_bin": 20, "cents_offset": 1997.3794084376191, "radius": 4,
                         "threshold": 0.03, "f0_ref_hz": 10.0},
        "frame_rates": {"features": 50, "pitch": 100},
    }


def golden_clips() -> list[tuple[str, np.ndarray]]:
    """The two golden inputs: short 16 kHz clips of the bundled demo recording."""
    from . import audio as audio_io
    from .demo import demo_clip

    audio = audio_io.load(demo_clip(), 16000)
    clips = []
    for name, start, dur in GOLDEN_CLIPS:
        a, b = int(start * 16000), int((start + dur) * 16000)
        clip = audio[a:b]
        if clip.shape[0] < b - a:
            raise RvcMlxError(f"{demo_clip()}: demo recording is shorter than {start + dur} s")
        clips.append((name, clip.astype(np.float32)))
    return clips


def write_golden(converter, options, directory: Path) -> list[dict]:
    """Golden stage dumps (deterministic) of :func:`golden_clips` into ``directory``; returns manifest entries."""
    from . import parity
    from .pipeline import STAGES

    options = replace(options, deterministic=True)
    table = {"source": SOURCE_STAGE, **STAGES}
    entries = []
    for name, clip in golden_clips():
        stages, info = parity.dump(converter, clip, 16000, options)
        stages = {"source": clip, **stages}
        info["input"] = f"demo clip {name}"
        path = directory / f"{name}.safetensors"
        parity.save_dump(path, stages, info, table)
        entries.append({"file": f"{GOLDEN_DIR}/{path.name}", "seconds": clip.shape[0] / 16000,
                        "options": asdict(options), "sha256": sha256_file(path)})
    return entries


def _format_doc(manifest: dict) -> str:
    from importlib.resources import files

    text = files("rvc_mlx").joinpath("data", FORMAT_DOC).read_text(encoding="utf-8")
    voice = manifest["files"]["voice.safetensors"]["config"]
    facts = [
        "", "## This bundle", "",
        f"* voice: RVC {voice.get('version')}, {voice.get('sample_rate')} Hz, "
        f"{'pitch-guided' if voice.get('use_f0') else 'no pitch'}, vocoder {voice.get('vocoder', 'HiFi-GAN')} "
        f"(§4), {voice.get('feature_dim')}-d features, "
        f"{voice.get('n_speakers')} speaker(s), upsample rates {voice.get('upsample_rates')}",
        f"* tensors stored as {manifest['dtype']}",
        f"* files: {', '.join(sorted(manifest['files']))}",
        f"* golden dumps: {', '.join(g['file'] for g in manifest['golden']) or 'none'}",
        f"* created by {manifest['created_by']}, bundle format {manifest['format_version']}",
    ]
    return text.rstrip("\n") + "\n" + "\n".join(facts) + "\n"


def export_bundle(out_dir, voice, hubert, rmvpe=None, index=None, *, dtype: str = "float32", golden: bool = True,
                  options=None) -> dict:
    """Write a bundle to ``out_dir`` (created; must be empty or absent). Returns the manifest.

    ``dtype``: how the models' float tensors are stored (float32 | float16 | bfloat16; the golden dumps are always
    those of the float32 originals).
    ``voice``/``hubert``/``rmvpe``: converted ``.safetensors`` paths; ``index``: a faiss ``.index`` or None.
    ``options``: ``ConversionOptions`` for the golden dumps (forced deterministic)."""
    from . import __version__, store
    from .pipeline import ConversionOptions, VoiceConverter
    from .retrieval import FeatureIndex

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: output exists and is not an empty directory")
    voice_cfg = store.read_config(voice)
    if voice_cfg["kind"] != "voice":
        raise InputError(f"{voice}: is a {voice_cfg['kind']} model, not a voice model")
    if store.read_config(hubert)["kind"] != "hubert":
        raise InputError(f"{hubert}: not a HuBERT model")
    if voice_cfg.get("use_f0") and rmvpe is None:
        raise InputError(f"{voice}: pitch-guided voice needs an RMVPE model (--rmvpe)")
    if rmvpe is not None and store.read_config(rmvpe)["kind"] != "rmvpe":
        raise InputError(f"{rmvpe}: not an RMVPE model")

    # build in a sibling temp dir, then rename: no partial bundle on failure
    tmp = staging_dir(out_dir.parent, out_dir.name)
    try:
        files, configs = {}, {}
        for name, src, kind in (("voice", voice, "voice"), ("hubert", hubert, "hubert"), ("rmvpe", rmvpe, "rmvpe")):
            if src is not None:
                configs[f"{name}.safetensors"] = (_copy_model(Path(src), tmp / f"{name}.safetensors", dtype), kind)
        vectors = None
        if index is not None:
            from safetensors.numpy import save_file

            vectors = FeatureIndex.load(index).vectors
            save_file({INDEX_TENSOR: np.ascontiguousarray(vectors, np.float32)}, str(tmp / INDEX_FILE),
                      metadata={"format": BUNDLE_FORMAT, "content": "retrieval vectors (M, D) float32"})
            configs[INDEX_FILE] = (None, "index_vectors")
        for fname, (cfg, kind) in configs.items():
            files[fname] = _file_entry(tmp / fname, kind, cfg)

        golden_entries = []
        if golden:
            converter = VoiceConverter.load(voice, hubert=hubert, rmvpe=rmvpe)  # the originals (float32)
            if vectors is not None:
                converter.index = FeatureIndex.from_vectors(vectors, source=INDEX_FILE)
            opts = options or ConversionOptions(f0_method="rmvpe" if voice_cfg.get("use_f0") else "pm")
            (tmp / GOLDEN_DIR).mkdir()
            golden_entries = write_golden(converter, opts, tmp / GOLDEN_DIR)

        manifest = {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "target": "ios",
            "created_by": f"rvc-mlx {__version__}", "dtype": dtype,
            "sample_rates": {"input": 16000, "model": voice_cfg["sample_rate"], "f0_frame_rate": 100,
                             "feature_frame_rate": 50},
            "voice": {k: voice_cfg.get(k) for k in ("version", "sample_rate", "use_f0", "feature_dim", "n_speakers",
                                                  "vocoder")},
            "pipeline": pipeline_constants(),
            "files": files,
            "golden": golden_entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        (tmp / FORMAT_DOC).write_text(_format_doc(manifest), encoding="utf-8")
        publish_modes(tmp)  # the umask's modes, also for files safetensors wrote private
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(bundle, verify: bool = True) -> dict:
    """Read ``manifest.json`` of a bundle; with ``verify``, check every file's sha256."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise FormatError(f"{bundle}: not an rvc-mlx bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{path}: manifest is not valid JSON") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise FormatError(f"{path}: not an rvc-mlx bundle manifest")
    if int(manifest.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
        raise FormatError(f"{path}: bundle format {manifest['format_version']} is newer than this rvc-mlx reads")
    if verify:
        entries = dict(manifest.get("files", {}))
        entries.update({g["file"]: g for g in manifest.get("golden", [])})
        for name, entry in entries.items():
            f = bundle / name
            if not f.is_file():
                raise FormatError(f"{bundle}: {name} listed in the manifest is missing")
            if sha256_file(f) != entry["sha256"]:
                raise FormatError(f"{bundle}: {name} does not match its sha256 in the manifest (damaged?)")
    return manifest


def load_bundle(bundle, verify: bool = True):
    """A ``VoiceConverter`` from an exported bundle (half-precision tensors are upcast to float32 as they load)."""
    from safetensors.numpy import load_file

    from .pipeline import VoiceConverter
    from .retrieval import FeatureIndex

    bundle = Path(bundle)
    manifest = read_manifest(bundle, verify)
    files = manifest["files"]
    paths = {n: bundle / f"{n}.safetensors" if f"{n}.safetensors" in files else None
             for n in ("voice", "hubert", "rmvpe")}
    converter = VoiceConverter.load(paths["voice"], hubert=paths["hubert"], rmvpe=paths["rmvpe"])
    if INDEX_FILE in files:
        vectors = load_file(str(bundle / INDEX_FILE))[INDEX_TENSOR]
        converter.index = FeatureIndex.from_vectors(vectors, source=str(bundle / INDEX_FILE))
        converter.index.check_dim(converter.synthesizer.config.feature_dim)
    return converter


# -- CLI -----------------------------------------------------------------------------------------------------------


def cmd_export(args) -> int:
    from .service.args import options_from_args, paths_from_args

    if args.target not in TARGETS:
        raise InputError(f"unknown export target {args.target!r} (known: {', '.join(TARGETS)})")
    options = options_from_args(args)
    paths = paths_from_args(args, f0_method="rmvpe")  # the bundle carries RMVPE for every f0 voice
    manifest = export_bundle(args.output, paths.voice, paths.hubert, paths.rmvpe, paths.index, dtype=args.dtype,
                             golden=not args.no_golden, options=options)
    n = sum(len(f["tensors"]) for f in manifest["files"].values())
    print(f"{args.output}: {len(manifest['files'])} model files ({n} tensors, {manifest['dtype']}), "
          f"{len(manifest['golden'])} golden dumps, {MANIFEST}, {FORMAT_DOC}")
    return 0


def add_commands(sub) -> None:
    """Register ``export`` on the CLI's subparsers."""
    from .service.args import add_conversion_options

    p = sub.add_parser("export", help="export a voice bundle for ports (iOS/Swift): models, manifest, golden dumps")
    p.add_argument("--target", default="ios", help="bundle target (only 'ios')")
    p.add_argument("-o", "--output", required=True, help="bundle directory to create (must be empty or absent)")
    add_conversion_options(p)
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default="float32",
                   help="store float tensors as this (half the size as float16/bfloat16; compute stays float32)")
    p.add_argument("--fp16", dest="dtype", action="store_const", const="float16", help="same as --dtype float16")
    p.add_argument("--no-golden", action="store_true", help="skip the golden stage dumps")
    p.set_defaults(func=cmd_export)
