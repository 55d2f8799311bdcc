"""One set of steering vectors per pair, applied to both models (rule build_steering_vectors).

The dose unit is measured once, on the base model: the median per-token residual norm at
the steering layer over the content tokens of the steering questions (identical text for
both models). Selection and orientation of the policy features: steering.policy_feature_rows.
"""

import numpy as np
import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.io import write_table
from rlhf_audit.lm.loader import load_causal_lm
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering import residual_token_norm, steering_vector_set

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def direction_of(table, role, layer, method, path):
    d = table.filter((pl.col("model") == role) & (pl.col("layer") == layer)
                     & (pl.col("method") == method))
    if d.height != 1:
        raise ValueError(f"{path}: no {role} '{method}' direction at layer {layer}; "
                         "steering.layer must be one of the extracted layers")
    return np.asarray(d["direction"][0], np.float64)


def compute():
    p, b = sm.params.settings, sm.params.base
    layer = p["layer"]
    questions = pl.read_ndjson(sm.input.questions)
    if p["n_questions"]:
        questions = questions.head(p["n_questions"])
    dirs = pl.read_parquet(sm.input.directions)
    direction = direction_of(dirs, "base", layer, p["method"], sm.input.directions)
    instruct = direction_of(dirs, "instruct", layer, p["method"], sm.input.directions)
    model, tok = load_causal_lm(b["spec"], device=b["device"], dtype=b["dtype"])
    norm = residual_token_norm(model, tok, questions["question"].to_list(), layer)
    log.info("dose unit: base median residual norm %.4g at layer %d", norm, layer)
    pf = w_dec = None
    if "policy_features" in sm.input.keys():
        from rlhf_audit.sae.load import load_sae

        pf = pl.read_parquet(sm.input.policy_features)
        w_dec = load_sae(p["sae_spec"]).W_dec.detach().float().cpu().numpy()
    table = steering_vector_set(
        layer, norm, direction, direction_instruct=instruct, policy_features=pf, w_dec=w_dec,
        n_features=p["n_sae_features"], n_random_directions=p["n_random_directions"],
        n_random_feature_sets=p["n_random_feature_sets"], seed=p["seed"],
        source=sm.input.get("policy_features", "policy features"))
    for r in table.filter(~pl.col("family").str.starts_with("random")).iter_rows(named=True):
        log.info("%s: cosine %.3f with the base partisan direction", r["vector"],
                 r["cos_partisan"])
    write_table(table, sm.output.vectors,
                provenance(sm.rule, params={"settings": p, "base": b}, dose_norm=norm,
                           inputs={"directions": sm.input.directions}))


run_job_cached(sm, compute)
