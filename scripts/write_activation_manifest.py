"""Write the manifest of one model x dataset activation set (rule write_activation_manifest)."""

from rlhf_audit.extract.manifest import model_manifest, write_manifest
from rlhf_audit.extract.settings import ExtractSettings
from rlhf_audit.io import read_provenance
from rlhf_audit.runtime import setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
m, s = sm.params.model, dict(sm.params.settings)
manifest = model_manifest(m["spec"], ExtractSettings.from_params(s), list(sm.input.shards),
                          data_hash=read_provenance(sm.input.prompts)["content_sha256"])
write_manifest(manifest, sm.output.manifest)
log.info("%s: %d shards, %d rows, computed in %s, pooled over %s", m["name"],
         manifest["n_shards"], manifest["n_rows"], manifest["compute_dtype"],
         manifest["pool_over"])
