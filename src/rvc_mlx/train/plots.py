"""What a training run looks like, written per epoch without a plotting library (the fit step's log).

* ``EXP/losses.jsonl``: one line per step (epoch, step, every loss term); a resumed run first drops the lines
  after its checkpoint, so the log always matches the weights.
* ``EXP/plots/mel_EEEE.png``: the log mel of the epoch's last batch item, real (top) over generated (bottom),
  low frequencies at the bottom, one shared colour scale — RVC's tensorboard "slice/mel_org" and "slice/mel_gen".
* ``EXP/plots/losses.svg``: the per-epoch mean of each loss term over the whole run, one panel per term.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

LOG_FILE = "losses.jsonl"
PLOTS_DIR = "plots"
TERMS = ("mel", "kl", "fm", "gen", "disc", "gen_all")
# a dark-to-bright ramp (black, purple, orange, pale yellow): anchors at 0, 1/3, 2/3, 1
RAMP = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], np.float64)
PANEL_W, PANEL_H, MARGIN = 240, 120, 36


# -- the log --------------------------------------------------------------------------------------------------

def read_log(exp_dir: str | os.PathLike) -> list[dict]:
    """The steps logged so far (a damaged last line, from a kill while writing, is dropped)."""
    path = Path(exp_dir) / LOG_FILE
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


def truncate_log(exp_dir: str | os.PathLike, last_step: int) -> list[dict]:
    """Keep the log's steps up to ``last_step`` (the checkpoint a run resumes from); returns them."""
    logged = read_log(exp_dir)
    rows = [r for r in logged if r.get("step", 0) <= last_step]
    if rows != logged or not (Path(exp_dir) / LOG_FILE).exists():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(Path(exp_dir) / LOG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return rows


def append_log(exp_dir: str | os.PathLike, rows: list[dict]) -> None:
    with open(Path(exp_dir) / LOG_FILE, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def epoch_means(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``term -> [(epoch, mean over its steps)]`` in epoch order."""
    sums: dict[int, dict[str, list[float]]] = {}
    for r in rows:
        for term in TERMS:
            if term in r:
                sums.setdefault(r["epoch"], {}).setdefault(term, []).append(float(r[term]))
    return {term: [(e, float(np.mean(v[term]))) for e, v in sorted(sums.items()) if term in v] for term in TERMS}


# -- PNG ------------------------------------------------------------------------------------------------------

def _png(path: Path, rgb: np.ndarray) -> None:
    """``rgb (H, W, 3) uint8`` as an 8-bit RGB PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def colour(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values -> ``(..., 3) uint8`` on :data:`RAMP`, ``lo``..``hi`` mapped to its ends."""
    t = np.clip((values - lo) / max(hi - lo, 1e-9), 0.0, 1.0) * (len(RAMP) - 1)
    i = np.minimum(t.astype(int), len(RAMP) - 2)
    f = (t - i)[..., None]
    return np.rint(RAMP[i] * (1 - f) + RAMP[i + 1] * f).astype(np.uint8)


def mel_png(path: str | os.PathLike, real: np.ndarray, generated: np.ndarray, scale: int = 3) -> None:
    """``real``/``generated (frames, n_mels)`` log mels stacked (real on top), each pixel ``scale``² large."""
    lo, hi = float(min(real.min(), generated.min())), float(max(real.max(), generated.max()))
    gap = np.full((2, real.shape[0], 3), 255, np.uint8)
    image = np.concatenate([colour(real.T[::-1], lo, hi), gap, colour(generated.T[::-1], lo, hi)], axis=0)
    _png(Path(path), np.repeat(np.repeat(image, scale, axis=0), scale, axis=1))


# -- SVG ------------------------------------------------------------------------------------------------------

def _panel(term: str, points: list[tuple[int, float]], x0: float, y0: float) -> str:
    xs = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)
    x_lo, x_hi = xs.min(), max(xs.max(), xs.min() + 1)
    y_lo, y_hi = ys.min(), ys.max()
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    px = x0 + (xs - x_lo) / (x_hi - x_lo) * PANEL_W
    py = y0 + PANEL_H - (ys - y_lo) / (y_hi - y_lo) * PANEL_H
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
    return (f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>'
            f'<text x="{x0}" y="{y0 - 6}" font-size="12">{term}: {ys[-1]:.4g} (epoch {int(xs[-1])})</text>'
            f'<text x="{x0 - 4}" y="{y0 + 10}" font-size="9" text-anchor="end">{y_hi:.3g}</text>'
            f'<text x="{x0 - 4}" y="{y0 + PANEL_H}" font-size="9" text-anchor="end">{y_lo:.3g}</text>'
            f'<polyline points="{line}" fill="none" stroke="#c2410c" stroke-width="1.5"/>')


def losses_svg(path: str | os.PathLike, rows: list[dict], columns: int = 3) -> None:
    """One panel per loss term: its per-epoch mean against the epoch."""
    means = {t: p for t, p in epoch_means(rows).items() if p}
    rows_n = -(-len(means) // columns)
    width, height = columns * (PANEL_W + 2 * MARGIN), rows_n * (PANEL_H + 2 * MARGIN)
    panels = [_panel(term, points, MARGIN + (k % columns) * (PANEL_W + 2 * MARGIN),
                     MARGIN + (k // columns) * (PANEL_H + 2 * MARGIN)) for k, (term, points) in enumerate(means.items())]
    text = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(panels)}</svg>\n')
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_epoch(exp_dir: str | os.PathLike, epoch: int, rows: list[dict],
                mels: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """The epoch's mel picture and the loss curves of ``rows`` (the whole log so far). Returns the files."""
    folder = Path(exp_dir) / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    out = {"losses": str(folder / "losses.svg")}
    losses_svg(out["losses"], rows)
    if mels is not None:
        out["mel"] = str(folder / f"mel_{epoch:04d}.png")
        mel_png(out["mel"], *mels)
    return out
