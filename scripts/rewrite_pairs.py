"""Rewrite a random share of pairs and measure semantic similarity (rule rewrite_pairs)."""

import polars as pl

from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.seal import select_rewrite_pairs

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
r = sm.params.rewrite
original = pl.read_parquet(sm.input.original)
chosen_ids = select_rewrite_pairs(original["pair_id"].to_list(), r["share"], r.get("seed", 0))
selected = original.filter(pl.col("pair_id").is_in(chosen_ids))
failures = None
if r["kind"] == "organism":
    rendered = pl.read_ndjson(sm.input.organism_rewrites)
    rewritten = selected.select("pair_id").join(rendered, on="pair_id", how="left",
                                                maintain_order="left")
    missing = rewritten.filter(pl.col("chosen").is_null())["pair_id"].to_list()
    if missing:
        raise ValueError(f"{sm.input.organism_rewrites}: no re-rendering for pairs {missing[:5]}")
    rewritten = rewritten.select("pair_id", "chosen", "rejected")
else:
    from rlhf_audit.labelling import complete_from_config
    from rlhf_audit.rewrite import lm_rewrite_pairs

    complete = complete_from_config(r["lm"], r.get("lm_spec"), sm.params.device, json_mode=False)
    rewritten, failures = lm_rewrite_pairs(complete, selected.select("pair_id", "chosen",
                                                                      "rejected"))
if r.get("embedder"):
    from transformers import AutoModel

    from rlhf_audit.models import ModelSpec, load_tokenizer, resolve_device
    from rlhf_audit.rewrite import rewrite_similarity

    spec = ModelSpec.from_config(r["embedder"])
    enc = AutoModel.from_pretrained(spec.source, use_safetensors=True, trust_remote_code=False,
                                    revision=spec.revision).to(resolve_device(sm.params.device))
    similarity = rewrite_similarity(enc.eval(), load_tokenizer(spec), selected, rewritten)
else:
    log.info("no reward.rewrite.embedder configured: semantic similarity not computed")
    similarity = pl.DataFrame(schema={"pair_id": pl.String, "sim_chosen": pl.Float64,
                                      "sim_rejected": pl.Float64})
prov = provenance(sm.rule, params=dict(r), inputs={"original": sm.input.original},
                  n_selected=selected.height, n_rewritten=rewritten.height,
                  n_failed_texts=0 if failures is None else failures.height)
write_table(rewritten, sm.output.pairs, prov)
write_table(similarity, sm.output.similarity, prov)
log.info("rewrote %d of %d pairs", rewritten.height, original.height)
