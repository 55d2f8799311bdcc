"""Policy features on base (selection half), both models on the measurement half against a
rate-matched control, reconstruction (rule select_policy_features)."""

import polars as pl

from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.sae.scan import read_scan, tally_from_scan
from rlhf_audit.sae.select import (
    HEADLINE_KEYS,
    SAEAnalysisSettings,
    analyse_policy_features,
    directions_from_table,
    top_prompts,
)

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
settings = SAEAnalysisSettings(**sm.params.analysis)
base, instruct = read_scan(sm.params.scan_dirs["base"]), read_scan(sm.params.scan_dirs["instruct"])
d = sm.params.direction
directions, source = (directions_from_table(sm.input.directions, d["layer"], d["method"])
                      if d["source"] == "partisan" else (None, ""))
study = analyse_policy_features(base, instruct, settings, directions, source)
prov = provenance(sm.rule, params={**sm.params.analysis, "direction": d},
                  criterion=study.selection.criterion)
out = sm.output
write_table(pl.concat([tally_from_scan(base).with_columns(model=pl.lit("base")),
                       tally_from_scan(instruct).with_columns(model=pl.lit("instruct"))]),
            out.tally, prov)
write_table(study.selection.features, out.features, prov)
write_table(study.selection.split, out.split, prov)
write_table(study.comparison, out.comparison, prov)
write_table(study.controls, out.controls, prov)
policy = study.selection.selected["feature"].to_list()
write_table(top_prompts(base.prompt_features, policy, settings.top_k_prompts), out.top_prompts,
            prov)
write_table(study.reconstruction, out.reconstruction, prov)
write_fragment(study.headline, HEADLINE_KEYS, out.headline)
log.info("%d policy features selected", len(policy))
