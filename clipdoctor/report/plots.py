"""Plots (matplotlib, Agg backend): written as PNG files or embedded in the HTML report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # no display needed, ever
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _label(text: object) -> str:
    """Text from data shown literally: a '$' would otherwise start matplotlib mathtext."""
    return str(text).replace("$", r"\$")


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> plt.Figure:
    """Rows: true class; columns: predicted; cells: clip counts, colour by row share."""
    m = np.asarray(confusion, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [_label(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(n), [_label(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """PNG written atomically (temp file + rename)."""
    from clipdoctor.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def save_confusion_matrix(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                          path: str | Path) -> Path:
    return save_figure(confusion_figure(confusion, classes), path)


# ---------------------------------------------------------------------------------------------
# figures of the HTML report; every function takes plain numbers and returns an open Figure
# (the caller closes it, usually through `figure_png_base64`)

_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def _floats(values: Sequence) -> np.ndarray:
    """Numbers as float64, anything unreadable ("nan", None, a string) as NaN."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return np.asarray(out, dtype=np.float64)


def figure_png_base64(fig: plt.Figure, dpi: int = 100) -> str:
    """The figure as base64 PNG text (for a `data:image/png;base64,` URL); always closes it."""
    import base64
    import warnings

    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():  # a class name in a script the font lacks: boxes, no noise
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            fig.savefig(buf, format="png", dpi=dpi)
        return base64.b64encode(buf.getvalue()).decode("ascii")
    finally:
        plt.close(fig)


def loss_curves_figure(curves: dict[str, Sequence[float]], title: str = "loss per epoch",
                       xlabel: str = "epoch") -> plt.Figure:
    """One line per curve (e.g. train / val loss per epoch, counted from 1); non-finite values
    marked with x."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    for name, values in curves.items():
        y = _floats(values)
        x = np.arange(1, len(y) + 1)
        color = _COLORS.get(name.split("_")[0])
        ax.plot(x, np.where(np.isfinite(y), y, np.nan), marker="o", ms=3, label=_label(name),
                color=color)
        bad = ~np.isfinite(y)
        if bad.any():
            finite = y[np.isfinite(y)]
            top = finite.max() if finite.size else 1.0
            ax.plot(x[bad], np.full(bad.sum(), top), "x", color="red", ms=8,
                    label=f"{_label(name)}: non-finite")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(_label(title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_range_figure(lrs: Sequence[float], losses: Sequence[float],
                    suggestion: float | None, configured: float | None) -> plt.Figure:
    """Loss against learning rate on a log axis; the suggested and the configured LR marked
    (vertical lines, in the legend). The y axis stops at a few times the best loss, so a
    diverging tail does not flatten the rest."""
    x, y = _floats(lrs), _floats(losses)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    ax.plot(x[ok], y[ok], color="#1f77b4")
    ax.set_xscale("log")
    if ok.any():
        low, first = y[ok].min(), y[ok][0]
        top = min(y[ok].max(), max(2.5 * first, 4 * low) if low > 0 else y[ok].max())
        ax.set_ylim(max(0.0, low - 0.1 * abs(low)), top * 1.05)
    if suggestion is not None and np.isfinite(suggestion) and suggestion > 0:
        ax.axvline(suggestion, color="#2ca02c", ls="--", label=f"suggested {suggestion:.2g}")
    if configured is not None and np.isfinite(configured) and configured > 0:
        ax.axvline(configured, color="#d62728", ls=":", label=f"configured {configured:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("LR range test", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grad_norms_figure(norms: dict[str, Sequence[float]]) -> plt.Figure:
    """Gradient norm per layer group over the steps (log scale); zero or non-finite norms
    leave gaps."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    for name, values in norms.items():
        y = _floats(values)
        ax.plot(np.arange(len(y)), np.where(np.isfinite(y) & (y > 0), y, np.nan),
                label=_label(name))
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.legend(fontsize=7)
    ax.set_title("gradient norm per layer group", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def class_counts_figure(counts: dict[str, Sequence[int]], classes: Sequence[str]) -> plt.Figure:
    """Clips per class, one bar per split side by side."""
    splits = [s for s, v in counts.items() if v is not None and len(v) == len(classes)]
    n, k = len(classes), max(1, len(splits))
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(min(14.0, max(5.2, 1.5 + 0.35 * n * k ** 0.5)), 3.4), dpi=100)
    for i, s in enumerate(splits):
        ax.bar(np.arange(n) + (i - (k - 1) / 2) * width, _floats(counts[s]), width,
               label=_label(s), color=_COLORS.get(s))
    ax.set_xticks(range(n), [_label(c) for c in classes], rotation=45 if n > 4 else 0,
                  ha="right" if n > 4 else "center", fontsize=8 if n <= 30 else 6)
    ax.set_ylabel("clips")
    ax.set_title("clips per class and split", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if splits:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _fmt(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "n/a"


def recall_figure(recall: dict[str, float]) -> plt.Figure:
    """Recall of each class (0..1), worst classes in red."""
    names = list(recall)
    vals = _floats([recall[n] for n in names])
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(14.0, max(5.2, 1.5 + 0.3 * n)), 3.2), dpi=100)
    colors = ["#d62728" if v < 0.25 else "#1f77b4" for v in np.nan_to_num(vals)]
    bars = ax.bar(range(n), np.nan_to_num(vals), color=colors)
    if n <= 30:
        ax.bar_label(bars, [_fmt(v) for v in vals], fontsize=7, padding=1)
    ax.set_xticks(range(n), [_label(c) for c in names], rotation=45 if n > 4 else 0,
                  ha="right" if n > 4 else "center", fontsize=8 if n <= 30 else 6)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall")
    ax.set_title("recall per class", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _as_rgb_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W[, C]) of any dtype -> (T, H, W, 3) uint8 (floats in 0..1 scaled to 0..255)."""
    f = np.asarray(frames)
    if f.ndim == 3:  # (T, H, W) grey
        f = f[..., None]
    if f.dtype != np.uint8:
        f = f.astype(np.float64)
        if np.nanmax(f, initial=0.0) <= 1.0:
            f = f * 255.0
        f = np.clip(np.nan_to_num(f), 0, 255).astype(np.uint8)
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    return f[..., :3]


def frame_strip_figure(frames: np.ndarray, title: str = "", max_frames: int = 16) -> plt.Figure:
    """One clip as a horizontal strip of its frames ((T, H, W, 3) uint8), numbered below;
    more than `max_frames` frames are thinned uniformly."""
    f = _as_rgb_uint8(frames)
    t = f.shape[0]
    keep = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int)) if t else []
    f = f[keep]
    h, w = f.shape[1:3]
    gap = max(1, w // 20)
    strip = np.full((h, len(keep) * (w + gap) - gap, 3), 255, np.uint8)
    for i, frame in enumerate(f):
        strip[:, i * (w + gap): i * (w + gap) + w] = frame
    height = 0.9
    width = min(14.0, max(3.0, height * strip.shape[1] / max(h, 1)))
    fig, ax = plt.subplots(figsize=(width, height + 0.35), dpi=100)
    ax.imshow(strip, interpolation="nearest", aspect="auto")
    ax.set_xticks([i * (w + gap) + w / 2 for i in range(len(keep))], [str(k) for k in keep],
                  fontsize=7)
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(_label(title), fontsize=9, loc="left")
    fig.tight_layout(pad=0.3)
    return fig
