"""The work behind every front end: convert a file, a batch, estimate pitch, download a base model, add a voice.

``convert_file`` is what ``rvc-mlx infer`` and the server both run, so their outputs are the same bytes.
``run(kind, request, job_dir, context, progress)`` runs one job's request (JSON, paths relative to the job's
folder) and returns its result (JSON); it is what the worker process calls. Progress is reported as
``progress({"stage", "fraction", "overall"})``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, RvcMlxError, SilentAudioError
from ..options import ConversionOptions, parse_options
from .cache import ConverterCache
from .models import f0_model_paths, resolve_models
from .voices import VoiceLibrary

Emit = Callable[[dict], None]
WRITE_FORMATS = ("wav", "flac", "ogg", "mp3")
PITCH_FORMATS = ("csv", "json")
# share of a conversion's time per stage (for one overall fraction); measured roughly on 30 s of speech
CONVERT_WEIGHTS = {"load": 0.05, "f0": 0.15, "convert": 0.72, "post": 0.03, "write": 0.05}


class StageProgress:
    """Turns ``(stage, fraction)`` reports into ``{"stage", "fraction", "overall"}`` events, where overall
    runs over ``span`` of the whole job by the stage ``weights``."""

    def __init__(self, emit: Emit | None, weights: dict[str, float], span: tuple[float, float] = (0.0, 1.0),
                 label: str | None = None):
        self.emit, self.weights, self.span, self.label = emit, weights, span, label
        self.total = sum(weights.values())

    def __call__(self, stage: str, fraction: float) -> None:
        if self.emit is None:
            return
        before = 0.0
        for name, w in self.weights.items():
            if name == stage:
                break
            before += w
        share = (before + self.weights.get(stage, 0.0) * min(max(fraction, 0.0), 1.0)) / self.total
        lo, hi = self.span
        event = {"stage": stage, "fraction": round(fraction, 4), "overall": round(lo + (hi - lo) * share, 4)}
        if self.label:
            event["item"] = self.label
        self.emit(event)


def convert_file(converter, options: ConversionOptions, src: Path, out: Path, fmt: str | None = None,
                 progress: Callable[[str, float], None] | None = None, want_f0: bool = False) -> dict:
    """Read ``src``, convert it, write ``out`` (atomically) in ``fmt`` (default: from its name).
    Returns ``{"sample_rate", "seconds"}`` (plus ``"f0_in"``, ``"f0_out"`` contours when ``want_f0``)."""
    from .. import audio as audio_io

    report = progress or (lambda stage, fraction: None)
    fmt = (fmt or out.suffix.lstrip(".") or "wav").lower()
    if fmt not in WRITE_FORMATS:
        raise InputError(f"{out}: cannot write format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    audio, sr = audio_io.read(src)
    audio = audio_io.check(audio, sr, str(src))
    result, out_sr = converter.convert(audio, sr, options, progress=report)
    report("write", 0.0)
    audio_io.write(out, result, out_sr, fmt)
    report("write", 1.0)
    info = {"sample_rate": int(out_sr), "seconds": round(result.shape[0] / out_sr, 3)}
    if want_f0:
        info["f0_in"], info["f0_out"] = contours(converter, options, audio, sr, result, out_sr)
    return info


def contours(converter, options: ConversionOptions, audio, sr: int, result, out_sr: int):
    """F0 of the input (shifted by the pitch option, as the voice was asked to sing) and of the output, both
    with the conversion's F0 method (pm for voices without pitch), at 100 fps."""
    from .. import audio as audio_io
    from ..f0 import F0Options, estimate
    from ..f0.postprocess import shift

    method = options.f0_method if converter.synthesizer.config.use_f0 else "pm"
    opts = F0Options(rmvpe_path=converter.f0_models.get("rmvpe"))
    if method == "rmvpe" and not opts.rmvpe_path:
        method = "pm"
    f0_in = shift(estimate(method, audio_io.resample(audio, sr, 16000), opts), options.pitch)
    f0_out = estimate(method, audio_io.resample(result, out_sr, 16000), opts)
    return np.asarray(f0_in, np.float32), np.asarray(f0_out, np.float32)


# -- jobs ---------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a task may use: the voice library, the converter cache, and the models directory."""

    library: VoiceLibrary = field(default_factory=VoiceLibrary)
    cache: ConverterCache = field(default_factory=ConverterCache)


