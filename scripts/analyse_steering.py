"""Dose-response, disconnect statistic, identity-prime effect (rule analyse_steering)."""

import polars as pl

from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering import (
    HEADLINE_KEYS,
    degeneration_table,
    dose_response,
    dose_slopes,
    headline,
    prime_effects,
    prime_means,
)

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
p = sm.params.settings
inp = sm.input
SCORERS = ("projection", "judge")


def scored(kind):
    """Generations of both models with every scorer's columns beside them (same row order)."""
    parts = []
    for role in ("base", "instruct"):
        gens = pl.read_parquet(inp[f"{role}_{kind}"])
        cols = [pl.read_parquet(inp[f"{role}_{kind}_{s}"]) for s in SCORERS]
        for c in cols:
            if c.height != gens.height:
                raise ValueError(f"{role} {kind}: scores have {c.height} rows for "
                                 f"{gens.height} generations; rerun score_steering")
        parts.append(pl.concat([gens, *cols], how="horizontal"))
    return pl.concat(parts)


def per_scorer(table_fn, table):
    """One table over every scorer (a scorer with no valid score adds no rows)."""
    return pl.concat([table_fn(table, s, **kw) for s in SCORERS])


steer, primes = scored("sweep"), scored("primes")
kw = {"n_boot": p["n_boot"], "seed": p["seed"]}
dose = per_scorer(dose_response, steer)
slopes = per_scorer(dose_slopes, steer)
effects = per_scorer(prime_effects, primes)
means = per_scorer(prime_means, primes)
est = headline(steer, primes, "base", "instruct", **kw)
prov = provenance(sm.rule, params=dict(p), n_generations=steer.height,
                  n_primed=primes.height)
out = sm.output
write_table(dose, out.dose, prov)
write_table(slopes, out.slopes, prov)
write_table(effects, out.primes, prov)
write_table(means, out.prime_means, prov)
write_table(degeneration_table(steer), out.degeneration, prov)
write_fragment(est, HEADLINE_KEYS, out.headline)
log.info("steering: %d headline numbers", len(est))
