"""Pictures asked for: a learning-rate sweep (sweep.png) and a model's refit history, with
matplotlib. (Every run's loss.png is drawn by ``lossplot``, with no matplotlib import.)"""

from __future__ import annotations

import io

import numpy as np


def _figure(width: float, height: float):
    """A figure drawn by Agg, without pyplot (whose import alone cost 0.3-0.7 s of a
    whole command, and which keeps global state no artifact needs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _positive(losses):
    """Log scale needs positive values: an exact fit (loss 0) is drawn at the floor."""
    arr = np.asarray(losses, dtype=float)
    arr = np.where(np.isfinite(arr), arr, np.nan)
    floor = np.nanmin(arr[arr > 0]) if np.any(arr > 0) else 1.0
    return np.where(arr > 0, arr, floor)


def sweep_png(curves: list[tuple[str, list[float], str]], title: str, label: str = "mean squared error") -> bytes:
    """Several loss curves, one per learning rate: (label, losses, status)."""
    fig, ax = _figure(7.0, 4.4)
    for label, losses, status in curves:
        style = "--" if status == "diverged" else "-"
        ax.plot(np.arange(1, len(losses) + 1), _positive(losses), style, lw=1.6, label=f"{label} ({status})")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({label})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig)


def _save(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def history_png(events: list[dict], title: str) -> bytes:
    """The promotion metric on each night's holdout: the challenger's, and the current
    model's it was judged against; rejected nights marked."""
    fig, ax = _figure(7.0, 4.0)
    judged = [e for e in events if e.get("metric") and e.get("challenger")]
    if judged:
        metric = judged[-1]["metric"]
        days = [e["as_of"] for e in judged]
        ax.plot(days, [e["challenger"].get(metric) for e in judged], "o-", label="challenger")
        cur = [(e["as_of"], (e.get("current") or {}).get(metric)) for e in judged]
        ax.plot([d for d, v in cur if v is not None], [v for d, v in cur if v is not None], "s--", label="current")
        bad = [e for e in judged if e["status"] == "rejected"]
        ax.plot([e["as_of"] for e in bad], [e["challenger"].get(metric) for e in bad], "rx", ms=10,
                label="rejected")
        ax.set_ylabel(metric)
        ax.legend()
        ax.tick_params(axis="x", rotation=45)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig)
