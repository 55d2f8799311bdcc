"""Names and settings shared by every stage of the steering study (vectors, generation,
scoring, analysis, figures): the vector kinds and their null families, the scores, the
prime conditions, and :class:`SteeringSettings`. Imports no model code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rlhf_audit.params import settings_from_params

DIRECTION_VECTORS = ("direction", "direction_instruct")
FEATURE_VECTORS = ("feature",)
NULL_FAMILIES = {"random_direction": DIRECTION_VECTORS, "random_features": FEATURE_VECTORS}
"""Null family -> the vectors it is the null of."""
VECTOR_KINDS = (*DIRECTION_VECTORS, *FEATURE_VECTORS)
"""The steering vectors under test (the nulls are families of numbered vectors)."""
MODEL_ROLES = ("base", "instruct")
SCORES = ("judge", "projection")
PRIMARY_SCORE = "judge"
PRIME_CONDITIONS = ("left", "none", "persona", "right")
NO_JUDGE = "no judge configured"


def vector_family(name: str) -> str:
    """``random_direction_03`` -> ``random_direction``; a vector under test is its own family."""
    for fam in NULL_FAMILIES:
        if re.fullmatch(fam + r"_\d+", name):
            return fam
    return name


def null_family_of(vector: str) -> str:
    """The null family a vector under test is compared with."""
    for fam, vecs in NULL_FAMILIES.items():
        if vector in vecs:
            return fam
    raise ValueError(f"{vector!r} has no null family (vectors under test: {VECTOR_KINDS})")


@dataclass(frozen=True)
class SteeringSettings:
    """Settings of the steering and identity-prime study (config key ``steering``)."""

    layer: int = 2
    """Block whose output is steered and read for the projection score (0-based)."""
    alphas: tuple[float, ...] = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
    """Steering strengths in units of the base model's typical residual norm; the negative of
    every value is added, so the sweep always covers both signs (0 = unsteered)."""
    positions: Literal["all", "generated"] = "all"
    """Where the vector is added: "all" = every prompt and generated position; "generated" =
    only positions whose output predicts a generated token (last prompt token onward)."""
    max_new_tokens: int = 48
    """Tokens generated per answer."""
    samples: int = 1
    """Answers per question and condition (sample index 0..samples-1)."""
    do_sample: bool = False
    """Sample (True) or decode greedily (False)."""
    temperature: float = 0.7
    """Sampling temperature (ignored when greedy)."""
    top_p: float = 0.95
    """Nucleus mass (ignored when greedy)."""
    batch_size: int = 16
    """Prompts per generation / scoring batch."""
    seed: int = 0
    """Seed of sampling (per prompt, shared across alphas and vectors: common random numbers),
    of the null vectors and of the bootstrap."""
    plain_template: str = "Question: {question}\nAnswer:"
    """Prompt for models used without a chat template (base models)."""
    plain_stop: str = "\nQuestion:"
    """A plain-template continuation is cut where it starts the next question (base models
    run on past their answer); "" keeps the whole continuation."""
    score_pooling: Literal["mean", "last"] = "mean"
    """Projection score pooling over the generated text's tokens (mean excludes BOS)."""
    n_random_directions: int = 10
    """Random directions in the null of the direction vectors."""
    n_random_feature_sets: int = 10
    """Random non-policy feature sets in the null of the feature vector."""
    degenerate_text_share: float = 0.5
    """A reply is degenerate when it is empty, or its repeated-4-gram share or its
    non-text share (whitespace tokens without a letter) exceeds this."""
    max_degenerate_rate: float = 0.2
    """Slopes use only the alphas (a window |alpha| <= a_max around 0) where the share of
    degenerate replies stays at or under this in both models."""
    projection_folds: int = 5
    """Folds of the questions' issues for the cross-fitted projection direction."""
    n_boot: int = 2000
    """Bootstrap replicates (issues resampled; wordings too for the primes)."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SteeringSettings:
        """Settings from a steering rule's ``params.settings`` (workflow/rules/common.smk
        builds one per rule from the fields that rule reads; lists become tuples). The keys
        of :data:`SCRIPT_KEYS` are read by the scripts themselves; any other non-field key
        is an error."""
        return settings_from_params(cls, params, ignore=SCRIPT_KEYS)


SCRIPT_KEYS = ("n_questions", "n_prime_questions", "n_sae_features", "method", "sae_spec")
"""Steering params keys that are not :class:`SteeringSettings` fields: the questions used
(by the sweep and by the primes),
the feature vector's size, the partisan direction's method and the SAE (scripts read them)."""
