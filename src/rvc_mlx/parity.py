"""Parity kit: dump every pipeline stage to a file, compare two dumps, and name the first stage that diverges.

A *stage dump* is a ``.safetensors`` file with one tensor per pipeline stage (``pipeline.STAGES``) and a
self-describing ``__metadata__`` (all values are strings, JSON where structured)::

    format          "rvc-mlx-stages"
    format_version  "1"
    stages          JSON list, in pipeline order, of {"name", "axes", "meaning", "shape", "dtype"}
    info            JSON object: producer, options, model facts, sample rates, frame rates

Axis names: ``samples`` (audio samples), ``frames50`` (HuBERT frames, 50 per second at 16 kHz), ``frames100``
(pitch/synthesizer frames, 100 per second), ``channels``. Everything is channels-last ``(frames, channels)``,
without a batch axis. A port (Swift, C++, ...) writes the same file from its own pipeline and runs
``rvc-mlx compare golden.safetensors port.safetensors --report report.html``.

Comparison metrics per stage (A is the reference side): max |diff|, RMSE, relative RMSE (RMSE / RMS of A),
Pearson correlation; F0: cents error on frames voiced in both and the fraction of frames whose voicing differs;
coarse pitch: fraction of differing frames and the largest bin difference; audio: log-mel correlation. Each
stage kind has a tolerance (``TOLERANCES``); the first stage, in pipeline order, beyond it is *the first
divergent stage* — the place to look, because every later stage inherits the error.

This module imports neither MLX nor matplotlib at import time (the CLI stays light): ``dump`` needs a
``VoiceConverter``; ``compare`` needs only numpy; ``write_report`` uses matplotlib (Agg).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import FormatError, InputError

DUMP_FORMAT = "rvc-mlx-stages"
DUMP_FORMAT_VERSION = 1
SAMPLE_RATE_16K = 16000
F0_FRAME_RATE = 100
FEATURE_FRAME_RATE = 50

# Which comparison each stage gets. Stages not listed: "features" (float tensors) or "pitch" if integer.
F0_STAGES = ("f0", "f0_frames")
PITCH_STAGES = ("pitch", "coarse_pitch")
AUDIO_STAGES = ("input16k", "generator", "audio")
WHOLE_INPUT_STAGES = ("source", "input16k", "f0", "pitch")  # computed once for the whole input, before pieces

# Tolerances per stage kind (a stage passes when every listed bound holds).
#  features: relative RMSE (RMSE / RMS of A). Float32 reimplementations of the same network agree to ~1e-6
#            (measured: rvc-mlx vs PyTorch ≤ 3e-6); a layout or constant bug gives 1e-3 .. 1.
#  audio:    relative RMSE and log-mel correlation; the NSF sine phase accumulates float32 rounding over the
#            clip, so audio gets a looser bound than features.
#  f0:       cents on frames voiced in both, fraction of frames whose voicing differs.
#  pitch:    fraction of differing frames and the largest bin difference (rounding of bins exactly at .5 may
#            legitimately differ between float64 and float32 evaluation).
TOLERANCES = {
    "features": {"rel_rmse": 1e-4},
    "audio": {"rel_rmse": 1e-2, "mel_corr_min": 0.999},
    "f0": {"max_cents": 5.0, "voicing_mismatch": 0.01},
    "pitch": {"mismatch": 0.01, "max_bins": 1},
}

MEL_N_FFT = 1024
MEL_HOP = 256
MEL_BANDS = 80
MEL_FLOOR = 1e-5


# -- dump ------------------------------------------------------------------------------------------------------


def _stage_table() -> dict[str, tuple[str, str]]:
    from .pipeline import STAGES

    return STAGES


def order_stages(names, table: dict[str, tuple[str, str]]) -> list[str]:
    """``names`` in pipeline order: whole-input stages (``WHOLE_INPUT_STAGES``), then the per-piece stages of
    piece 0, piece 1 (``name.1``), ... in ``table`` order, then ``audio``; unknown names last, as given."""
    known = list(table)

    def key(item):
        i, name = item
        base, _, piece = name.partition(".")
        if base not in known:
            return (3, 0, 0, i)
        group = 0 if base in WHOLE_INPUT_STAGES else 2 if base == "audio" else 1
        return (group, int(piece) if piece.isdigit() else 0, known.index(base), i)

    return [n for _, n in sorted(enumerate(names), key=key)]


def save_dump(path: str | os.PathLike, stages: dict[str, np.ndarray], info: dict,
              table: dict[str, tuple[str, str]] | None = None) -> None:
    """Write ``stages`` (name -> array) with names, axes, meanings, shapes and dtypes in the metadata.

    Float stages are stored as float32, integer stages as int32; ``info`` is free JSON (producer, options...)."""
    from safetensors.numpy import save_file

    from .atomic import atomic_write

    table = table if table is not None else _stage_table()
    arrays, described = {}, []
    for name in order_stages(list(stages), table):
        arr = np.asarray(stages[name])
        arr = arr.astype(np.int32) if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32)
        arrays[name] = np.ascontiguousarray(arr)
        axes, meaning = table.get(name.partition(".")[0], ("", ""))
        described.append({"name": name, "axes": axes, "meaning": meaning, "shape": list(arr.shape),
                          "dtype": str(arr.dtype)})
    meta = {"format": DUMP_FORMAT, "format_version": str(DUMP_FORMAT_VERSION),
            "stages": json.dumps(described), "info": json.dumps(info, default=str)}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


@dataclass
class Dump:
    """A loaded stage dump: ``stages`` in file order, their descriptions, and the producer's ``info``."""

    path: str
    stages: dict[str, np.ndarray]
    described: dict[str, dict]
    info: dict = field(default_factory=dict)


