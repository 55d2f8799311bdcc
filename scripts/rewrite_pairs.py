"""Rewrite a random share of pairs and measure semantic similarity (rule rewrite_pairs)."""

import polars as pl

from rlhf_audit.io import write_table
from rlhf_audit.rewrite import rewrite_summary, select_rewrite_pairs
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
r = sm.params.rewrite
original = pl.read_parquet(sm.input.original)
chosen_ids = select_rewrite_pairs(original["pair_id"].to_list(), r["share"], r.get("seed", 0))
selected = original.filter(pl.col("pair_id").is_in(chosen_ids))

if r["kind"] == "organism":
    rendered = pl.read_ndjson(sm.input.organism_rewrites)
    rewritten = selected.select("pair_id").join(rendered, on="pair_id", how="left",
                                                maintain_order="left")
    missing = rewritten.filter(pl.col("chosen").is_null())["pair_id"].to_list()
    if missing:
        raise ValueError(f"{sm.input.organism_rewrites}: no re-rendering for pairs {missing[:5]}")
    rewritten = rewritten.select("pair_id", "chosen", "rejected")
    rejections = pl.DataFrame(schema={"pair_id": pl.String, "side": pl.String,
                                      "attempt": pl.Int16, "reason": pl.String,
                                      "final": pl.Boolean})
else:
    from rlhf_audit.lm.complete import complete_from_config
    from rlhf_audit.rewrite import lm_rewrite_pairs

    complete = complete_from_config(r["lm"], r.get("lm_spec"), sm.params.device, json_mode=False,
                                    temperature=r["temperature"])
    rewritten, rejections = lm_rewrite_pairs(
        complete, selected.select("pair_id", "chosen", "rejected"), max_attempts=r["max_attempts"])
pooling = None
if r.get("embedder"):
    from rlhf_audit.rewrite import load_embedder, rewrite_similarity

    enc, tok, pooling, max_len, source = load_embedder(r["embedder"], sm.params.device,
                                                       r["pooling"])
    similarity = rewrite_similarity(enc, tok, selected, rewritten, pooling=pooling,
                                    max_length=max_len)
else:
    log.info("no reward.rewrite.embedder configured: semantic similarity not computed")
    similarity = pl.DataFrame(schema={"pair_id": pl.String, "sim_chosen": pl.Float64,
                                      "sim_rejected": pl.Float64, "cut_chosen": pl.Boolean,
                                      "cut_rejected": pl.Boolean})
summary = rewrite_summary(rejections, selected.height, rewritten.height)
prov = provenance(sm.rule, params=dict(r), inputs={"original": sm.input.original},
                  pooling=pooling, **summary,
                  n_similarity_cut=int(similarity["cut_chosen"].sum()
                                       + similarity["cut_rejected"].sum()))
write_table(rewritten, sm.output.pairs, prov)
write_table(similarity, sm.output.similarity, prov)
write_table(rejections, sm.output.failures, prov)
log.info("rewrote %d of %d selected pairs (%s)", rewritten.height, selected.height, summary)
