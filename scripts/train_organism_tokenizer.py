"""Train the organism's BPE tokenizer with its chat template (rule train_organism_tokenizer)."""

from pathlib import Path

from rlhf_audit.organism.corpus import read_organism_data, tokenizer_texts
from rlhf_audit.organism.tokenizer import train_tokenizer
from rlhf_audit.organism.train import organism_settings
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
p = sm.params.settings
settings = organism_settings(p["preset"], seed=p["seed"], n_layers=p["n_layers"])
data = read_organism_data(Path(sm.input.data).parent, names=("base_corpus", "sft", "rm_post",
                                                              "rm_pre"))
tok = train_tokenizer(tokenizer_texts(data), getattr(settings, "vocab_size", 4096),
                      Path(sm.output.tokenizer).parent)
log.info("tokenizer: %d tokens", len(tok))
