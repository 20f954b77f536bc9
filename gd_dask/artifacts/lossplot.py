"""loss.png: one run's loss per epoch on a log scale, drawn with Pillow.

Every ``gd-dask train`` writes this picture, so it is on the path of every command:
matplotlib's import, font cache and first draw took 1.0–1.3 s of CPU for it (more than
a whole 10,000-row job), Pillow (which matplotlib itself depends on) 0.05 s. The sweep
and history plots, which are asked for, stay with matplotlib (``plots``).
"""

from __future__ import annotations

import io
import math

import numpy as np

#: Size of the picture in pixels (matplotlib's 6.4 × 4 inches at 110 dpi, as before).
WIDTH, HEIGHT = 704, 440
#: Drawn this many times larger, then scaled down: smooth lines and text.
SCALE = 2
#: Plot area's margins in pixels: left, top, right, bottom.
MARGINS = (84, 34, 18, 50)
LINE = (31, 119, 180)  # matplotlib's first colour
GRID = (226, 226, 226)
INK = (32, 32, 32)


def loss_png(history: list[dict], title: str, label: str = "mean squared error") -> bytes:
    """Loss per epoch on a log scale, as PNG bytes; non-finite losses leave gaps and an
    exact fit (loss 0) is drawn at the smallest positive loss."""
    from PIL import Image, ImageDraw

    s = SCALE
    img = Image.new("RGB", (WIDTH * s, HEIGHT * s), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(13 * s), _font(11 * s)
    left, top, right, bottom = (m * s for m in MARGINS)
    x0, y0, x1, y1 = left, top, WIDTH * s - right, HEIGHT * s - bottom

    epochs = np.array([h["epoch"] for h in history], dtype=float)
    logs = np.log10(_positive([h["loss"] for h in history]))
    e_lo, e_hi = (float(epochs.min()), float(epochs.max())) if len(epochs) else (0.0, 1.0)
    if e_hi <= e_lo:
        e_lo, e_hi = e_lo - 1, e_hi + 1
    finite = logs[np.isfinite(logs)]
    l_lo, l_hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = max((l_hi - l_lo) * 0.05, 0.05)
    l_lo, l_hi = l_lo - pad, l_hi + pad

    def px(e, lg):
        return (x0 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0), y1 - (lg - l_lo) / (l_hi - l_lo) * (y1 - y0))

    for v in _linear_ticks(e_lo, e_hi, smallest=1):
        x = px(v, l_lo)[0]
        draw.line([(x, y0), (x, y1)], fill=GRID, width=s)
        text = f"{v:g}"
        draw.text((x, y1 + 6 * s), text, fill=INK, font=small, anchor="mt")
    for v in _log_ticks(l_lo, l_hi):
        y = px(e_lo, math.log10(v))[1]
        draw.line([(x0, y), (x1, y)], fill=GRID, width=s)
        draw.text((x0 - 6 * s, y), f"{v:g}", fill=INK, font=small, anchor="rm")
    for run in _runs(epochs, logs):
        points = [px(e, lg) for e, lg in run]
        if len(points) == 1:
            (x, y), r = points[0], 3 * s
            draw.ellipse([x - r, y - r, x + r, y + r], fill=LINE)
        else:
            draw.line(points, fill=LINE, width=int(2.2 * s), joint="curve")
    draw.rectangle([x0, y0, x1, y1], outline=INK, width=s)
    draw.text(((x0 + x1) / 2, y0 - 8 * s), title, fill=INK, font=font, anchor="md")
    draw.text(((x0 + x1) / 2, HEIGHT * s - 8 * s), "epoch", fill=INK, font=font, anchor="md")
    _vertical_text(img, f"loss ({label})", font, (14 * s, (y0 + y1) / 2))

    out = io.BytesIO()
    img.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).save(out, format="PNG", optimize=False)
    return out.getvalue()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font where FreeType is there
    except TypeError:  # Pillow < 10.1: its bitmap font
        return ImageFont.load_default()


def _vertical_text(img, text: str, font, center) -> None:
    """``text`` turned 90° anticlockwise, centred on ``center``."""
    from PIL import Image, ImageDraw

    box = ImageDraw.Draw(img).textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    label = Image.new("RGB", (w + 4, h + 4), "white")
    ImageDraw.Draw(label).text((2 - box[0], 2 - box[1]), text, fill=INK, font=font)
    label = label.rotate(90, expand=True)
    img.paste(label, (int(center[0] - label.width / 2), int(center[1] - label.height / 2)))


def _positive(losses) -> np.ndarray:
    """Log scale needs positive values: an exact fit (loss 0) is drawn at the floor;
    NaN and ±inf become NaN (gaps)."""
    arr = np.asarray(losses, dtype=float)
    arr = np.where(np.isfinite(arr), arr, np.nan)
    floor = np.nanmin(arr[arr > 0]) if np.any(arr > 0) else 1.0
    return np.where(arr > 0, arr, np.where(np.isnan(arr), np.nan, floor))


def _runs(epochs, logs):
    """Consecutive points with a finite loss, as lists of (epoch, log10 loss)."""
    run = []
    for e, lg in zip(epochs, logs):
        if np.isfinite(lg):
            run.append((float(e), float(lg)))
        elif run:
            yield run
            run = []
    if run:
        yield run


def _linear_ticks(lo: float, hi: float, most: int = 8, smallest: float = 0.0) -> list[float]:
    """Round values (1, 2 or 5 × 10^k apart, at least ``smallest``) between ``lo`` and
    ``hi``, at most ``most``."""
    span = hi - lo
    for step in (m * 10.0 ** k for k in range(math.floor(math.log10(span / most)) - 1, 20) for m in (1, 2, 5)):
        if span / step <= most and step >= smallest:
            first = math.ceil(lo / step) * step
            return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [lo, hi]


def _log_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Values between 10^lo and 10^hi for a log axis: every k-th power of ten when the
    range spans decades, else round values as on a linear axis."""
    decades = list(range(math.ceil(lo), math.floor(hi) + 1))
    if len(decades) >= 3:
        every = math.ceil(len(decades) / most)
        return [10.0 ** d for d in decades if d % every == 0]
    if len(decades) == 2:
        return [m * 10.0 ** d for d in range(decades[0] - 1, decades[-1] + 1) for m in (1, 2, 5)
                if lo <= math.log10(m * 10.0 ** d) <= hi]
    return [v for v in _linear_ticks(10.0 ** lo, 10.0 ** hi, most=6) if v > 0]
