"""The study registry: one entry per study, read by the workflow (which studies exist
and their rule files), the report (titles, key documentation) and docs/headline.md
(where each number is computed).

Pure data (dotted names, no imports of study code), so that importing it adds no study
to any rule's code closure. Adding a study: its package, its rule file, one entry here,
its targets function in workflow/rules/common.smk and its claims in report.CLAIMS.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    """One study of the pipeline."""

    name: str
    """Config name (``studies:``) and headline section."""
    title: str
    """Section title in the claims table and docs/headline.md."""
    rule_file: str | None
    """Its rule file under workflow/rules (None: no rules of its own)."""
    keys: str
    """``module:ATTR`` of the {key: description} table of its headline keys."""
    computed_in: str
    """``module.function`` that computes those numbers (one hop from a key to its code)."""


REGISTRY: tuple[Study, ...] = (
    Study("organism", "Organism checks (embedded default only)", "organism.smk",
          "rlhf_audit.organism.train:HEADLINE_KEYS", "rlhf_audit.organism.train.organism_checks"),
    Study("partisan", "The Neutral Mask: partisan geometry (claims 1-2)", "partisan.smk",
          "rlhf_audit.partisan:HEADLINE_KEYS", "rlhf_audit.partisan.headline"),
    Study("sae", "The Neutral Mask: SAE features (claim 3)", "sae.smk",
          "rlhf_audit.sae.select:HEADLINE_KEYS",
          "rlhf_audit.sae.select.analyse_policy_features"),
    Study("steering", "The Neutral Mask: steering and identity primes (claims 4-5)",
          "steering.smk", "rlhf_audit.steering.analysis:HEADLINE_KEYS",
          "rlhf_audit.steering.analysis.analyse"),
    Study("calibration", "Resisting Correction: injected confidence", "calibration.smk",
          "rlhf_audit.calibration.analysis:HEADLINE_KEYS",
          "rlhf_audit.calibration.analysis.headline"),
    Study("reward", "SEAL: reward-model error analysis", "reward.smk",
          "rlhf_audit.reward.analysis:HEADLINE_KEYS", "rlhf_audit.reward.analysis.headline"),
    Study("diffing", "Model diffing: crosscoder, Latent Scaling and diff-SAE", "diffing.smk",
          "rlhf_audit.diffing.summary:HEADLINE_KEYS", "rlhf_audit.diffing.summary.headline"),
)

BY_NAME: dict[str, Study] = {s.name: s for s in REGISTRY}

CHOOSABLE: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.name != "organism")
"""Studies a config can list under ``studies:`` (the organism is switched by
``organism.enabled``)."""