def job_path(job_dir: Path, rel: str) -> Path:
    """``rel`` inside ``job_dir`` (requests name files relative to their job's folder, never elsewhere)."""
    path = (job_dir / rel).resolve()
    if not isinstance(rel, str) or job_dir.resolve() not in path.parents:
        raise InputError(f"{rel!r}: not a file of this job")
    return path


def _options(request: dict, job_dir: Path) -> ConversionOptions:
    values = dict(request.get("options") or {})
    if values.get("f0_file"):
        values["f0_file"] = str(job_path(job_dir, values["f0_file"]))
    return parse_options(values)


def _converter(request: dict, options: ConversionOptions, ctx: Context):
    paths = resolve_models(request["voice"], f0_method=options.f0_method, use_index=request.get("use_index", True),
                           library=ctx.library)
    return ctx.cache.converter(paths), paths


def output_name(input_name: str, fmt: str) -> str:
    return f"{Path(input_name).stem or 'audio'}.{fmt}"


def task_convert(request: dict, job_dir: Path, ctx: Context, emit: Emit | None) -> dict:
    fmt = request.get("format", "wav")
    options = _options(request, job_dir)
    progress = StageProgress(emit, CONVERT_WEIGHTS)
    progress("load", 0.0)
    converter, paths = _converter(request, options, ctx)
    progress("load", 1.0)
    src = job_path(job_dir, request["inputs"][0])
    shown = request.get("input_names", [src.name])[0]
    name = output_name(shown, fmt)
    out = job_dir / "output" / name
    try:
        info = convert_file(converter, options, src, out, fmt, progress, want_f0=bool(request.get("pitch_plot")))
    except RvcMlxError as e:
        raise renamed(e, src, shown) from None
    files = [{"name": name, "path": f"output/{name}", "format": fmt, **info_fields(info)}]
    if request.get("pitch_plot"):
        from ..f0.report import plot_contours

        plot_contours(job_dir / "output" / "pitch.png", {"input (shifted)": info["f0_in"], "output": info["f0_out"]},
                      title=f"pitch: {name}")
        files.append({"name": "pitch.png", "path": "output/pitch.png", "format": "png"})
    return {"files": files, "voice": request["voice"], "options": options.to_dict(), "index": bool(paths.index)}


def renamed(error: RvcMlxError, path: Path, shown: str) -> RvcMlxError:
    """The same error naming the file as the client named it (uploads are stored under job paths)."""
    return type(error)(str(error).replace(str(path), shown))


def info_fields(info: dict) -> dict:
    return {k: v for k, v in info.items() if k in ("sample_rate", "seconds")}


def task_batch(request: dict, job_dir: Path, ctx: Context, emit: Emit | None) -> dict:
    fmt = request.get("format", "wav")
    options = _options(request, job_dir)
    converter, paths = _converter(request, options, ctx)
    inputs = request["inputs"]
    names = request.get("input_names", [Path(p).name for p in inputs])
    out_dir = job_dir / "output" / "converted"
    done, failed, silent, used = [], [], [], set()
    for i, (rel, shown) in enumerate(zip(inputs, names)):
        progress = StageProgress(emit, CONVERT_WEIGHTS, (i / len(inputs), (i + 1) / len(inputs)), label=shown)
        name = output_name(shown, fmt)
        while name in used:  # two inputs with one stem (a.wav, a.flac): keep both
            name = f"{Path(name).stem}-{len(used)}.{fmt}"
        used.add(name)
        try:
            convert_file(converter, options, job_path(job_dir, rel), out_dir / name, fmt, progress)
            done.append(name)
        except SilentAudioError:  # a silent take: reported, not converted, and not a failure
            silent.append(shown)
        except RvcMlxError as e:
            failed.append({"input": shown, "error": str(renamed(e, job_path(job_dir, rel), shown))})
    if not done and failed:
        raise InputError(f"batch: no file could be converted ({failed[0]['error']})")
    if not done and not silent:
        raise InputError("batch: no files")
    archive = job_dir / "output" / "converted.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)  # a batch of silent takes only converted nothing
    tmp = archive.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in done:
            z.write(out_dir / name, name)
    tmp.replace(archive)
    files = [{"name": "converted.zip", "path": "output/converted.zip", "format": "zip"}]
    files += [{"name": n, "path": f"output/converted/{n}", "format": fmt} for n in done]
    return {"files": files, "voice": request["voice"], "options": options.to_dict(), "converted": len(done),
            "failed": failed, "skipped_silent": silent, "index": bool(paths.index)}