def load_dump(path: str | os.PathLike) -> Dump:
    """Read a stage dump; raises ``FormatError`` (one line naming the file) when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: stage dump not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != DUMP_FORMAT:
                raise FormatError(f"{path}: not a stage dump (no '{DUMP_FORMAT}' format marker); "
                                  "write one with `rvc-mlx dump`")
            described = {d["name"]: d for d in json.loads(meta["stages"])}
            info = json.loads(meta.get("info", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FormatError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise FormatError(f"{path}: stage dump metadata is damaged ({e})") from None
    except Exception as e:  # safetensors raises its own (Rust) error type for damaged files
        raise FormatError(f"{path}: cannot read stage dump ({type(e).__name__}: {e})") from None
    if int(meta.get("format_version", "0")) > DUMP_FORMAT_VERSION:
        raise FormatError(f"{path}: stage dump version {meta['format_version']} is newer than this rvc-mlx reads")
    order = [n for n in described if n in tensors] + [n for n in tensors if n not in described]
    return Dump(str(path), {n: tensors[n] for n in order}, described, info)


def dump(converter, audio: np.ndarray, sr: int, options) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``converter`` (a ``VoiceConverter``) on ``audio`` recording every stage.

    Returns ``(stages, info)`` ready for :func:`save_dump`."""
    from . import __version__

    trace: dict[str, np.ndarray] = {}
    out, out_sr = converter.convert(audio, sr, options, trace=trace)
    cfg = converter.synthesizer.config
    info = {
        "producer": f"rvc-mlx {__version__}",
        "options": asdict(options),
        "model": {"version": cfg.version, "sample_rate": cfg.sample_rate, "use_f0": cfg.use_f0,
                  "feature_dim": cfg.feature_dim},
        "input_sample_rate": int(sr),
        "pipeline_sample_rate": SAMPLE_RATE_16K,
        "output_sample_rate": int(out_sr),
        "frame_rates": {"frames50": FEATURE_FRAME_RATE, "frames100": F0_FRAME_RATE},
        "index": converter.index is not None,
    }
    return trace, info


# -- compare ---------------------------------------------------------------------------------------------------


def stage_kind(name: str, arr: np.ndarray | None = None) -> str:
    base = name.partition(".")[0]
    if base in F0_STAGES:
        return "f0"
    if base in PITCH_STAGES or (arr is not None and np.issubdtype(arr.dtype, np.integer)):
        return "pitch"
    if base in AUDIO_STAGES:
        return "audio"
    return "features"


