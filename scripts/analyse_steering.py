"""Slopes, slope differences against the random nulls, identity-prime effects, judge
failures per cell (rule analyse_steering)."""

import polars as pl

from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering.analysis import HEADLINE_KEYS, analyse
from rlhf_audit.steering.settings import SCORES, SteeringSettings

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
p = sm.params.settings
inp = sm.input


def scored(kind):
    """Generations of both models with every scorer's columns beside them (same row order)."""
    parts = []
    for role in ("base", "instruct"):
        gens = pl.read_parquet(inp[f"{role}_{kind}"])
        cols = [pl.read_parquet(inp[f"{role}_{kind}_{s}"]) for s in SCORES]
        for c in cols:
            if c.height != gens.height:
                raise ValueError(f"{role} {kind}: scores have {c.height} rows for "
                                 f"{gens.height} generations; rerun score_steering")
        parts.append(pl.concat([gens, *cols], how="horizontal"))
    return pl.concat(parts)


stance_auc = None
if "classifier" in inp.keys():
    from rlhf_audit.stance import StanceClassifier

    stance_auc = StanceClassifier.load(inp.classifier).heldout_auc
settings = SteeringSettings.from_params(p)
steer, primes = scored("sweep"), scored("primes")
out = analyse(steer, primes, pl.read_parquet(inp.vectors), stance_auc=stance_auc,
              settings=settings)
prov = provenance(sm.rule, params=dict(p), n_generations=steer.height, n_primed=primes.height)
for key, table in (("dose", "dose"), ("slopes", "slopes"), ("disconnect", "disconnect"),
                   ("primes", "prime_effects"), ("prime_means", "prime_means"),
                   ("degeneration", "degeneration"), ("judge_failures", "judge_failures")):
    t = out[table]
    write_table(t if t is not None else pl.DataFrame(), sm.output[key], prov)
write_fragment(out["estimates"], HEADLINE_KEYS, sm.output.headline)
log.info("steering: %d headline numbers", len(out["estimates"]))
