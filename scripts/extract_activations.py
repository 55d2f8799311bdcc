"""Extract one shard of residual-stream activations (rule extract_activations)."""

import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.extract.disk import check_extraction_disk
from rlhf_audit.extract.settings import ExtractSettings
from rlhf_audit.extract.write import extract_shard
from rlhf_audit.lm.loader import borrow_chat_template, load_causal_lm
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    m, s, sh = sm.params.model, dict(sm.params.settings), sm.params.shard
    settings = ExtractSettings.from_params(s)

    prompts = pl.read_parquet(sm.input.prompts)
    lo = sh["index"] * prompts.height // sh["n_shards"]
    hi = (sh["index"] + 1) * prompts.height // sh["n_shards"]
    model, tok = load_causal_lm(m["spec"], device=m["device"], dtype=m["dtype"])
    if m.get("chat_template_from"):  # diffing.context chat: the base reads instruct's template
        borrow_chat_template(tok, m["chat_template_from"])
    check_extraction_disk(sm.output.shard, prompts.slice(lo, hi - lo), settings, model.config)
    stats = extract_shard(model, tok, prompts.slice(lo, hi - lo), settings, sm.output.shard,
                          provenance=provenance(sm.rule, params={"model": m, "settings": s,
                                                                 "shard": sh, "rows": [lo, hi]}))
    log.info("shard %s of %s: prompts %d-%d, %s", sh["index"], m["name"], lo, hi, stats)


run_job_cached(sm, compute)
