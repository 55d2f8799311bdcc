"""Headline fragment of the diffing study (rule summarise_diffing)."""

from rlhf_audit.diffing.summary import summarise_pair
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
summarise_pair(sm.input.summary, sm.input.steering, sm.output.headline,
               statements_path=sm.input.statements,
               directions_path=sm.input.get("directions"), **sm.params.settings)
