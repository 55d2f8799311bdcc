"""Verbalized vs injected confidence (rule plot_calibration)."""

import polars as pl

from rlhf_audit.calibration.figures import plot_verbalized_vs_injected
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
plot_verbalized_vs_injected(pl.read_parquet(sm.input.levels), sm.output.figure)
