"""Merge headline fragments into results/headline.json and write the claims table
(rule collect_headline)."""

from pathlib import Path

from rlhf_audit.headline import merge
from rlhf_audit.io import atomic_path, write_json, write_table
from rlhf_audit.report import claims_html, claims_markdown, claims_table, load_planted
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
fragments = {tuple(name.split("|")): sm.input[name] for name in sm.params.fragments}
doc = merge(fragments, sm.params.run_label)
prov = provenance(sm.rule, params={"run_label": sm.params.run_label,
                                   "models": sm.params.models},
                  inputs={name: sm.input[name] for name in sm.params.fragments})
doc["provenance"] = prov
write_json(doc, sm.output.headline)
table = claims_table(doc, planted=load_planted(sm.params.planted))
write_table(table, sm.output.claims, prov)
for path, text in ((sm.output.claims_md, claims_markdown(table, sm.params.run_label)),
                   (sm.output.claims_html, claims_html(table, sm.params.run_label, prov))):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
log.info("%d headline numbers, %d claim rows", doc["n_numbers"], table.height)
