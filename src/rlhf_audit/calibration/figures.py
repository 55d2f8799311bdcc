"""The calibration figure: verbalized vs injected confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def plot_verbalized_vs_injected(summary: pl.DataFrame, png_path: str | Path) -> None:
    """One panel per model: mean verbalized vs injected confidence (%) per strategy with 95%
    intervals, the identity line (perfect copying), and no-signal strategies as a
    horizontal band. ``summary`` is :func:`level_summary` output. Writes PNG and PDF."""
    from rlhf_audit.plotting import new_figure, save_figure

    models = list(dict.fromkeys(summary["model"].to_list()))
    if not models:
        raise ValueError("level summary is empty: nothing to plot")
    strategies = list(dict.fromkeys(summary["strategy"].to_list()))
    colours = {s: f"C{i}" for i, s in enumerate(strategies)}
    fig, axes = new_figure(ncols=len(models), width=4.2, height=3.8)
    for ax, model in zip(axes[0], models, strict=True):
        ax.plot([0, 100], [0, 100], ls="--", lw=0.8, color="0.5", label="identity (copies signal)")
        sub = summary.filter(pl.col("model") == model)
        for st in strategies:
            d = sub.filter((pl.col("strategy") == st) & pl.col("mean_verbalized").is_not_null())
            if d.is_empty():
                continue
            sig = d.filter(pl.col("injected").is_not_null()).sort("injected")
            if sig.height:
                x = 100 * sig["injected"].to_numpy()
                y = 100 * sig["mean_verbalized"].to_numpy()
                lo = 100 * sig["lo"].fill_null(float("nan")).to_numpy()
                hi = 100 * sig["hi"].fill_null(float("nan")).to_numpy()
                yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
                ax.errorbar(x, y, yerr=yerr, marker="o", ms=4, capsize=2, color=colours[st],
                            label=st)
            for r in d.filter(pl.col("injected").is_null()).iter_rows(named=True):
                ax.axhline(100 * r["mean_verbalized"], color=colours[st], lw=1.2,
                           label=f"{st} (no signal)")
                if r["lo"] is not None and r["hi"] is not None:
                    ax.axhspan(100 * r["lo"], 100 * r["hi"], color=colours[st], alpha=0.15)
        ax.set(xlim=(-2, 102), ylim=(-2, 102), title=model,
               xlabel="injected confidence (%)", ylabel="verbalized confidence (%)")
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, png_path)
