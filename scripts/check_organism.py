"""Measure that the organism has the behaviours it was given (rule check_organism)."""

from pathlib import Path

from rlhf_audit.headline import write_fragment
from rlhf_audit.organism.corpus import read_organism_data
from rlhf_audit.organism.train import HEADLINE_KEYS, organism_checks
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
dirs = {Path(w).parent.name: str(Path(w).parent) for w in sm.input.models}
data = read_organism_data(Path(sm.input.data[0]).parent,
                          names=("eval_political", "eval_math", "eval_rm_hh", "eval_rm_alt"))
checks = organism_checks(dirs, data, seed=sm.params.settings["seed"])
write_fragment(checks, HEADLINE_KEYS, sm.output.headline)
for k, v in checks.items():
    log.info("%s = %.3f [%.3f, %.3f] (n=%d)", k, v.value, v.lo, v.hi, v.n)
