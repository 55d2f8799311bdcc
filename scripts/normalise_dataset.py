"""Validate one input dataset and write it as normalised Parquet (rule normalise_dataset)."""

from rlhf_audit.formats import load_dataset_as_table, table_hash
from rlhf_audit.io import write_table
from rlhf_audit.runtime import provenance, setup

sm = snakemake  # noqa: F821  (injected by Snakemake)
log = setup(sm.log[0])
spec = sm.params.spec
df = load_dataset_as_table(spec["format"], spec["source"], limit=spec.get("limit"))
digest = table_hash(df)
log.info("%s: %d rows, content sha256 %s", sm.wildcards.dataset, df.height, digest)
write_table(df, sm.output.table,
            provenance(sm.rule, params=dict(spec), inputs={"source": spec["source"].get("path")
                                                          or spec["source"]},
                       content_sha256=digest, n_rows=df.height))
