"""Policy features on base, their firing on instruct, reconstruction (rule select_policy_features)."""

from pathlib import Path

import polars as pl

from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.sae import (
    HEADLINE_KEYS,
    SAEAnalysisSettings,
    compare_firing,
    headline,
    read_scan,
    reconstruction_table,
    select_policy_features,
    tally_from_scan,
    top_prompts,
)

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
settings = SAEAnalysisSettings(**sm.params.analysis)
base = read_scan(Path(sm.input.base).parent)
instruct = read_scan(Path(sm.input.instruct).parent)
tb, ti = tally_from_scan(base), tally_from_scan(instruct)
selection = select_policy_features(base, settings)
comparison = compare_firing(tb, ti, selection)
prov = provenance(sm.rule, params=dict(sm.params.analysis),
                  criterion=selection.criterion)
out = sm.output
write_table(pl.concat([tb.with_columns(model=pl.lit("base")),
                       ti.with_columns(model=pl.lit("instruct"))]), out.tally, prov)
write_table(selection.features, out.features, prov)
write_table(comparison, out.comparison, prov)
policy = selection.features.filter(pl.col("selected"))["feature"].to_list()
write_table(top_prompts(base.prompt_features, policy, settings.top_k_prompts),
            out.top_prompts, prov)
write_table(reconstruction_table({"base": base, "instruct": instruct}), out.reconstruction,
            prov)
write_fragment(headline(selection, comparison, base, instruct, settings), HEADLINE_KEYS,
               out.headline)
log.info("%d policy features selected", len(policy))
