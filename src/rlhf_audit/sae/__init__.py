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
  control matched on base statement incidence, and the headline.
- :mod:`~rlhf_audit.sae.figures`: the figure.

Every public name is re-exported here, lazily (PEP 562), so that importing one submodule
does not import the others: the workflow hashes a script's imports to decide what reruns,
and a GPU rule must not rerun when only the analysis changed. Workflow scripts import
from the submodules, so that the hash sees the module they use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_STATEMENT_PATTERN": "select",
    "FeatureScan": "scan",
    "HEADLINE_KEYS": "select",
    "LABELS": "select",
    "NEUTRAL_LABEL": "select",
    "PARTISAN_LABELS": "select",
    "PolicySelection": "select",
    "SAEAnalysisSettings": "select",
    "SAESettings": "train",
    "SAEStudy": "select",
    "SPLICE_SCHEMA": "scan",
    "ScanSettings": "scan",
    "UNLABELLED": "scan",
    "analyse_policy_features": "select",
    "check_sae_fits": "load",
    "directions_from_table": "select",
    "encode_features": "scan",
    "load_sae": "load",
    "match_controls": "select",
    "partisan_direction_diffmean": "select",
    "partisan_direction_lda": "select",
    "partisan_fraction": "select",
    "plot_policy_firing": "figures",
    "read_scan": "scan",
    "reconstruction_quality_dense": "train",
    "run_scan": "scan",
    "sae_layer": "load",
    "scan_features": "scan",
    "select_policy_features": "select",
    "spliced_loss": "scan",
    "split_statements": "select",
    "statement_means": "select",
    "statement_table": "select",
    "tally_features": "scan",
    "tally_from_scan": "scan",
    "top_prompts": "select",
    "train_sae": "train",
    "van_elteren": "select",
    "write_scan": "scan",
}
"""Public name -> the submodule that defines it."""

__all__ = sorted(_EXPORTS)


_SUBMODULES = ("figures", "load", "scan", "select", "train")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"rlhf_audit.sae.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhf_audit.sae' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlhf_audit.sae.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
