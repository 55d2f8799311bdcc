"""Train the organism's own TopK SAE with sae-lens (rule train_organism_sae)."""

from pathlib import Path

from rlhf_audit.extract.read import iter_token_batches
from rlhf_audit.runtime import setup
from rlhf_audit.sae.train import SAESettings, train_sae

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
s = sm.params.settings
settings = SAESettings.from_params(s, n_threads=sm.threads, model_name="organism_base")
batches = iter_token_batches(list(sm.input.shards), s["layer"], 4096)
train_sae(batches, Path(sm.output.cfg).parent, settings)
log.info("SAE trained at layer %d (d_sae %d, k %d)", s["layer"], s["d_sae"], s["k"])
