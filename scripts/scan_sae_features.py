"""Stream one model's token activations through an SAE (rule scan_sae_features)."""

from pathlib import Path

from rlhf_audit.extract import iter_token_batches, shard_info
from rlhf_audit.runtime import provenance, setup
from rlhf_audit.sae import SAEAnalysisSettings, check_sae_fits, load_sae, scan_features, write_scan

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
spec = {k: v for k, v in sm.params.sae.items() if k in ("release", "id", "path")}
layer = sm.params.sae["layer"]
device = "cuda" if sm.params.device == "cuda" else "cpu"
sae = load_sae(spec, device=device)
d_model = shard_info(sm.input.shards[0])["d_model"]
check_sae_fits(sae, d_model, layer, config_key=f"sae.saes.{sm.params.sae['name']}")
scan = scan_features(sae, iter_token_batches(list(sm.input.shards), layer, 4096),
                     SAEAnalysisSettings(**sm.params.analysis))
write_scan(scan, Path(sm.output.meta).parent,
           provenance(sm.rule, params={"sae": sm.params.sae, "analysis": sm.params.analysis},
                      inputs={"shard_0": sm.input.shards[0]}))
log.info("scanned %d prompts", scan.prompts.height)
