"""Partisan probes, transfer and compression for one model pair (rule fit_partisan_probes)."""

import json

import polars as pl

from rlhf_audit.extract.read import read_vectors_in_order
from rlhf_audit.headline import write_fragment
from rlhf_audit.io import write_table
from rlhf_audit.partisan import (
    HEADLINE_KEYS,
    MANIFEST_KEYS,
    PartisanSettings,
    analyse_layers,
    best_layer,
    check_same_pooling,
    directions_table,
    headline,
    probe_table,
    projections_table,
    transfer_table,
    variance_table,
)
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
settings = PartisanSettings.from_params(sm.params.settings)
position = sm.params.position
prompts = pl.read_parquet(sm.input.prompts)
manifests = {r: json.load(open(sm.input[f"{r}_manifest"])) for r in ("base", "instruct")}
check_same_pooling(manifests)
layers = sorted(set(manifests["base"]["layers"]) & set(manifests["instruct"]["layers"]))
ids = prompts["id"].to_list()


def aligned(role, layer):
    """Vectors of one layer in the order of the prompts table."""
    return read_vectors_in_order(list(sm.input[f"{role}_shards"]), layer, position, ids,
                                 f"{role} activations")


def per_layer():
    for layer in layers:
        log.info("layer %d", layer)
        yield layer, aligned("base", layer), aligned("instruct", layer)


labels = prompts["label"].to_list()
issues = prompts["issue"].to_list()
results = analyse_layers(per_layer(), labels, issues, prompt_ids=prompts["id"].to_list(),
                         settings=settings)
probes = probe_table(results)
best = best_layer(probes, settings.headline_method)
prov = provenance(sm.rule, params={**sm.params.settings, "position": position},
                  inputs={"prompts": sm.input.prompts,
                          "base_manifest": {k: manifests["base"].get(k) for k in
                                            MANIFEST_KEYS},
                          "instruct_manifest": {k: manifests["instruct"].get(k) for k in
                                                MANIFEST_KEYS}},
                  best_layer=best)
out = sm.output
write_table(probes, out.probes, prov)
write_table(transfer_table(results), out.transfer, prov)
write_table(variance_table(results), out.variance, prov)
write_table(projections_table(next(r for r in results if r.layer == best)), out.projections,
            prov)
write_table(directions_table(results), out.directions, prov)
write_fragment(headline(results, settings), HEADLINE_KEYS, out.headline)
log.info("best layer %d of %s", best, layers)
