"""Feature labels for every text of a dataset variant (rule label_texts)."""

import polars as pl

from rlhf_audit.io import write_table
from rlhf_audit.labelling import (
    LMLabeller,
    TableLabeller,
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
    from rlhf_audit.labelling import ChatCompletionsClient, EndpointSettings, hf_complete

    lm = lab["lm"]
    if lm["kind"] == "hf":
        from rlhf_audit.models import load_causal_lm

        model, tok = load_causal_lm(lab["lm_spec"], device=sm.params.device)
        complete = hf_complete(model, tok, max_new_tokens=lm["max_new_tokens"])
    else:
        complete = ChatCompletionsClient(EndpointSettings(
            base_url=lm["base_url"], model=lm["model"], api_key_env=lm["api_key_env"],
            timeout_s=lm["timeout_s"], max_retries=lm["max_retries"],
            max_tokens=lm["max_new_tokens"]))
    labeller = LMLabeller(complete, features)
labels = label_pairs(labeller, pairs)
missing = missing_summary(labels)
log.info("labelled %d texts; missing: %s", labels.height, missing)
write_table(labels, sm.output.labels,
            provenance(sm.rule, params={"labeller": lab, "features": features},
                       inputs={"pairs": sm.input.pairs}, missing=missing))
