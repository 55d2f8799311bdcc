"""Train the pair's diff-SAE on instruct-minus-base activations (rule train_diffing_sae)."""

from pathlib import Path

from rlhf_audit.diffing.diff_sae import train_diff_sae
from rlhf_audit.diffing.settings import DiffingSettings
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
settings = DiffingSettings.from_params(dict(sm.params.settings))
train_diff_sae(sm.input.paired, Path(sm.output.cfg).parent, settings, device=sm.params.device)
