"""Generate answers under injected external confidence for one model (rule generate_calibration)."""

import polars as pl

from rlhf_audit.cache import run_job_cached
from rlhf_audit.calibration.templates import build_prompts, load_templates
from rlhf_audit.io import write_table
from rlhf_audit.lm.generation import generate
from rlhf_audit.lm.loader import load_causal_lm
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)


def compute():
    m, p = sm.params.model, sm.params.settings
    model, tok = load_causal_lm(m["spec"], device=m["device"], dtype=m["dtype"])
    templates = load_templates(sm.input.templates)
    items = build_prompts(pl.read_parquet(sm.input.problems), p["levels"], p["strategies"],
                          templates, chat=m["chat"], tokenizer=tok)
    # A chat template already emits BOS; a completion prompt gets it from the tokenizer.
    gens = generate(model, tok, items["prompt"].to_list(), max_new_tokens=p["max_new_tokens"],
                    batch_size=p["batch_size"], seed=p["seed"], add_special_tokens=not m["chat"])
    table = items.with_columns(
        pl.Series("completion", [g.text for g in gens], pl.String),
        pl.Series("token_ids", [g.token_ids for g in gens], pl.List(pl.Int64)),
        pl.Series("token_logprobs", [g.token_logprobs for g in gens], pl.List(pl.Float64)),
    )
    write_table(table, sm.output.generations,
                provenance(sm.rule, params={"model": m, "settings": p},
                           inputs={"problems": sm.input.problems, "templates": sm.input.templates},
                           template_version=templates.version))
    log.info("%s: %d generations", m["name"], table.height)


run_job_cached(sm, compute)
