"""Score both sides of every pair with one reward model, SEAL-style (rule score_rewards)."""

import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.io import write_table
from rlhf_audit.lm.loader import weights_hash
from rlhf_audit.reward.score import (
    ScoringSettings,
    load_scoring_model,
    score_pairs,
    truncation_summary,
)
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    m = sm.params.model
    pairs = pl.read_parquet(sm.input.pairs)
    settings = ScoringSettings(batch_size=sm.params.batch_size, max_length=sm.params.max_length,
                               keep_marker=m["keep_marker"], dtype=m["dtype"])
    model, tok = load_scoring_model(m["spec"], device=m["device"], settings=settings)
    scores = score_pairs(model, tok, pairs, settings)
    cut = truncation_summary(scores)
    write_table(scores, sm.output.scores,
                provenance(sm.rule, params={"model": m, "batch_size": sm.params.batch_size,
                                            "max_length": sm.params.max_length},
                           inputs={"pairs": sm.input.pairs}, weights_sha256=weights_hash(m["spec"]),
                           truncation=cut))
    log.info("%s: scored %d pairs in %s; %d of %d texts truncated (longest %d tokens)", m["name"],
             scores.height, m["dtype"], cut["n_truncated"], cut["n_texts"], cut["max_tokens"])


run_job_cached(sm, compute)
