"""SEAL metrics for one reward-model pair (rule analyse_rewards)."""

import polars as pl

from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.labelling import labels_wide
from rlhf_audit.params import settings_from_params
from rlhf_audit.reward.analysis import (
    SealSettings,
    alignment_regimes,
    alignment_resistance,
    assemble_pairs,
    collinearity_check,
    estimates_table,
    feature_imprint,
    headline,
    headline_keys,
    robustness_flip_regression,
    robustness_summary,
    shift_angle_regression,
    tie_counts,
)
from rlhf_audit.reward.score import truncation_summary
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
s = settings_from_params(SealSettings, sm.params.settings)
inp = sm.input


def pairs_table(variant):
    labels = labels_wide(pl.read_parquet(inp[f"labels_{variant}"]), s.features)
    return assemble_pairs(pl.read_parquet(inp[f"pre_{variant}"]),
                          pl.read_parquet(inp[f"post_{variant}"]), labels)


pairs = pairs_table("original")
rewritten = pairs_table("rewritten") if "labels_rewritten" in inp.keys() else None
similarity = None
if "similarity" in inp.keys():
    similarity = pl.read_parquet(inp.similarity)
    similarity = similarity if similarity.height else None
truncation = {rm: truncation_summary(pl.read_parquet(inp[f"{rm}_original"]))
              for rm in ("pre", "post")}
vif = collinearity_check(pairs, s)
imprint = feature_imprint(pairs, s, vif)
flips = (robustness_flip_regression(pairs, rewritten, s) if rewritten is not None
         else pl.DataFrame())
est = headline(pairs, s, imprint=imprint, vif=vif, rewritten=rewritten, similarity=similarity,
               flips=flips if rewritten is not None else None, truncation=truncation)
dropped = vif.filter(pl.col("dropped")).select("feature", "reason").rows()
prov = provenance(sm.rule, params=dict(sm.params.settings), inputs=dict(inp.items()),
                  n_pairs=pairs.height,
                  n_rewritten=0 if rewritten is None else rewritten.height,
                  ties=tie_counts(pairs), truncation=truncation,
                  imprint_dropped_features=dict(dropped))
descriptions = headline_keys(s.regressors)
out = sm.output
write_table(pairs, out.pairs, prov)
write_table(vif, out.collinearity, prov)
write_table(imprint, out.imprint, prov)
write_table(alignment_regimes(pairs, s), out.regimes, prov)
write_table(alignment_resistance(pairs, s), out.resistance, prov)
write_table(shift_angle_regression(pairs, s, vif), out.angle, prov)
write_table(flips, out.flips, prov)
robustness = ({} if rewritten is None else robustness_summary(pairs, rewritten, s, similarity))
write_table(estimates_table(robustness, {}), out.robustness, prov)
write_table(estimates_table(est, descriptions), out.estimates, prov)
write_fragment(est, descriptions, out.headline)
log.info("SEAL %s: %d pairs, %d headline numbers; imprint dropped %s", sm.wildcards.rpair,
         pairs.height, len(est), dropped or "nothing")
