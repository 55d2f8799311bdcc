"""Parse answers and confidences; Spearman rho, bias, compliance, internal confidence
(rule score_calibration)."""

import polars as pl

from rlhf_audit.calibration.analysis import headline, headline_keys, level_summary, metrics
from rlhf_audit.calibration.scoring import score_generations
from rlhf_audit.calibration.settings import CalibrationSettings
from rlhf_audit.calibration.templates import load_templates
from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.lm.loader import ModelSpec, load_tokenizer
from rlhf_audit.lm.records import Generation
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
p = sm.params.settings
settings = CalibrationSettings.from_params(p)
parts = []
for role, m in sm.params.models.items():
    gens = pl.read_parquet(sm.input[role])
    generations = [Generation(prompt=r["prompt"], text=r["completion"], token_ids=r["token_ids"],
                              token_logprobs=r["token_logprobs"])
                   for r in gens.select("prompt", "completion", "token_ids",
                                        "token_logprobs").iter_rows(named=True)]
    items = gens.drop("completion", "token_ids", "token_logprobs")
    tok = load_tokenizer(ModelSpec.from_config(m["spec"]))
    scored = score_generations(items, generations, tok, settings)
    parts.append(scored.with_columns(model=pl.lit(role)))
scored = pl.concat(parts, how="diagonal_relaxed")
templates = load_templates(p["templates"])
signal = {name: t.signal for name, t in templates.strategies.items()}
est = headline(scored, settings)
prov = provenance(sm.rule, params=dict(p), models=sm.params.models,
                  template_version=templates.version)
out = sm.output
write_table(scored, out.scored, prov)
write_table(metrics(scored, settings), out.metrics, prov)
write_table(level_summary(scored, settings), out.levels, prov)
write_fragment(est, headline_keys(("base", "instruct"), p["strategies"], signal=signal),
               out.headline)
log.info("calibration: %d replies scored, %d headline numbers", scored.height, len(est))
