"""Score steered and primed generations with one scorer (rule score_steering).

projection: the base model's activations on the generated text, projected on the
base partisan direction (+ = right), plus degeneration measures (perplexity under
the unsteered base, distinct-2, repeat-4). judge: a judge model's rating in [-1, 1].
"""

import numpy as np
import polars as pl

from rlhf_audit.io import write_table
from rlhf_audit.models import load_causal_lm
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.steering import SteeringSettings, score_generations

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
sc, p = sm.params.scorer, sm.params.settings
tables = {k: pl.read_parquet(sm.input[k]) for k in ("sweep", "primes")}
settings = SteeringSettings(layer=p["layer"], max_new_tokens=p["max_new_tokens"])

if sc["scorer"] == "projection":
    base = sc["base"]
    directions = pl.read_parquet(sm.input.directions).filter(
        (pl.col("model") == "base") & (pl.col("layer") == p["layer"])
        & (pl.col("method") == p["method"]))
    direction = np.asarray(directions["direction"][0], np.float32)
    model, tok = load_causal_lm(base["spec"], device=sc["device"], dtype=sc["dtype"])
    cols = ["projection", "perplexity", "distinct_2", "repeat_4"]
    scored = {k: score_generations(df, model, tok, direction, p["layer"], settings=settings)
              .select(cols) for k, df in tables.items()}
else:
    from rlhf_audit.judge import JudgeSettings, make_judge

    j = sc["judge"]
    js = JudgeSettings(kind=j["kind"], model=j.get("model", ""), method=j["method"],
                       max_new_tokens=j["max_new_tokens"], timeout_s=j["timeout_s"],
                       max_retries=j["max_retries"], api_key_env=j["api_key_env"],
                       base_url=j.get("base_url", JudgeSettings.base_url),
                       api_model=j.get("model", "") if j["kind"] == "openai" else "")
    model = tok = None
    if j["kind"] == "hf":
        model, tok = load_causal_lm(j["spec"], device=sc["device"], dtype=sc["dtype"])
    judge = make_judge(js, model, tok)
    scored = {}
    for k, df in tables.items():
        rated = judge.rate(df["text"].to_list(), df["question"].to_list())
        scored[k] = rated.select(pl.col("judge_score").alias("judge"), "judge_ok",
                                 "judge_error", "judge_reply")
        log.info("%s: judge failed on %d of %d", k, int((~rated["judge_ok"]).sum()),
                 rated.height)
prov = provenance(sm.rule, params={"scorer": sc, "settings": p},
                  inputs={k: sm.input[k] for k in ("sweep", "primes")})
write_table(scored["sweep"], sm.output.sweep, prov)
write_table(scored["primes"], sm.output.primes, prov)
