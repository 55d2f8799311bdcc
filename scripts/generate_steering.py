"""The steering sweep of one model (rule generate_steering).

Both models of a pair read the same vectors file (one absolute vector and dose per pair).
The identity primes are rule generate_primes (scripts/generate_primes.py)."""

import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.io import write_table
from rlhf_audit.lm.loader import load_causal_lm
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering.generate import run_sweep, vectors_from_table
from rlhf_audit.steering.settings import SteeringSettings

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    m, p = sm.params.model, sm.params.settings
    settings = SteeringSettings.from_params(p)
    every = pl.read_ndjson(sm.input.questions)
    questions = every.head(p["n_questions"]) if p["n_questions"] else every
    vectors = vectors_from_table(pl.read_parquet(sm.input.vectors))
    model, tok = load_causal_lm(m["spec"], device=m["device"], dtype=m["dtype"])
    gens = run_sweep(model, tok, questions, vectors, settings=settings, model_name=m["role"],
                     chat=m["chat"])
    prov = provenance(sm.rule, params={"model": m, "settings": p},
                      inputs={"vectors": sm.input.vectors})
    write_table(gens, sm.output.sweep, prov)
    log.info("%s: %d steered generations", m["name"], gens.height)


run_job_cached(sm, compute)
