"""Steer both models with the top model-specific latents (rule steer_diffing_latents)."""

from rlhf_audit.diffing.behaviour import steer_pair
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
steer_pair(latents=sm.input.latents, paired=sm.input.paired, summary=sm.input.summary,
           questions=sm.input.questions,
           prompts=sm.input.prompts, models=sm.params.models,
           steer=sm.params.steer, out=sm.output.steering,
           provenance=provenance(sm.rule, params={"steer": sm.params.steer}))
