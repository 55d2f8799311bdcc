"""SAE features on base vs instruct activations ("The Neutral Mask", claim 3).

Split along the rules, so that a rule's code closure holds only what it runs:

- :mod:`~rlhf_audit.sae.load`: ``load_sae`` (sae-lens release or local folder),
  ``check_sae_fits`` (width and hook layer against the model).
- :mod:`~rlhf_audit.sae.train`: ``train_sae`` for the organism's own TopK SAE.
- :mod:`~rlhf_audit.sae.scan`: ``scan_features`` (one streaming pass per model:
  sparse per-(prompt, feature) tallies, reconstruction sums, per-prompt mean vectors)
  and ``spliced_loss`` (the model run with the SAE spliced in); the GPU job.
- :mod:`~rlhf_audit.sae.select`: statement-level policy-feature selection on one half
  of the statements, the measurement of both models on the other half against a
  rate-matched control, and the headline.
- :mod:`~rlhf_audit.sae.figures`: the figure.

Everything is re-exported here; workflow scripts import from the submodules.
"""

from rlhf_audit.sae.figures import plot_policy_firing
from rlhf_audit.sae.load import check_sae_fits, load_sae, sae_layer
from rlhf_audit.sae.scan import (
    SPLICE_SCHEMA,
    UNLABELLED,
    FeatureScan,
    ScanSettings,
    encode_features,
    read_scan,
    run_scan,
    scan_features,
    spliced_loss,
    tally_features,
    tally_from_scan,
    write_scan,
)
from rlhf_audit.sae.select import (
    DEFAULT_STATEMENT_PATTERN,
    HEADLINE_KEYS,
    LABELS,
    NEUTRAL_LABEL,
    PARTISAN_LABELS,
    PolicySelection,
    SAEAnalysisSettings,
    SAEStudy,
    analyse_policy_features,
    match_controls,
    partisan_direction_diffmean,
    partisan_direction_lda,
    partisan_fraction,
    select_policy_features,
    split_statements,
    statement_means,
    statement_table,
    top_prompts,
    van_elteren,
)
from rlhf_audit.sae.train import SAESettings, reconstruction_quality_dense, train_sae

__all__ = [
    "DEFAULT_STATEMENT_PATTERN",
    "HEADLINE_KEYS",
    "LABELS",
    "NEUTRAL_LABEL",
    "PARTISAN_LABELS",
    "SPLICE_SCHEMA",
    "UNLABELLED",
    "FeatureScan",
    "PolicySelection",
    "SAEAnalysisSettings",
    "SAESettings",
    "SAEStudy",
    "ScanSettings",
    "analyse_policy_features",
    "check_sae_fits",
    "encode_features",
    "load_sae",
    "match_controls",
    "partisan_direction_diffmean",
    "partisan_direction_lda",
    "partisan_fraction",
    "plot_policy_firing",
    "read_scan",
    "run_scan",
    "reconstruction_quality_dense",
    "sae_layer",
    "scan_features",
    "select_policy_features",
    "spliced_loss",
    "split_statements",
    "statement_means",
    "statement_table",
    "tally_features",
    "tally_from_scan",
    "top_prompts",
    "train_sae",
    "van_elteren",
    "write_scan",
]
