"""Firing of policy features, base vs instruct (rule plot_sae)."""

import polars as pl

from rlhf_audit.runtime import setup
from rlhf_audit.sae.figures import plot_policy_firing

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
plot_policy_firing(pl.read_parquet(sm.input.comparison), sm.output.firing,
                   title=f"{sm.wildcards.pair} / {sm.wildcards.sae}")
