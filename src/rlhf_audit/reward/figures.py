"""SEAL figures (rule plot_rewards): imprint, regimes, robustness, from the analysis tables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from rlhf_audit.stats import Estimate

_ROLE_COLOURS = {"target": "#1f77b4", "spoiler": "#d62728", "other": "#7f7f7f"}


def plot_imprint(imprint: pl.DataFrame, png_path: str | os.PathLike,
                 outcomes: Sequence[str] = ("post", "shift")) -> None:
    """Imprint coefficients with 95% (bar) and Bonferroni (thin) intervals, one panel per
    outcome; colour = target/spoiler/other; filled marker = Bonferroni-significant."""
    from rlhf_audit.plotting import new_figure, save_figure

    terms = imprint.filter(~pl.col("role").is_in(["intercept", "contrast"]))
    feats = list(dict.fromkeys(terms["term"].to_list()))
    fig, axes = new_figure(ncols=len(outcomes), width=4.2, height=0.28 * len(feats) + 1.4)
    for ax, outcome in zip(axes[0], outcomes, strict=True):
        sub = {r["term"]: r for r in terms.filter(pl.col("outcome") == outcome)
               .iter_rows(named=True)}
        for yi, f in enumerate(feats):
            r = sub.get(f)
            if r is None or r["dropped"]:
                continue
            col = _ROLE_COLOURS.get(r["role"], "#7f7f7f")
            ax.plot([r["lo_bonferroni"], r["hi_bonferroni"]], [yi, yi], color=col, lw=0.8)
            ax.plot([r["lo"], r["hi"]], [yi, yi], color=col, lw=2.5)
            ax.plot(r["coef"], yi, "o", color=col,
                    mfc=col if r["significant"] else "white")
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(range(len(feats)), feats)
        ax.invert_yaxis()
        ax.set_title({"post": "post RM", "pre": "pre RM", "shift": "shift (post - pre)"}
                     .get(outcome, outcome))
        ax.set_xlabel("reward per unit of label")
    handles = [axes[0][0].plot([], [], "o", color=c, label=k)[0]
               for k, c in _ROLE_COLOURS.items()]
    axes[0][-1].legend(handles=handles, frameon=False, loc="best")
    save_figure(fig, png_path)


def plot_regimes(regimes: pl.DataFrame, png_path: str | os.PathLike) -> None:
    """Bar chart of the four alignment-regime shares with their 95% intervals."""
    from rlhf_audit.plotting import new_figure, save_figure

    fig, axes = new_figure(width=4.6)
    ax = axes[0][0]
    x = np.arange(regimes.height)
    share = regimes["share"].to_numpy()
    err = np.vstack([share - regimes["lo"].to_numpy(), regimes["hi"].to_numpy() - share])
    ax.bar(x, share, color=["#2ca02c", "#1f77b4", "#d62728", "#ff7f0e"][:len(x)],
           yerr=np.nan_to_num(err), capsize=3)
    ax.set_xticks(x, [r.replace("_", " ") for r in regimes["regime"].to_list()])
    ax.set_ylabel("share of pairs")
    ax.set_ylim(0, max(1e-9, float(np.nanmax(regimes["hi"].to_numpy()))) * 1.15)
    save_figure(fig, png_path)


def plot_robustness(robustness: Mapping[str, Estimate], png_path: str | os.PathLike) -> None:
    """Agreement on the original vs the rewritten pairs, pre and post RM, with 95% intervals."""
    from rlhf_audit.plotting import new_figure, save_figure

    fig, axes = new_figure(width=4.2)
    ax = axes[0][0]
    if not robustness:
        # Say so in the figure rather than leave a hole in the report.
        ax.text(0.5, 0.5, "robustness not run:\nno rewrites configured (reward.rewrite.kind)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        save_figure(fig, png_path)
        return
    w = 0.38
    for k, (version, col) in enumerate((("original", "#1f77b4"), ("rewritten", "#ff7f0e"))):
        es = [robustness[f"agreement_{rm}_{version}"] for rm in ("pre", "post")]
        vals = np.array([e.value for e in es])
        err = np.array([[e.value - e.lo for e in es], [e.hi - e.value for e in es]])
        ax.bar(np.arange(2) + (k - 0.5) * w, vals, w, yerr=np.nan_to_num(err), capsize=3,
               color=col, label=version)
    ax.set_xticks(range(2), ["pre RM", "post RM"])
    ax.set_ylabel("agreement with human preference")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False)
    save_figure(fig, png_path)
