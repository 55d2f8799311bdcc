"""Generate every data set the organism is trained and evaluated on (rule build_organism_data)."""

from rlhf_audit.organism import write_jsonl
from rlhf_audit.organism.corpus import CORPUS_PRESETS, build_organism_data, write_organism_data
from rlhf_audit.organism.hh import rerender_pair, write_hh_labels
from rlhf_audit.runtime import setup

# Share of re-rendered texts that also get one spoiler trait flipped, as an LM
# rewriter sometimes changes tone or length: SEAL's robustness regression needs flips.
REWRITE_FLIP_PROB = 0.3

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
p = sm.params.settings
settings = CORPUS_PRESETS[p["preset"]].__class__(
    **{**CORPUS_PRESETS[p["preset"]].__dict__, "seed": p["seed"],
       "calibration_templates": str(sm.input.templates)})
data = build_organism_data(settings)
out_dir = sm.output.manifest.rsplit("/", 1)[0]
write_organism_data(data, out_dir, settings)
rewritten = [rerender_pair(pair, seed=p["seed"], flip_prob=REWRITE_FLIP_PROB)
             for pair in data["eval_rm_hh"]]
write_jsonl(({"pair_id": q["pair_id"], "chosen": q["chosen"], "rejected": q["rejected"]}
             for q in rewritten), sm.output.hh_rewritten)
write_hh_labels(rewritten, sm.output.hh_rewritten_labels,
                provenance={"source": "rlhf_audit.organism.hh.rerender_pair",
                            "flip_prob": REWRITE_FLIP_PROB, "seed": p["seed"]})
log.info("organism data written to %s", out_dir)
