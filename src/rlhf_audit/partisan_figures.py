"""Figures of the partisan study (rule plot_partisan), apart from the computation so
that a figure edit reruns only the figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.ticker import MaxNLocator

from rlhf_audit.partisan import LABELS, METHODS, MODELS
from rlhf_audit.plotting import new_figure, save_figure

_COLORS = {
    "base": "#4c72b0",
    "instruct": "#dd8452",
    "left": "#3b6fb6",
    "right": "#c0392b",
    "neutral": "#8c8c8c",
}


def plot_auc_by_layer(probe: pl.DataFrame, png_path: str | Path, metric: str = "auc") -> None:
    """Out-of-fold ``metric`` by layer for base and instruct (95% bands), one panel per
    method; writes ``png_path`` and the PDF beside it."""
    methods = [m for m in METHODS if m in set(probe["method"].to_list())]
    if not methods:
        raise ValueError("probe table is empty")
    fig, axes = new_figure(ncols=len(methods))
    for ax, meth in zip(axes[0], methods, strict=True):
        for m in MODELS:
            sub = probe.filter(
                (pl.col("model") == m) & (pl.col("method") == meth) & (pl.col("metric") == metric)
            ).sort("layer")
            x = sub["layer"].to_numpy()
            ax.plot(x, sub["value"].to_numpy(), marker="o", ms=3, color=_COLORS[m], label=m)
            ax.fill_between(
                x, sub["lo"].to_numpy(), sub["hi"].to_numpy(), color=_COLORS[m], alpha=0.2, lw=0
            )
        if metric == "auc":
            ax.axhline(0.5, color="k", lw=0.8, ls=":")
            ax.set_ylim(min(0.4, ax.get_ylim()[0]), 1.02)
        ax.set_xlabel("layer (block output)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"out-of-fold {metric.replace('_', ' ')}")
        ax.set_title(meth)
        ax.legend(frameon=False)
    save_figure(fig, png_path)


def plot_projections(
    projections: pl.DataFrame,
    png_path: str | Path,
    method: str | None = None,
    direction: str = "own",
) -> None:
    """Histograms of projections by label, base (top) and instruct (bottom) on a shared
    x axis so compression is visible; ``projections`` is :func:`projections_table`'s output."""
    if method is None:
        method = projections["method"][0]
    sub = projections.filter((pl.col("method") == method) & (pl.col("direction") == direction))
    if sub.height == 0:
        raise ValueError(f"no projections for method {method!r}, direction {direction!r}")
    vals = sub["projection"].to_numpy()
    bins = np.linspace(vals.min(), vals.max(), 41)
    fig, axes = new_figure(nrows=2, height=2.2)
    for ax, m in zip(axes[:, 0], MODELS, strict=True):
        for lab in LABELS:
            p = sub.filter((pl.col("model") == m) & (pl.col("label") == lab))["projection"]
            if len(p):
                ax.hist(
                    p.to_numpy(),
                    bins=bins,
                    histtype="step",
                    lw=1.4,
                    color=_COLORS[lab],
                    label=f"{lab} (n={len(p)})",
                )
        sd = float(np.std(sub.filter(pl.col("model") == m)["projection"].to_numpy(), ddof=1))
        ax.set_title(f"{m}: SD {sd:.3g}", fontsize=9)
        ax.set_ylabel("prompts")
        ax.legend(frameon=False, fontsize=7)
    axes[1, 0].set_xlabel(
        f"centred projection on {direction} {method} direction (layer {sub['layer'][0]})"
    )
    axes[0, 0].sharex(axes[1, 0])
    save_figure(fig, png_path)


def plot_variance_ratio(variance: pl.DataFrame, png_path: str | Path) -> None:
    """Variance ratio instruct/base by layer (log scale; 1 = no compression): the split-half
    estimate with its 95% band (solid), along the base direction (dashed), the
    label-permutation noise floor (grey) and, thin, the projection-variance check."""
    sub = variance.filter(pl.col("model") == "instruct_over_base")
    curves = (
        ("split_half", "variance_ratio", dict(ls="-", color="#55a868", lw=1.6), True,
         "split-half (headline)"),
        ("base", "variance_ratio", dict(ls="--", color="#55a868", lw=1.2), False,
         "along the base direction"),
        ("split_half", "variance_ratio_noise_floor", dict(ls=":", color="#7f7f7f", lw=1.2),
         False, "noise floor (label permutation, 95%)"),
        ("own", "projection_variance_ratio", dict(ls="-", color="#8172b3", lw=0.8), False,
         "projection variance (biased check)"),
    )
    if sub.filter(pl.col("metric") == "variance_ratio").height == 0:
        raise ValueError("variance table has no variance_ratio rows")
    fig, axes = new_figure()
    ax = axes[0, 0]
    for direction, metric, style, band, label in curves:
        s = sub.filter(
            (pl.col("method") == "diffmean")
            & (pl.col("direction") == direction)
            & (pl.col("metric") == metric)
        ).sort("layer")
        if s.height == 0:
            continue
        x = s["layer"].to_numpy()
        y = s["value"].to_numpy()
        # A log axis cannot show a non-positive estimate (no detectable signal).
        ax.plot(x, np.where(y > 0, y, np.nan), marker="o", ms=3, label=label, **style)
        if band:
            ax.fill_between(
                x, s["lo"].to_numpy(), s["hi"].to_numpy(), color=style["color"], alpha=0.15,
                lw=0,
            )
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("layer (block output)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("variance ratio instruct / base")
    ax.legend(frameon=False, fontsize=7)
    save_figure(fig, png_path)