PITCH_RULE = ("The contour is the one a conversion with the same --f0-method uses (the same 16 kHz high-passed "
              "audio, 1 s padding and harvest's --filter-radius median filter), one row per 10 ms from time 0, "
              "before --autotune and --pitch. Given back to infer as --f0-file with the same --f0-method it "
              "changes nothing (edit it to change the melody); --pitch and --autotune apply to it once, and the "
              "1 s padding around the audio is still estimated with --f0-method.")


def pitch_contour_of(src: Path, method: str, models: dict[str, str | None] | None = None,
                     filter_radius: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(f0, audio16k)`` of audio file ``src``: f0 (T,) float32 Hz at 100 fps as a conversion with ``method``
    uses it (``pipeline.pitch_contour``; see ``PITCH_RULE``), and the file at 16 kHz (for a plot).
    ``models``: ``f0_model_paths(method, ...)`` (default: resolved from the models directory)."""
    from .. import audio as audio_io
    from ..f0 import F0Options
    from ..pipeline import SAMPLE_RATE, pitch_contour

    values = {"f0_method": method} if filter_radius is None else {"f0_method": method, "filter_radius": filter_radius}
    options = parse_options(values)  # the same method names and ranges as conversions
    models = f0_model_paths(method) if models is None else models
    audio, sr = audio_io.read(src)
    audio = audio_io.check(audio, sr, str(src))
    f0 = pitch_contour(audio, sr, method, F0Options(**{f"{k}_path": v for k, v in models.items()}),
                       options.filter_radius)
    return f0, audio_io.resample(audio, sr, SAMPLE_RATE)


def task_pitch(request: dict, job_dir: Path, ctx: Context, emit: Emit | None) -> dict:
    from ..f0 import report

    method = request.get("method", "rmvpe")
    fmt = request.get("format", "csv")
    if fmt not in PITCH_FORMATS:
        raise InputError(f"unknown pitch format {fmt!r} (choose from {', '.join(PITCH_FORMATS)})")
    parse_options({"f0_method": method})  # the same method names as conversions
    if emit:
        emit({"stage": "f0", "fraction": 0.0, "overall": 0.0})
    src = job_path(job_dir, request["inputs"][0])
    try:
        f0, _ = pitch_contour_of(src, method)
    except RvcMlxError as e:
        raise renamed(e, src, request.get("input_names", [src.name])[0]) from None
    out = job_dir / "output" / f"f0.{fmt}"
    if fmt == "csv":
        report.write_csv(out, f0)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(pitch_json(f0)))
    if emit:
        emit({"stage": "f0", "fraction": 1.0, "overall": 1.0})
    voiced = f0[f0 > 0]
    return {"files": [{"name": out.name, "path": f"output/{out.name}", "format": fmt}], "method": method,
            "frames": int(f0.shape[0]), "voiced": int(voiced.shape[0]),
            "median_hz": round(float(np.median(voiced)), 3) if voiced.size else None}


def pitch_json(f0: np.ndarray) -> dict:
    from ..f0 import HOP, SAMPLE_RATE

    return {"frame_seconds": HOP / SAMPLE_RATE, "f0": [round(float(x), 3) for x in f0]}


def task_download(request: dict, job_dir: Path, ctx: Context, emit: Emit | None) -> dict:
    from ..hub import BASE_MODELS, download

    name = request["name"]
    if name not in BASE_MODELS:
        raise InputError(f"unknown base model {name!r} (choose from {', '.join(BASE_MODELS)})")
    if emit:
        emit({"stage": "download", "fraction": 0.0, "overall": 0.0})
    path = download(name, force=bool(request.get("force")))
    if emit:
        emit({"stage": "download", "fraction": 1.0, "overall": 1.0})
    return {"name": name, "kind": BASE_MODELS[name].kind, "bytes": path.stat().st_size, "files": []}


def task_add_voice(request: dict, job_dir: Path, ctx: Context, emit: Emit | None) -> dict:
    model = job_path(job_dir, request["model"])
    index = job_path(job_dir, request["index"]) if request.get("index") else None
    voice = ctx.library.add(model, name=request.get("name"), index=index,
                            source_name=request.get("model_name"), replace=bool(request.get("replace")))
    return {"voice": voice.to_dict(), "files": []}


TASKS = {
    "convert": task_convert,
    "batch": task_batch,
    "pitch": task_pitch,
    "download": task_download,
    "add-voice": task_add_voice,
}


def run(kind: str, request: dict, job_dir: Path, ctx: Context, emit: Emit | None = None) -> dict:
    if kind not in TASKS:
        raise InputError(f"unknown job kind {kind!r}")
    return TASKS[kind](request, Path(job_dir), ctx, emit)
