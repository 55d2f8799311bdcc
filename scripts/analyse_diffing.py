"""Crosscoder latent table, Latent Scaling, diff-SAE comparison (rule analyse_diffing)."""

from pathlib import Path

import polars as pl

from rlhf_audit.diffing.analysis import analyse_pair
from rlhf_audit.diffing.settings import DiffingSettings
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
settings = DiffingSettings.from_params(dict(sm.params.settings))
analyse_pair(
    paired=sm.input.paired, crosscoder_dir=Path(sm.input.crosscoder).parent,
    diff_sae_dir=Path(sm.input.diff_sae).parent, prompts=pl.read_parquet(sm.input.prompts),
    directions=sm.input.get("directions"), method=sm.params.method, C=sm.params.C,
    settings=settings,
    outputs=dict(sm.output), provenance=provenance(sm.rule, params={"settings": settings}),
    device=sm.params.device)
