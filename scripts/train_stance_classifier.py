"""Stance-classifier judge trained on the labelled statements (rule train_stance_classifier)."""

import polars as pl

from rlhf_audit.runtime import setup
from rlhf_audit.stance import StanceSettings, train_stance_classifier

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
p = sm.params.settings
settings = StanceSettings.from_params(p)
train_stance_classifier(pl.read_parquet(sm.input.statements), settings,
                        source=sm.input.statements).save(sm.output.classifier)
