"""The study registry: one entry per study, read by the workflow (which studies exist
and their rule files), the report (titles, key documentation) and docs/headline.md
(where each number is computed).

Pure data (dotted names, no imports of study code), so that importing it adds no study
to any rule's code closure. Adding a study: its package, its rule file, one entry here
(keys, headline fragment, figures, where its claims are), its claims in
:mod:`rlhf_audit.claims` and, in workflow/rules/common.smk's STUDY_UNITS, the wildcard
values it runs over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from string import Formatter


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
    fragment: str | None = None
    """Path template of its headline fragment, with the wildcards of the rule that writes it
    (None: the organism's checks, written apart)."""
    figures: tuple[str, ...] = ()
    """Path templates of the figures a full run makes, same wildcards as ``fragment``."""
    claims: str | None = None
    """``module:ATTR`` of the published claims its headline numbers are checked against
    (report.claims_table). Kept out of this module on purpose: the registry is in the code
    hash of every rule that reads the config (extraction too), and a claim's wording must not
    rerun a GPU job."""


REGISTRY: tuple[Study, ...] = (
    Study("organism", "Organism checks (embedded default only)", "organism.smk",
          "rlhf_audit.organism.train:HEADLINE_KEYS", "rlhf_audit.organism.train.organism_checks"),
    Study("partisan", "The Neutral Mask: partisan geometry (claims 1-2)", "partisan.smk",
          "rlhf_audit.partisan:HEADLINE_KEYS", "rlhf_audit.partisan.headline",
          "results/partisan/{pair}/headline.json",
          ("results/figures/partisan/{pair}/auc_by_layer.png",
           "results/figures/partisan/{pair}/projections.png",
           "results/figures/partisan/{pair}/variance_ratio.png"), "rlhf_audit.claims:PARTISAN"),
    Study("sae", "The Neutral Mask: SAE features (claim 3)", "sae.smk",
          "rlhf_audit.sae.select:HEADLINE_KEYS",
          "rlhf_audit.sae.select.analyse_policy_features",
          "results/sae/{pair}/{sae}/headline.json",
          ("results/figures/sae/{pair}/{sae}/policy_firing.png",), "rlhf_audit.claims:SAE"),
    Study("steering", "The Neutral Mask: steering and identity primes (claims 4-5)",
          "steering.smk", "rlhf_audit.steering.analysis:HEADLINE_KEYS",
          "rlhf_audit.steering.analysis.analyse", "results/steering/{pair}/headline.json",
          ("results/figures/steering/{pair}/dose_response_projection.png",
           "results/figures/steering/{pair}/dose_response_judge.png",
           "results/figures/steering/{pair}/degeneration.png"), "rlhf_audit.claims:STEERING"),
    Study("calibration", "Resisting Correction: injected confidence", "calibration.smk",
          "rlhf_audit.calibration.analysis:HEADLINE_KEYS",
          "rlhf_audit.calibration.analysis.headline",
          "results/calibration/{pair}/headline.json",
          ("results/figures/calibration/{pair}/verbalized_vs_injected.png",),
          "rlhf_audit.claims:CALIBRATION"),
    Study("reward", "SEAL: reward-model error analysis", "reward.smk",
          "rlhf_audit.reward.analysis:HEADLINE_KEYS", "rlhf_audit.reward.analysis.headline",
          "results/reward/{rpair}/headline.json",
          ("results/figures/reward/{rpair}/imprint.png",
           "results/figures/reward/{rpair}/regimes.png",
           "results/figures/reward/{rpair}/robustness.png"), "rlhf_audit.claims:REWARD"),
    Study("diffing", "Model diffing: crosscoder, Latent Scaling and diff-SAE", "diffing.smk",
          "rlhf_audit.diffing.summary:HEADLINE_KEYS", "rlhf_audit.diffing.summary.headline",
          "results/diffing/{pair}/headline.json",
          ("results/figures/diffing/{pair}/relative_norm.png",
           "results/figures/diffing/{pair}/latent_scaling.png")),
)

BY_NAME: dict[str, Study] = {s.name: s for s in REGISTRY}

CHOOSABLE: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.name != "organism")
"""Studies a config can list under ``studies:`` (the organism is switched by
``organism.enabled``)."""

def wildcards(template: str) -> tuple[str, ...]:
    """The ``{name}`` fields of a path template, in order."""
    return tuple(f for _, f, _, _ in Formatter().parse(template) if f)


def targets(study: Study, units: Sequence[Mapping[str, str]]) -> dict:
    """What ``study`` adds to a full run for each of its ``units`` (the wildcard values it
    runs over, e.g. ``{"pair": "llama"}``): ``{"fragments": {label: path}, "figures": [...]}``,
    the label being the unit's values joined by "." in the fragment's wildcard order (the
    headline's ``study.label.key``)."""
    if study.fragment is None:
        raise ValueError(f"study {study.name!r} has no fragment template")
    names = wildcards(study.fragment)
    fragments, figures = {}, []
    for u in units:
        fragments[".".join(str(u[n]) for n in names)] = study.fragment.format(**u)
        figures += [f.format(**u) for f in study.figures]
    return {"fragments": fragments, "figures": figures}
