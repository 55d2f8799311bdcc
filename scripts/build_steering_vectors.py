"""One set of steering vectors per pair, applied to both models (rule build_steering_vectors).

The dose unit is measured once, on the base model: the median per-token residual norm at
the steering layer over the content tokens of the steering questions (identical text for
both models). Selection and orientation of the policy features:
steering.vectors.policy_feature_rows; the whole build: steering.vectors.build_steering_vectors.
"""

import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.io import write_table
from rlhf_audit.lm.loader import load_causal_lm
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering.settings import SteeringSettings
from rlhf_audit.steering.vectors import build_steering_vectors

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    p, b = sm.params.settings, sm.params.base
    questions = pl.read_ndjson(sm.input.questions)
    if p["n_questions"]:
        questions = questions.head(p["n_questions"])
    pf = w_dec = None
    if "policy_features" in sm.input.keys():
        from rlhf_audit.sae.load import load_sae

        pf = pl.read_parquet(sm.input.policy_features)
        w_dec = load_sae(p["sae_spec"]).W_dec.detach().float().cpu().numpy()
    model, tok = load_causal_lm(b["spec"], device=b["device"], dtype=b["dtype"])
    table, norm = build_steering_vectors(
        model, tok, questions["question"].to_list(), pl.read_parquet(sm.input.directions),
        settings=SteeringSettings.from_params(p), method=p["method"],
        n_features=p["n_sae_features"], policy_features=pf, w_dec=w_dec,
        directions_source=sm.input.directions,
        features_source=sm.input.get("policy_features", "policy features"))
    write_table(table, sm.output.vectors,
                provenance(sm.rule, params={"settings": p, "base": b}, dose_norm=norm,
                           inputs={"directions": sm.input.directions}))


run_job_cached(sm, compute)
