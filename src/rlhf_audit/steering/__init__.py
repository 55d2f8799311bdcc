"""Activation steering, identity primes and partisanship scoring ("The Neutral Mask", claims 4-5).

Claim 4: steering with the SAE policy features moves the base model's output but
not the instruct model's (a causal disconnect), while steering along the
partisan direction itself still moves both. Claim 5: priming the user's
partisan identity brings partisan answers back in the instruct model.

Steering adds ``alpha * v`` to the output of decoder block ``layer`` (the
residual stream after that block; layer numbering as in :mod:`rlhf_audit.extract`).
Both models get the same absolute vectors (:func:`steering_vector_set`, built once
per pair): every vector has the same L2 norm, the base model's median per-token
residual norm at the layer over the content tokens (BOS excluded) of the steering
questions (:func:`residual_token_norm`), so ``alpha`` is one dose in units of "one
typical base residual" for both models. The vectors:

- ``direction``: the base model's partisan direction (left -> right);
- ``direction_instruct``: the instruct model's own partisan direction;
- ``feature``: the sum of the unit decoder rows of the SAE policy features (selected
  by a left-vs-right test), each oriented by its leaning so that it points right;
- nulls: ``random_direction_KK`` (isotropic random directions; the null of the two
  direction vectors) and ``random_features_KK`` (as many random non-policy SAE
  features, oriented by the sign of their left-right effect; the null of ``feature``).

Every generation gets two partisanship scores, both signed + = right, - = left:

- ``judge`` (primary): a judge's rating mapped to [-1, 1] (:mod:`rlhf_audit.judge`; an LM
  or the stance classifier of :mod:`rlhf_audit.stance`);
- ``projection``: the base model reads the generated text (on its own, with BOS,
  no prompt), its block-``layer`` activations are averaged over the text's tokens
  and projected on a partisan direction fitted on issues disjoint from the
  question's (cross-fitted over folds of the statements' issues, so the folds do not
  depend on which questions are asked).

Before any scorer reads a reply, the words that tell the two identity primes apart
("Democrat", "conservative", ...) are masked in every reply of every arm
(:func:`mask_identity_terms`), so a reply that echoes its prime cannot create a
prime effect. The analysis lives in :mod:`rlhf_audit.steering.analysis`.

Modules, along the rules: ``vectors`` (build_steering_vectors: the vector table),
``generate`` (generate_steering: the sweep; generate_primes: identity-prime
generations), ``score``
(score_steering: identity masking, judge and projection scores; ``judging`` builds the
judge's settings), ``analysis``
(analyse_steering: slopes, nulls, prime effects, headline keys) and ``figures``
(plot_steering); ``settings`` (names, :class:`SteeringSettings`) and ``activations``
(block outputs with the forward stopped) are shared. Every public name is re-exported
here lazily (PEP 562): a rule's code hash (rlhf_audit.codehash) holds the package
``__init__`` of every module it imports, so eager re-exports would put the scorers,
analysis and figures into the generation's hash. Scripts and library code import from
the submodules; package-level names are for tests and interactive use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "add_text_measures": "analysis",
    "alpha_window": "analysis",
    "analyse": "analysis",
    "build_steering_vectors": "vectors",
    "crossfit_directions": "score",
    "cut_at": "generate",
    "decoder_layers": "rlhf_audit.lm.hooks",
    "degeneration_table": "analysis",
    "DIRECTION_VECTORS": "settings",
    "distinct_n": "analysis",
    "dose_response": "analysis",
    "feature_vector": "vectors",
    "FEATURE_VECTORS": "settings",
    "format_prompts": "generate",
    "HEADLINE_KEYS": "analysis",
    "IDENTITY_MASK": "score",
    "identity_prime_generations": "generate",
    "identity_terms": "score",
    "is_degenerate": "analysis",
    "JUDGE_COLUMNS": "score",
    "judge_failures": "analysis",
    "judge_settings": "judging",
    "layer_activations": "activations",
    "mask_identity_terms": "score",
    "MODEL_ROLES": "settings",
    "NO_JUDGE": "settings",
    "non_text_share": "analysis",
    "NULL_FAMILIES": "settings",
    "null_family_of": "settings",
    "partisan_direction": "vectors",
    "plot_degeneration": "figures",
    "plot_steering": "figures",
    "POLICY_FEATURE_COLUMNS": "vectors",
    "policy_feature_rows": "vectors",
    "PRIMARY_SCORE": "settings",
    "PRIME_CONDITIONS": "settings",
    "prime_contrasts": "analysis",
    "prime_design": "generate",
    "PRIME_DESIGN_SCHEMA": "generate",
    "PROJECTION_COLUMNS": "score",
    "projection_score": "score",
    "random_feature_rows": "vectors",
    "random_vector": "vectors",
    "repeat_n": "analysis",
    "residual_token_norm": "vectors",
    "run_steering": "generate",
    "run_sweep": "generate",
    "scaled": "vectors",
    "score_judge": "score",
    "score_projection": "score",
    "SCORES": "settings",
    "SCRIPT_KEYS": "settings",
    "signed_alphas": "generate",
    "steer": "rlhf_audit.lm.hooks",
    "steering_contrast": "analysis",
    "steering_vector_set": "vectors",
    "SteeringSettings": "settings",
    "SteeringVector": "rlhf_audit.lm.hooks",
    "sweep": "generate",
    "typical_residual_norm": "vectors",
    "vector_family": "settings",
    "VECTOR_KINDS": "settings",
    "VECTOR_TABLE_SCHEMA": "vectors",
    "vectors_from_table": "generate",
}
"""Public name -> the module that defines it (a submodule, or rlhf_audit.lm.hooks)."""

_SUBMODULES = ("activations", "analysis", "figures", "generate", "judging", "score", "settings",
               "vectors")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    full = module if "." in module else f"{__name__}.{module}"
    value = getattr(importlib.import_module(full), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
