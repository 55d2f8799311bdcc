"""Steering sweeps and identity-prime generations for one model (rule generate_steering)."""

import numpy as np
import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.extract import read_vectors
from rlhf_audit.io import write_table
from rlhf_audit.models import load_causal_lm
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering import (
    SteeringSettings,
    build_vectors,
    identity_prime_generations,
    sweep,
    typical_residual_norm,
)

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    m, p = sm.params.model, sm.params.settings
    settings = SteeringSettings(
        layer=p["layer"], alphas=tuple(p["alphas"]), positions=p["positions"],
        max_new_tokens=p["max_new_tokens"], samples=p["samples"], do_sample=p["do_sample"],
        temperature=p["temperature"], seed=p["seed"], random_vector_seed=p["random_vector_seed"],
        n_boot=p["n_boot"])
    layer = p["layer"]

    questions = pl.read_ndjson(sm.input.questions)
    if p["n_questions"]:
        questions = questions.head(p["n_questions"])
    qs = dict(zip(questions["id"].to_list(), questions["question"].to_list(), strict=True))

    # The base model's partisan direction (left -> right) at the steering layer: the same
    # vector steers both models, so their dose-responses are comparable.
    directions = pl.read_parquet(sm.input.directions).filter(
        (pl.col("model") == "base") & (pl.col("layer") == layer) & (pl.col("method") == p["method"]))
    if directions.height != 1:
        raise ValueError(f"{sm.input.directions}: no base '{p['method']}' direction at layer {layer}; "
                         "steering.layer must be one of the extracted layers")
    direction = np.asarray(directions["direction"][0], np.float32)
    # Alpha is in units of this model's typical residual norm at the layer.
    _, X = read_vectors(list(sm.input.shards), layer, "last")
    norm = typical_residual_norm(X)

    w_dec = None
    SAE_SPEC = p.get("sae_spec")
    if "policy_features" in sm.input.keys():
        from rlhf_audit.sae import load_sae

        sel = pl.read_parquet(sm.input.policy_features).filter(pl.col("selected"))
        sort_col = "q_partisan_vs_neutral" if "q_partisan_vs_neutral" in sel.columns else "feature"
        feats = sel.sort(sort_col, nulls_last=True)["feature"].head(p["n_sae_features"]).to_list()
        if feats:
            sae = load_sae(SAE_SPEC)
            rows = sae.W_dec.detach().float().cpu().numpy()[feats]
            # Orient every decoder row toward the right, as the partisan direction is.
            rows = rows * np.sign(rows @ direction)[:, None]
            w_dec = rows
            log.info("feature-level vector from policy features %s", feats)
        else:
            log.warning("no policy features were selected: no feature-level steering vector")
    vectors = build_vectors(layer, direction, norm, w_dec_rows=w_dec, seed=p["random_vector_seed"])

    model, tok = load_causal_lm(m["spec"], device=m["device"], dtype=m["dtype"])
    gens = sweep(model, tok, qs, vectors, list(p["alphas"]), settings=settings,
                 model_name=m["role"], chat=m["chat"])
    primes = identity_prime_generations(model, tok, qs, settings=settings, model_name=m["role"],
                                        chat=m["chat"])
    prov = provenance(sm.rule, params={"model": m, "settings": p}, typical_norm=norm,
                      inputs={"directions": sm.input.directions})
    write_table(gens, sm.output.sweep, prov)
    write_table(primes, sm.output.primes, prov)
    write_table(pl.DataFrame({"vector": list(vectors), "layer": [v[0] for v in vectors.values()],
                              "norm": [float(np.linalg.norm(v[1])) for v in vectors.values()],
                              "values": [v[1].tolist() for v in vectors.values()]}),
                sm.output.vectors, prov)
    log.info("%s: %d steered and %d primed generations", m["name"], gens.height, primes.height)


run_job_cached(sm, compute)
