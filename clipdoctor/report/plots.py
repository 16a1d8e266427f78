"""Plots (matplotlib, Agg backend): written as PNG files or embedded in the HTML report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed, ever
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> plt.Figure:
    """Rows: true class; columns: predicted; cells: clip counts, colour by row share."""
    m = np.asarray(confusion, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
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
    from clipdoctor.data.cache import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def save_confusion_matrix(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                          path: str | Path) -> Path:
    return save_figure(confusion_figure(confusion, classes), path)
