"""Partisan-geometry figures for one model pair (rule plot_partisan)."""

import polars as pl

from rlhf_audit.partisan_figures import plot_auc_by_layer, plot_projections, plot_variance_ratio
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
plot_auc_by_layer(pl.read_parquet(sm.input.probes), sm.output.auc)
plot_projections(pl.read_parquet(sm.input.projections), sm.output.projections)
plot_variance_ratio(pl.read_parquet(sm.input.variance), sm.output.variance)
