"""Unsteered answers of one model under every identity-prime condition (rule
generate_primes). It reads no steering vector, so a sweep setting never reruns it."""

import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.io import write_table
from rlhf_audit.lm.loader import load_causal_lm
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering.generate import identity_prime_generations, prime_design
from rlhf_audit.steering.settings import SteeringSettings

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    m, p = sm.params.model, sm.params.settings
    settings = SteeringSettings.from_params(p)
    every = pl.read_ndjson(sm.input.questions)
    primed = every.head(p["n_prime_questions"]) if p["n_prime_questions"] else every
    design = prime_design(primed, pl.read_ndjson(sm.input.identity_primes),
                          pl.read_ndjson(sm.input.personas), source=sm.input.identity_primes)
    model, tok = load_causal_lm(m["spec"], device=m["device"], dtype=m["dtype"])
    primes = identity_prime_generations(model, tok, design, settings=settings,
                                        model_name=m["role"], chat=m["chat"])
    prov = provenance(sm.rule, params={"model": m, "settings": p},
                      inputs={"identity_primes": sm.input.identity_primes})
    write_table(primes, sm.output.primes, prov)
    log.info("%s: %d primed generations", m["name"], primes.height)


run_job_cached(sm, compute)
