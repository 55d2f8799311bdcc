"""Pair both models' content-token activations (rule pair_diffing_activations)."""

from rlhf_audit.diffing.paired import pair_token_rows
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
p = sm.params.settings
info = pair_token_rows(list(sm.input.base_shards), list(sm.input.instruct_shards), p["layer"],
                       sm.output.paired, seed=p["seed"], eval_share=p["eval_share"],
                       context=p["context"],
                       provenance=provenance(sm.rule, params=dict(p)))
log.info("paired: %s", info)
