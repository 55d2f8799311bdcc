"""Figures of the diffing study, from its tables only."""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from rlhf_audit.plotting import new_figure, save_figure

CLIP = (-0.25, 1.5)
"""Latent Scaling ratios are drawn clipped to this range (points at the edge lie beyond)."""
COLOURS = {"base_only": "tab:blue", "shared": "tab:grey", "instruct_only": "tab:red"}


def plot_relative_norms(latents: pl.DataFrame, png_path: str | os.PathLike,
                        base_only_max: float, instruct_only_min: float, title: str = "") -> None:
    """Histogram of relative decoder norms of live latents, class cuts as dashed lines."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    live = latents.filter(pl.col("class") != "dead")
    bins = np.linspace(0, 1, 41)
    for cls, colour in COLOURS.items():
        r = live.filter(pl.col("class") == cls)["relative_norm"].to_numpy()
        ax.hist(r, bins=bins, color=colour, label=f"{cls} ({len(r)})")
    for x in (base_only_max, instruct_only_min):
        ax.axvline(x, ls="--", lw=0.8, color="k")
    ax.set_yscale("log")
    ax.set_xlabel("relative decoder norm  |d_instruct| / (|d_base| + |d_instruct|)")
    ax.set_ylabel("latents")
    n_dead = latents.height - live.height
    ax.set_title(f"{title}  ({n_dead} dead latents not shown)" if title else "")
    ax.legend(frameon=False)
    save_figure(fig, png_path)


def plot_latent_scaling(latents: pl.DataFrame, png_path: str | os.PathLike,
                        max_ratio: float, title: str = "") -> None:
    """nu_error vs nu_recon per scaled latent; the box below max_ratio on both is 'really
    model-specific'."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    t = latents.filter(pl.col("nu_error").is_not_null() & pl.col("nu_recon").is_not_null())
    for cls, colour in COLOURS.items():
        g = t.filter(pl.col("class") == cls)
        label = f"{cls} ({g.height})" + (" reference" if cls == "shared" else "")
        # Shared latents' own error beta is near 0, so their ratios can be huge: clip.
        x = np.clip(g["nu_recon"].to_numpy(), *CLIP)
        y = np.clip(g["nu_error"].to_numpy(), *CLIP)
        ax.scatter(x, y, s=10, alpha=0.7, color=colour, label=label)
    ax.axvline(max_ratio, ls="--", lw=0.8, color="k")
    ax.axhline(max_ratio, ls="--", lw=0.8, color="k")
    ax.set_xlim(CLIP[0] - 0.05, CLIP[1] + 0.05)
    ax.set_ylim(CLIP[0] - 0.05, CLIP[1] + 0.05)
    ax.set_xlabel("nu_recon: reconstruction beta, other / own model")
    ax.set_ylabel("nu_error: error beta, other / own model")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7)
    save_figure(fig, png_path)
