"""Figures of the steering study (rule plot_steering), apart from the analysis so that
a figure edit reruns only the figure."""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from rlhf_audit.steering.settings import (
    NULL_FAMILIES,
    PRIME_CONDITIONS,
    VECTOR_KINDS,
    vector_family,
)


def plot_steering(dose: pl.DataFrame, primes: pl.DataFrame, png_path: str | os.PathLike,
                  score: str = "judge") -> None:
    """Partisanship vs alpha (one panel per vector and null family, a line per model, 95%
    intervals) and an identity-prime panel (mean score per model x condition)."""
    from rlhf_audit.plotting import new_figure, save_figure

    dose = dose.filter(pl.col("score") == score) if dose.height else dose
    present = set(dose["vector"].to_list()) if dose.height else set()
    vectors = [v for v in (*VECTOR_KINDS, *NULL_FAMILIES) if v in present] or ["(none)"]
    fig, axes = new_figure(ncols=len(vectors) + 1, width=3.2, height=3.0)
    ax_list = list(axes[0])
    models = sorted(set(dose["model"].to_list())) if dose.height else []
    for ax, v in zip(ax_list, vectors, strict=False):
        for m in models:
            g = dose.filter(pl.col("vector") == v, pl.col("model") == m).sort("alpha")
            if not g.height:
                continue
            x, y = g["alpha"].to_numpy(), g["mean"].to_numpy()
            ax.plot(x, y, marker="o", ms=3, label=m)
            ax.fill_between(x, g["lo"].to_numpy(), g["hi"].to_numpy(), alpha=0.2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"steering: {v}")
        ax.set_xlabel("alpha (x base residual norm)")
        ax.set_ylabel(f"partisanship ({score}; + right)")
        if models:
            ax.legend(fontsize=7)
    lims = [a.get_ylim() for a in ax_list[:-1]]
    if lims:  # one y scale across vectors so their slopes compare by eye
        lo, hi = min(x[0] for x in lims), max(x[1] for x in lims)
        for a in ax_list[:-1]:
            a.set_ylim(lo, hi)
    ax = ax_list[-1]
    p = primes.filter(pl.col("score") == score) if primes.height else primes
    conds = list(PRIME_CONDITIONS)
    pmodels = sorted(set(p["model"].to_list())) if p.height else []
    width = 0.8 / max(len(pmodels), 1)
    for k, m in enumerate(pmodels):
        vals = {r["condition"]: r for r in p.filter(pl.col("model") == m).iter_rows(named=True)}
        cs = [c for c in conds if c in vals]
        xs = [conds.index(c) + (k - (len(pmodels) - 1) / 2) * width for c in cs]
        ys = [vals[c]["mean"] for c in cs]
        err = np.array([[vals[c]["mean"] - vals[c]["lo"], vals[c]["hi"] - vals[c]["mean"]]
                        for c in cs]).T
        ax.bar(xs, ys, width=width, yerr=np.nan_to_num(err) if len(xs) else None, capsize=2,
               label=m)
    ax.set_xticks(range(len(conds)), conds)
    ax.set_xlabel("user prime")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("identity prime (no steering)")
    ax.set_ylabel(f"partisanship ({score}; + right)")
    if pmodels:
        ax.legend(fontsize=7)
    save_figure(fig, png_path)


def plot_degeneration(degen: pl.DataFrame, png_path: str | os.PathLike,
                      max_rate: float | None = None) -> None:
    """Degenerate-reply rate (with the slope threshold) and mean distinct-2 vs alpha, per
    vector (null families pooled) x model."""
    from rlhf_audit.plotting import new_figure, save_figure

    d = degen.with_columns(pl.col("vector").map_elements(vector_family, pl.String)).group_by(
        ["model", "vector", "alpha"]).agg(pl.col("degenerate_rate").mean(),
                                          pl.col("mean_distinct_2").mean())
    fig, axes = new_figure(ncols=2, width=3.6, height=3.0)
    for (m, v), g in d.sort("alpha").group_by(["model", "vector"], maintain_order=True):
        axes[0][0].plot(g["alpha"], g["degenerate_rate"], marker="o", ms=3, label=f"{m}/{v}")
        axes[0][1].plot(g["alpha"], g["mean_distinct_2"], marker="o", ms=3, label=f"{m}/{v}")
    if max_rate is not None:
        axes[0][0].axhline(max_rate, color="red", lw=0.8, ls="--")
    axes[0][0].set_ylabel("degenerate reply rate")
    axes[0][1].set_ylabel("mean distinct-2")
    for ax in axes[0]:
        ax.set_xlabel("alpha (x base residual norm)")
    axes[0][1].legend(fontsize=6)
    save_figure(fig, png_path)


