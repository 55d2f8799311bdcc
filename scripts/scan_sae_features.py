"""Stream one model's token activations through an SAE, splice it into the model
(rule scan_sae_features)."""

from pathlib import Path

from rlhf_audit.runtime import provenance, setup
from rlhf_audit.sae.scan import ScanSettings, run_scan, write_scan

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0], sm.threads)
spec = {k: v for k, v in sm.params.sae.items() if k in ("release", "id", "path")}
m = sm.params.model
scan = run_scan(spec, sm.params.sae["layer"], list(sm.input.shards), ScanSettings(**sm.params.scan),
                device=sm.params.device, config_key=f"sae.saes.{sm.params.sae['name']}",
                model_spec=m["spec"] if m["splice"] else None, dtype=m["dtype"],
                prompts_path=sm.input.prompts, chat_template=m["chat_template"],
                max_length=m["max_length"])
write_scan(scan, Path(sm.output.meta).parent,
           provenance(sm.rule, params={"sae": sm.params.sae, "scan": sm.params.scan, "model": m,
                                       "device": sm.params.device},
                      inputs={"shard_0": sm.input.shards[0]}))
log.info("scanned %d prompts", scan.prompts.height)
