"""Write the manifest of one model x dataset activation set (rule write_activation_manifest)."""

import json

from rlhf_audit.extract import (
    ExtractSettings,
    build_manifest,
    resolved_revision,
    tokenizer_hash,
    write_manifest,
)
from rlhf_audit.io import read_provenance
from rlhf_audit.lm.loader import ModelSpec, load_tokenizer, weights_hash
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
m, s = sm.params.model, dict(sm.params.settings)
if s["token_layers"]:
    s["positions"] = [*s["positions"], "token"]
spec = ModelSpec.from_config(m["spec"])
if spec.path:
    cfg = json.load(open(f"{spec.path}/config.json"))
else:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(spec.hf, revision=spec.revision).to_dict()
manifest = build_manifest(
    model=spec.to_dict(), revision=spec.revision, weight_hash=weights_hash(spec),
    tokenizer_hash=tokenizer_hash(load_tokenizer(spec)),
    data_hash=read_provenance(sm.input.prompts)["content_sha256"],
    settings=ExtractSettings(**s), n_layers=cfg["num_hidden_layers"],
    shards=list(sm.input.shards), d_model=cfg["hidden_size"],
    resolved_revision=resolved_revision(spec.hf, spec.revision))
write_manifest(manifest, sm.output.manifest)
log.info("%s: %d shards, %d rows, computed in %s, pooled over %s", m["name"],
         manifest["n_shards"], manifest["n_rows"], manifest["compute_dtype"],
         manifest["pool_over"])
