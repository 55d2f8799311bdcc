"""Feature labels for every text of a dataset variant (rule label_texts)."""

import polars as pl

from rlhf_audit.cache import cache_dir
from rlhf_audit.io import write_table
from rlhf_audit.labelling import (
    LabelCache,
    LMLabeller,
    LMLabellerSettings,
    TableLabeller,
    complete_from_config,
    failures_table,
    label_pairs,
    missing_summary,
)
from rlhf_audit.params import settings_from_params
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
lab, features = sm.params.labeller, list(sm.params.features)
pairs = pl.read_parquet(sm.input.pairs)
cache = None
if lab["kind"] in ("ground_truth", "file"):
    labeller = TableLabeller.from_file(lab["path"], features)
else:
    complete = complete_from_config(lab["lm"], lab.get("lm_spec"), sm.params.device,
                                    concurrency=lab.get("concurrency", 4))
    # Content-addressed: survives reruns the code hash triggers, shared between variants.
    cache = LabelCache(cache_dir() / "labels.sqlite") if lab.get("cache", True) else None
    # Keys of the labeller section that are not LMLabellerSettings fields are read above.
    settings = settings_from_params(LMLabellerSettings, lab,
                                    ignore=("kind", "path", "lm", "lm_spec", "concurrency",
                                            "cache"))
    labeller = LMLabeller(complete, features, settings=settings, cache=cache)
labels = label_pairs(labeller, pairs)
missing = missing_summary(labels)
log.info("labelled %d texts; missing: %s", labels.height, missing)
prov = provenance(sm.rule, params={"labeller": lab, "features": features},
                  inputs={"pairs": sm.input.pairs}, missing=missing,
                  label_cache=None if cache is None else str(cache.path),
                  labeller_spec=getattr(labeller, "spec", None))
write_table(labels, sm.output.labels, prov)
write_table(failures_table(labels), sm.output.failures, prov)
