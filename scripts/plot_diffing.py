"""Relative-norm histogram and Latent Scaling scatter (rule plot_diffing)."""

import polars as pl

from rlhf_audit.diffing.figures import plot_latent_scaling, plot_relative_norms
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
p = sm.params.settings
latents = pl.read_parquet(sm.input.latents, columns=["class", "relative_norm", "nu_error",
                                                     "nu_recon"])
plot_relative_norms(latents, sm.output.relative_norm, p["base_only_max"], p["instruct_only_min"],
                    title=sm.wildcards.pair)
plot_latent_scaling(latents, sm.output.latent_scaling, p["max_scaling_ratio"],
                    title=sm.wildcards.pair)