def _mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """HTK mel filterbank (n_mels, n_fft//2 + 1), triangles between 0 and sr/2."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    pts = hz(np.linspace(mel(0.0), mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.maximum(0.0, np.minimum(up, down))


def log_mel(audio: np.ndarray, sr: int) -> np.ndarray:
    """Log-mel spectrogram (frames, MEL_BANDS) of mono audio: Hann window, |STFT|, log(max(mel, 1e-5))."""
    x = np.asarray(audio, np.float64).reshape(-1)
    if x.shape[0] < MEL_N_FFT:
        x = np.pad(x, (0, MEL_N_FFT - x.shape[0]))
    n = 1 + (x.shape[0] - MEL_N_FFT) // MEL_HOP
    idx = np.arange(MEL_N_FFT)[None] + MEL_HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(MEL_N_FFT)[None], axis=1))
    return np.log(np.maximum(spec @ _mel_filterbank(sr, MEL_N_FFT, MEL_BANDS).T, MEL_FLOOR))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(a @ b) / den


@dataclass
class StageResult:
    name: str
    kind: str
    shape_a: tuple
    shape_b: tuple | None
    metrics: dict = field(default_factory=dict)
    passed: bool = True
    reason: str = ""  # why it failed (or why it was skipped)


def compare_stage(name: str, a: np.ndarray, b: np.ndarray | None, sample_rate: int | None = None,
                  tolerances: dict | None = None) -> StageResult:
    """Metrics of one stage (A = reference side) and whether they are within ``tolerances`` (kind -> bounds)."""
    tol = {**TOLERANCES, **(tolerances or {})}
    kind = stage_kind(name, a)
    res = StageResult(name, kind, tuple(a.shape), None if b is None else tuple(b.shape))
    if b is None:
        res.reason = "missing in B"
        return res
    if a.shape != b.shape:
        res.passed, res.reason = False, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        return res
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.all(np.isfinite(b64)) and np.all(np.isfinite(a64))):
        res.passed, res.reason = False, "non-finite values"
        return res
    d = a64 - b64
    m = res.metrics
    m["max_abs"] = float(np.max(np.abs(d))) if d.size else 0.0
    m["rmse"] = float(np.sqrt(np.mean(d**2))) if d.size else 0.0
    rms_a = float(np.sqrt(np.mean(a64**2))) if d.size else 0.0
    m["rel_rmse"] = m["rmse"] / rms_a if rms_a > 0 else (0.0 if m["rmse"] == 0 else math.inf)
    m["corr"] = _corr(a64, b64) if d.size else 1.0
    bounds = tol[kind]
    fails = []
    if kind == "f0":
        va, vb = a64 > 0, b64 > 0
        both = va & vb
        m["voicing_mismatch"] = float(np.mean(va != vb)) if d.size else 0.0
        cents = 1200 * np.abs(np.log2(b64[both] / a64[both])) if both.any() else np.zeros(1)
        m["max_cents"], m["mean_cents"] = float(cents.max()), float(cents.mean())
        if m["max_cents"] > bounds["max_cents"]:
            fails.append(f"max cents {m['max_cents']:.3g} > {bounds['max_cents']:g}")
        if m["voicing_mismatch"] > bounds["voicing_mismatch"]:
            fails.append(f"voicing differs on {100 * m['voicing_mismatch']:.2f}% of frames")
    elif kind == "pitch":
        m["mismatch"] = float(np.mean(d != 0)) if d.size else 0.0
        m["max_bins"] = int(np.max(np.abs(d))) if d.size else 0
        if m["mismatch"] > bounds["mismatch"]:
            fails.append(f"{100 * m['mismatch']:.2f}% of frames differ")
        if m["max_bins"] > bounds["max_bins"]:
            fails.append(f"bins differ by up to {m['max_bins']}")
    else:
        if m["rel_rmse"] > bounds["rel_rmse"]:
            fails.append(f"relative RMSE {m['rel_rmse']:.3g} > {bounds['rel_rmse']:g}")
        if kind == "audio" and sample_rate:
            m["mel_corr"] = _corr(log_mel(a64, sample_rate), log_mel(b64, sample_rate))
            if m["mel_corr"] < bounds["mel_corr_min"]:
                fails.append(f"log-mel correlation {m['mel_corr']:.5f} < {bounds['mel_corr_min']:g}")
    res.passed = not fails
    res.reason = "; ".join(fails)
    return res


@dataclass
class Comparison:
    a: str
    b: str
    results: list[StageResult]
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))

    @property
    def first_divergent(self) -> StageResult | None:
        return next((r for r in self.results if not r.passed), None)

    @property
    def compared(self) -> list[StageResult]:
        return [r for r in self.results if r.shape_b is not None]

    def summary(self) -> str:
        """A plain-text table plus a verdict line."""
        lines = [f"{'stage':<14}{'shape':<16}{'max|diff|':>11}{'rel RMSE':>11}{'corr':>11}  extra"]
        for r in self.results:
            m = r.metrics
            shape = "x".join(str(s) for s in r.shape_a) or "scalar"
            if not m:
                lines.append(f"{r.name:<14}{shape:<16}  {r.reason}")
                continue
            extra = ""
            if r.kind == "f0":
                extra = f"max {m['max_cents']:.3g} cents, voicing differs {100 * m['voicing_mismatch']:.2f}%"
            elif r.kind == "pitch":
                extra = f"{100 * m['mismatch']:.2f}% frames differ, max {m['max_bins']} bins"
            elif "mel_corr" in m:
                extra = f"log-mel corr {m['mel_corr']:.6f}"
            flag = "" if r.passed else "   <-- " + r.reason
            lines.append(f"{r.name:<14}{shape:<16}{m['max_abs']:>11.3e}{m['rel_rmse']:>11.3e}{m['corr']:>11.7f}  "
                         f"{extra}{flag}")
        first = self.first_divergent
        if first is None:
            lines.append(f"OK: {len(self.compared)} stage(s) within tolerance")
        else:
            lines.append(f"DIVERGED: first divergent stage is '{first.name}' ({first.reason})")
        return "\n".join(lines)


def _dump_sample_rates(d: Dump) -> dict[str, int]:
    info = d.info or {}
    model_sr = (info.get("model") or {}).get("sample_rate")
    out_sr = info.get("output_sample_rate", model_sr)
    return {"input16k": SAMPLE_RATE_16K, "generator": model_sr, "audio": out_sr}


def compare(a: Dump, b: Dump, tolerances: dict | None = None) -> Comparison:
    """Compare every stage of ``a`` (the reference side) with ``b`` in pipeline order."""
    rates = _dump_sample_rates(a)
    common = [n for n in a.stages if n in b.stages]
    if not common:
        raise InputError(f"{a.path} and {b.path} have no stage in common")
    results = [compare_stage(n, a.stages[n], b.stages.get(n), rates.get(n.partition(".")[0]), tolerances)
               for n in a.stages]
    return Comparison(a.path, b.path, results, {**TOLERANCES, **(tolerances or {})})


def parse_tolerances(items: list[str] | None) -> dict:
    """``["features.rel_rmse=1e-4", "f0.max_cents=10"]`` -> overrides of ``TOLERANCES``."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        kind, _, bound = key.partition(".")
        if not sep or kind not in TOLERANCES or bound not in TOLERANCES[kind]:
            known = ", ".join(f"{k}.{b}" for k, v in TOLERANCES.items() for b in v)
            raise InputError(f"bad tolerance {item!r}: use KIND.BOUND=VALUE with one of {known}")
        try:
            out.setdefault(kind, dict(TOLERANCES[kind]))[bound] = float(value)
        except ValueError:
            raise InputError(f"bad tolerance {item!r}: {value!r} is not a number") from None
    return out


