"""Score steered and primed generations with one scorer (rule score_steering).

Before either scorer reads a reply, the words that tell the identity primes apart are
masked in every reply (steering.score.mask_identity_terms). projection: the base model's
activations on the reply, projected on a partisan direction fitted on statements of
issues disjoint from the question's (cross-fitted), plus perplexity under the base.
judge: the configured judge's rating in [-1, 1] (LM or stance classifier); failures stay
as rows with a reason.
"""

import polars as pl

from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering.score import (
    crossfit_directions,
    identity_terms,
    score_judge,
    score_projection,
)
from rlhf_audit.steering.settings import SteeringSettings

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
sc, p = sm.params.scorer, sm.params.settings
tables = {k: pl.read_parquet(sm.input[k]) for k in ("sweep", "primes")}
terms = identity_terms(tables["primes"])
log.info("masked before scoring: %s", terms)
settings = SteeringSettings.from_params(p)

if sc["scorer"] == "projection":
    from rlhf_audit.extract.read import read_vectors
    from rlhf_audit.lm.loader import load_causal_lm

    base = sc["base"]
    meta, X = read_vectors(list(sm.input.shards), p["layer"], "mean")
    issues = sorted(set(tables["sweep"]["issue"].to_list()) | set(tables["primes"]["issue"]
                                                                  .to_list()))
    directions = crossfit_directions(meta, X, issues, settings.projection_folds, settings.seed)
    model, tok = load_causal_lm(base["spec"], device=sc["device"], dtype=sc["dtype"])
    scored = {k: score_projection(df, model, tok, directions, p["layer"], terms=terms,
                                  settings=settings) for k, df in tables.items()}
else:
    from rlhf_audit.judge import make_judge
    from rlhf_audit.steering.judging import judge_settings

    j = sc["judge"]
    js = judge_settings(j, sm.input.get("classifier", ""))
    model = tok = None
    if j["kind"] == "hf":
        from rlhf_audit.lm.loader import load_causal_lm

        model, tok = load_causal_lm(j["spec"], device=sc["device"], dtype=sc["dtype"])
    judge = make_judge(js, model, tok)
    scored = {k: score_judge(df, judge, terms=terms) for k, df in tables.items()}
    for k, df in scored.items():
        log.info("%s: judge failed on %d of %d", k, int((~df["judge_ok"]).sum()), df.height)
prov = provenance(sm.rule, params={"scorer": sc, "settings": p},
                  inputs={k: sm.input[k] for k in ("sweep", "primes")})
write_table(scored["sweep"], sm.output.sweep, prov)
write_table(scored["primes"], sm.output.primes, prov)
