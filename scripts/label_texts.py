"""Feature labels for every text of a dataset variant (rule label_texts)."""

import polars as pl

from rlhf_audit.io import write_table
from rlhf_audit.labelling import (
    LMLabeller,
    TableLabeller,
    complete_from_config,
    label_pairs,
    missing_summary,
)
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
lab, features = sm.params.labeller, list(sm.params.features)
pairs = pl.read_parquet(sm.input.pairs)
if lab["kind"] in ("ground_truth", "file"):
    labeller = TableLabeller.from_file(lab["path"], features)
else:
    complete = complete_from_config(lab["lm"], lab.get("lm_spec"), sm.params.device)
    labeller = LMLabeller(complete, features)
labels = label_pairs(labeller, pairs)
missing = missing_summary(labels)
log.info("labelled %d texts; missing: %s", labels.height, missing)
write_table(labels, sm.output.labels,
            provenance(sm.rule, params={"labeller": lab, "features": features},
                       inputs={"pairs": sm.input.pairs}, missing=missing))
