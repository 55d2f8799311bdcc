"""Steering figures for one model pair (rule plot_steering)."""

import polars as pl

from rlhf_audit.runtime import setup
from rlhf_audit.steering.figures import plot_degeneration, plot_steering

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
dose, means = pl.read_parquet(sm.input.dose), pl.read_parquet(sm.input.prime_means)
plot_steering(dose, means, sm.output.projection, score="projection")
plot_steering(dose, means, sm.output.judge, score="judge")
plot_degeneration(pl.read_parquet(sm.input.degeneration), sm.output.degeneration,
                  sm.params.settings["max_degenerate_rate"])
