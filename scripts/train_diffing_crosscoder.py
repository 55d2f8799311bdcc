"""Train the pair's BatchTopK crosscoders, one per seed (rule train_diffing_crosscoder)."""

from pathlib import Path

from rlhf_audit.diffing.crosscoder import train_crosscoders
from rlhf_audit.diffing.settings import DiffingSettings
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
settings = DiffingSettings.from_params(dict(sm.params.settings))
index = train_crosscoders(sm.input.paired, Path(sm.output.index).parent, settings,
                          device=sm.params.device)
log.info("crosscoders: %s", index["runs"])
