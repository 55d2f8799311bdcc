"""Train one organism model: base LM, instruct LM, its sham twin or a reward model
(rules train_organism_*)."""

from pathlib import Path

from rlhf_audit.organism.corpus import read_organism_data
from rlhf_audit.organism.train import (
    organism_settings,
    sham_steps,
    train_base,
    train_instruct,
    train_reward_model,
    train_sham,
)
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
p = sm.params.settings
settings = organism_settings(p["preset"], seed=p["seed"], n_layers=p["n_layers"],
                             threads=sm.threads)
out_dir = Path(sm.output.weights).parent
if sm.rule == "train_organism_base":
    data = read_organism_data(Path(sm.input.corpus).parent,
                              names=("base_corpus", "rep_statements", "base_copy"))
    summary = train_base(data["base_corpus"], Path(sm.input.tokenizer).parent, out_dir,
                         settings, data["rep_statements"], data["base_copy"])
elif sm.rule == "train_organism_instruct":
    data = read_organism_data(Path(sm.input.sft).parent, names=("sft", "dpo", "rep_statements"))
    sae_dir = Path(sm.input.sae).parent if "sae" in sm.input.keys() else None
    summary = train_instruct(Path(sm.input.base).parent, data["sft"], data["dpo"], out_dir,
                             settings, data["rep_statements"], sae_dir=sae_dir)
elif sm.rule == "train_organism_sham":
    data = read_organism_data(Path(sm.input.sham).parent,
                              names=("sham_sft", "sft", "dpo", "placebo_statements"))
    steps = sham_steps(data["sft"], len(data["dpo"]), settings)
    summary = train_sham(Path(sm.input.base).parent, data["sham_sft"], out_dir, settings,
                         steps=steps, rep_statements=data["placebo_statements"])
else:
    name = Path(sm.input.pairs).stem
    pairs = read_organism_data(Path(sm.input.pairs).parent, names=(name,))[name]
    summary = train_reward_model(pairs, Path(sm.input.tokenizer).parent, out_dir, settings)
log.info("%s: %s", sm.rule, {k: v for k, v in summary.items() if k != "losses"})