# -- HTML report -------------------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(cmp: Comparison, a: Dump, b: Dump) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    # per-stage error bars: relative error (or its kind's main number) against the tolerance
    rows = [r for r in cmp.results if r.metrics]
    if rows:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
        vals = [max(r.metrics.get("rel_rmse", 0.0), 1e-12) for r in rows]
        colors = ["#2a9d2a" if r.passed else "#d62728" for r in rows]
        ax.barh([r.name for r in rows][::-1], vals[::-1], color=colors[::-1], log=True)
        for kind in ("features", "audio"):
            ax.axvline(cmp.tolerances[kind]["rel_rmse"], ls="--", lw=1, color="gray" if kind == "features" else "k")
        ax.set_xlabel("relative RMSE (log; dashed: features / audio tolerance; red: beyond tolerance)")
        ax.set_title("per-stage error")
        fig.tight_layout()
        figs.append(("Per-stage error", _png(fig)))
        plt.close(fig)
    # f0 overlay
    for name in ("f0", "f0_frames"):
        if name in a.stages and name in b.stages:
            fa, fb = a.stages[name], b.stages[name]
            t = np.arange(max(len(fa), len(fb))) / F0_FRAME_RATE
            fig, ax = plt.subplots(figsize=(10, 3.2))
            ax.plot(t[: len(fa)], np.where(fa > 0, fa, np.nan), lw=2.2, label="A", color="#1f77b4")
            ax.plot(t[: len(fb)], np.where(fb > 0, fb, np.nan), lw=1.0, label="B", color="#ff7f0e")
            ax.set_xlabel("time (s)")
            ax.set_ylabel("Hz")
            ax.set_title(f"{name}: A (thick) vs B (thin)")
            ax.legend(loc="upper right")
            fig.tight_layout()
            figs.append((f"F0 overlay ({name})", _png(fig)))
            plt.close(fig)
            break
    # spectrograms of the audio stages: A, B, difference
    rates = _dump_sample_rates(a)
    for name in ("audio", "generator"):
        if name in a.stages and name in b.stages and a.stages[name].shape == b.stages[name].shape and rates[name]:
            ma, mb = log_mel(a.stages[name], rates[name]), log_mel(b.stages[name], rates[name])
            fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
            lo, hi = min(ma.min(), mb.min()), max(ma.max(), mb.max())
            for ax, img, title in ((axes[0], ma, "A"), (axes[1], mb, "B")):
                ax.imshow(img.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
                ax.set_title(f"{name}: log-mel {title}")
            diff = np.abs(ma - mb)
            im = axes[2].imshow(diff.T, origin="lower", aspect="auto", cmap="viridis")
            axes[2].set_title("|A − B| (log-mel)")
            axes[2].set_xlabel(f"frame (hop {MEL_HOP} samples at {rates[name]} Hz)")
            fig.colorbar(im, ax=axes[2], fraction=0.03)
            fig.tight_layout()
            figs.append((f"Spectrograms ({name})", _png(fig)))
            plt.close(fig)
    return figs


def report_html(cmp: Comparison, a: Dump, b: Dump) -> str:
    """A self-contained HTML page: verdict, metric table, embedded PNG figures."""
    first = cmp.first_divergent
    verdict = ("<p class=ok>All compared stages are within tolerance.</p>" if first is None else
               f"<p class=bad>First divergent stage: <b>{html.escape(first.name)}</b> — "
               f"{html.escape(first.reason)}</p>")
    head = "<tr><th>stage</th><th>axes</th><th>shape A</th><th>shape B</th><th>max |diff|</th><th>RMSE</th>" \
           "<th>rel RMSE</th><th>corr</th><th>extra</th><th>status</th></tr>"
    rows = []
    for r in cmp.results:
        m = r.metrics
        axes = a.described.get(r.name, {}).get("axes", "")
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()
                          if k not in ("max_abs", "rmse", "rel_rmse", "corr"))
        status = "ok" if r.passed and m else ("skipped: " + r.reason if not m and r.passed else r.reason)
        cls = "" if r.passed else " class=bad"

        def fmt(key, spec):
            return format(m[key], spec) if key in m else ""

        rows.append(f"<tr{cls}><td>{html.escape(r.name)}</td><td>{html.escape(axes)}</td><td>{r.shape_a}</td>"
                    f"<td>{r.shape_b}</td><td>{fmt('max_abs', '.3e')}</td><td>{fmt('rmse', '.3e')}</td>"
                    f"<td>{fmt('rel_rmse', '.3e')}</td><td>{fmt('corr', '.7f')}</td><td>{html.escape(extra)}</td>"
                    f"<td>{html.escape(status)}</td></tr>")
    figs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{p}'>"
                   for t, p in _figures(cmp, a, b))
    tol = html.escape(json.dumps(cmp.tolerances))
    info = "".join(f"<li><b>{side}</b> {html.escape(d.path)}: {html.escape(str(d.info.get('producer', '?')))}</li>"
                   for side, d in (("A", a), ("B", b)))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>rvc-mlx stage comparison</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
tr.bad td{{background:#fde0e0}}.ok{{color:#2a7d2a;font-weight:bold}}.bad{{color:#b00}}img{{max-width:100%}}</style>
</head><body><h1>Stage comparison</h1><ul>{info}</ul>{verdict}<table>{head}{''.join(rows)}</table>
<p>Tolerances: <code>{tol}</code></p>{figs}</body></html>"""


def write_report(path: str | os.PathLike, cmp: Comparison, a: Dump, b: Dump) -> None:
    from .atomic import atomic_write

    text = report_html(cmp, a, b)

    def _write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, _write)
