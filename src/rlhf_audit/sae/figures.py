"""Figures of the SAE study (rule plot_sae); reads only the select rule's tables."""

from __future__ import annotations

import numpy as np
import polars as pl


def plot_policy_firing(comparison: pl.DataFrame, png_path, *, title: str = "") -> None:
    """Log-log scatter of token firing rates, base (x) vs instruct (y), one point per
    feature; policy features highlighted, features silent in instruct drawn on a floor
    line below the smallest observed rate (likewise features silent in base). Writes PNG + PDF."""
    from rlhf_audit.plotting import new_figure, save_figure

    fig, axes = new_figure()
    ax = axes[0][0]
    rates = pl.concat([comparison["firing_rate_base"], comparison["firing_rate_instruct"]])
    pos = rates.filter(rates > 0)
    floor = float(pos.min()) / 3 if len(pos) else 1e-6
    top = float(pos.max()) * 1.5 if len(pos) else 1.0

    def xy(df: pl.DataFrame):
        x = np.maximum(df["firing_rate_base"].to_numpy(), floor)
        y = np.maximum(df["firing_rate_instruct"].to_numpy(), floor)
        return x, y

    other = comparison.filter(~pl.col("policy"))
    pol = comparison.filter(pl.col("policy"))
    if other.height:
        ax.scatter(
            *xy(other), s=9, c="0.55", lw=0, zorder=2, label=f"other features (n={other.height})"
        )
    if pol.height:
        silent = pol.filter(pl.col("inactive_in_instruct"))
        active = pol.filter(~pl.col("inactive_in_instruct"))
        if active.height:
            ax.scatter(
                *xy(active),
                s=14,
                c="tab:blue",
                lw=0,
                zorder=3,
                label=f"policy, active in instruct (n={active.height})",
            )
        if silent.height:
            ax.scatter(
                *xy(silent),
                s=14,
                c="tab:red",
                marker="v",
                lw=0,
                zorder=3,
                label=f"policy, silent in instruct (n={silent.height})",
            )
    ax.plot([floor, top], [floor, top], c="0.8", lw=0.7, ls="--", zorder=1)
    ax.axhline(floor, c="tab:red", lw=0.5, ls=":", zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 1.5, top)
    ax.set_ylim(floor / 1.5, top)
    ax.set_xlabel("firing rate on base (share of tokens)")
    ax.set_ylabel("firing rate on instruct (share of tokens)")
    ax.text(top, floor, "never fires ", ha="right", va="bottom", fontsize=7, color="tab:red")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    save_figure(fig, png_path)
