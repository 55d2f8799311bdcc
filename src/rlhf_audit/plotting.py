"""Figure helpers: one style, saved as PNG and PDF side by side, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_audit.io import atomic_path  # noqa: E402


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6):
    """A figure with the project's defaults; returns (fig, axes)."""
    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def save_figure(fig, png_path: str | os.PathLike) -> None:
    """Save ``fig`` to ``png_path`` and to the same name with ``.pdf``; close it."""
    png_path = Path(png_path)
    fig.tight_layout()
    # Fixed metadata so the same data gives byte-identical files.
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    with atomic_path(png_path.with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "ModDate": None,
                                                  "Producer": None, "Creator": None})
    plt.close(fig)
