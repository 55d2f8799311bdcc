"""The published claims each study's headline numbers are checked against (the claims
table of :mod:`rlhf_audit.report`), one tuple per study, named by the study registry
(:mod:`rlhf_audit.studies`). Pure data; only the report imports it, so that editing a
claim reruns the report and nothing else.

Published numbers come from ../shared/PAPERS.md (the three studies).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """One published claim and where this run's number for it lives."""

    study: str
    """Headline study section: partisan, sae, steering, calibration or reward."""
    claim: str
    """What the paper says, in our words."""
    key: str
    """Headline key within the study, e.g. ``auc_base`` (the pair is filled in)."""
    published: float | None
    """The published number (None for a qualitative claim)."""
    expectation: str = ""
    """The test: the sign or bound the claim implies, e.g. '> 0.5', '< 1', or
    '> @key' (bounded by another headline key of the same pair)."""
    source: str = ""
    """Where the number is from."""
    null: str = ""
    """What the bound stands for (the null the test rejects), in words."""


PARTISAN: tuple[Claim, ...] = (
    Claim("partisan", "A linear partisan direction exists in the base model (probe AUC)",
          "auc_base", 0.945, "> 0.5", "Neutral Mask, claim 1 (companion paper, layer 18)",
          "chance: a probe on shuffled labels scores 0.5"),
    Claim("partisan", "Base projections separate the parties (Cohen's d)", "cohens_d_base", 1.94,
          "> 0", "Neutral Mask, claim 1 (companion paper)", "no separation between parties"),
    Claim("partisan", "The direction is still present in instruct (base direction read on "
          "instruct activations)", "transfer_auc_base_to_instruct", None, "> 0.5",
          "Neutral Mask, claim 1", "chance: an unrelated direction scores 0.5"),
    Claim("partisan", "Instruct's partisan direction is the base one (disattenuated cosine)",
          "cosine_base_instruct", None, "> 0", "Neutral Mask, claim 1",
          "unrelated directions: cosine 0"),
    Claim("partisan", "Variance ratio instruct/base (~11x compression)", "variance_ratio",
          (0.070 / 0.234) ** 2, "< 1", "Neutral Mask, claim 2 (0.070^2 / 0.234^2)",
          "no compression: ratio 1"),
    Claim("partisan", "SD ratio instruct/base (0.070 / 0.234)", "sd_ratio", 0.070 / 0.234, "< 1",
          "Neutral Mask, claim 2", "no compression: ratio 1"),
    Claim("partisan", "Compression is not removal: instruct keeps partisan variance above the "
          "noise floor", "variance_ratio", None, "> @variance_ratio_noise_floor",
          "Neutral Mask, claims 1-2", "instruct without partisan separation: the "
          "within-issue label-permutation floor"),
)

SAE: tuple[Claim, ...] = (
    Claim("sae", "Policy features that fire in base are completely inactive in instruct "
          "(share silent on held-out statements; test: the published 1.0 lies inside the 95% "
          "interval)", "share_inactive_in_instruct", 1.0, source="Neutral Mask, claim 3"),
    Claim("sae", "Policy features fall silent in instruct more often than non-policy features "
          "matched on base firing rate (test: paired difference of the shares silent on "
          "held-out statements, crossed bootstrap over statements and features; yes when the "
          "interval lies above 0)", "share_inactive_in_instruct_excess", None, "> 0",
          "Neutral Mask, claim 3"),
    Claim("sae", "Silence is not the SAE's error term: its reconstruction keeps the partisan "
          "component in instruct (test: share of the held-out left-right separation along the "
          "partisan direction that the reconstruction keeps; yes when the interval lies above "
          "0.5)", "partisan_fraction_reconstructed_instruct", None, "> 0.5",
          "validity check of Neutral Mask, claim 3"),
)

STEERING: tuple[Claim, ...] = (
    # Steering and primes: each row is a test against its null, on the primary (judge)
    # score: the verdict is "yes" when the whole 95% interval passes the threshold.
    Claim("steering", "Feature steering moves base output beyond random feature sets "
          "(test: base feature slope minus the random-feature-set null's mean slope, interval "
          "> 0)", "steering_slope_vs_null_base_feature_judge", None, "> 0",
          "Neutral Mask, claim 4"),
    Claim("steering", "Feature steering moves instruct less than base, beyond random "
          "feature sets: the causal disconnect (test: instruct-minus-base feature slope "
          "difference minus its random-feature-set null, interval < 0)",
          "disconnect_null_gap_feature_judge", None, "< 0", "Neutral Mask, claim 4"),
    Claim("steering", "The partisan direction still steers instruct, beyond random "
          "directions (test: instruct direction slope minus the random-direction null's mean "
          "slope, interval > 0)", "steering_slope_vs_null_instruct_direction_judge", None,
          "> 0", "Neutral Mask, claim 4"),
    Claim("steering", "Instruct's own partisan direction steers instruct, beyond random "
          "directions (test: slope minus the null's, interval > 0)",
          "steering_slope_vs_null_instruct_direction_instruct_judge", None, "> 0",
          "Neutral Mask, claim 4"),
    Claim("steering", "Identity primes reactivate partisan output in instruct (test: "
          "right- minus left-primed judge score over every wording, interval > 0)",
          "prime_effect_instruct_judge", None, "> 0", "Neutral Mask, claim 5"),
)

CALIBRATION: tuple[Claim, ...] = (
    Claim("calibration", "Base model follows the injected confidence", "rho_base_command", 1.0,
          source="Resisting Correction"),
    Claim("calibration", "Instruct follows it when commanded (Spearman rho)",
          "rho_instruct_command", 0.926, source="Resisting Correction"),
    Claim("calibration", "Instruct + command: no bias (pp)", "bias_pp_instruct_command", 0.0,
          source="Resisting Correction"),
    Claim("calibration", "Instruct ignores it in conversation (Spearman rho)",
          "rho_instruct_conversational", 0.036, source="Resisting Correction"),
    Claim("calibration", "Instruct + conversation: overconfident by ~40 pp",
          "bias_pp_instruct_conversational", 40.0, source="Resisting Correction"),
    Claim("calibration", "Internal token-level confidence barely tracks the signal (Pearson r)",
          "internal_r_signal_instruct_conversational", 0.035, source="Resisting Correction"),
    Claim("calibration", "Internal token-level confidence barely tracks correctness (Pearson "
          "r; the paper's r may be this one)", "internal_r_correct_instruct_conversational",
          0.035, source="Resisting Correction (r = 0.035, p = 0.114, n about 2,000)"),
)

REWARD: tuple[Claim, ...] = (
    Claim("reward", "Agreement with human preference, pre RM", "agreement_pre", 0.57,
          source="SEAL"),
    Claim("reward", "Agreement with human preference, post RM", "agreement_post", 0.74,
          source="SEAL"),
    Claim("reward", "Regime: stayed aligned", "regime_stayed_aligned", 0.483, source="SEAL"),
    Claim("reward", "Regime: got aligned", "regime_got_aligned", 0.258, source="SEAL"),
    Claim("reward", "Regime: resisted (misaligned both)", "regime_resisted", 0.172,
          source="SEAL"),
    Claim("reward", "Regime: reversed", "regime_reversed", 0.087, source="SEAL"),
    Claim("reward", "Alignment resistance (share the trained RM still gets wrong)",
          "alignment_resistance", 0.26, source="SEAL"),
    Claim("reward", "Target features raise the post reward more than spoiler features (mean "
          "imprint, targets minus spoilers)", "imprint_post_target_minus_spoiler", None, "> 0",
          "SEAL feature imprint (sign)"),
    Claim("reward", "Training on the preference data raises target imprint more than spoiler "
          "imprint (shift post - pre)", "imprint_shift_target_minus_spoiler", None, "> 0",
          "SEAL feature imprint (sign)"),
    Claim("reward", "Helpfulness is imprinted on the post RM", "imprint_post_helpful", None, "> 0",
          "SEAL feature imprint (target feature)"),
    Claim("reward", "Harmlessness is imprinted on the post RM", "imprint_post_harmless", None,
          "> 0", "SEAL feature imprint (target feature)"),
    Claim("reward", "Resistance where the LM labeller prefers the chosen text",
          "alignment_resistance_chosen_better", None, source="SEAL, per gamma (reported)"),
    Claim("reward", "Resistance where the LM labeller prefers the rejected text",
          "alignment_resistance_rejected_better", None, source="SEAL, per gamma (reported)"),
    Claim("reward", "Resistance where the LM labeller ranks both texts equal",
          "alignment_resistance_indifferent", None, source="SEAL, per gamma (reported)"),
    Claim("reward", "The trained RM resists most where the LM labeller also prefers the rejected "
          "text (rejected_better minus chosen_better)", "alignment_resistance_gap", None, "> 0",
          "SEAL, per gamma (direction)"),
    Claim("reward", "Post agreement on the originals of the rewritten pairs (comparator)",
          "agreement_post_rewrite_original", 0.732, source="SEAL rewriting notebook (0.7320)"),
    Claim("reward", "Post agreement after meaning-preserving rewrites", "agreement_post_rewritten",
          0.701, source="SEAL robustness"),
    Claim("reward", "Pre agreement on the originals of the rewritten pairs (comparator)",
          "agreement_pre_rewrite_original", 0.568, source="SEAL rewriting notebook (0.5678)"),
    Claim("reward", "Pre agreement after rewrites", "agreement_pre_rewritten", 0.548,
          source="SEAL robustness"),
    Claim("reward", "A chosen text turning more negative makes the post RM misalign (signed "
          "sentiment change, LPM slope)", "robustness_flip_chosen_sentiment", None, "> 0",
          "SEAL robustness scores (about +0.10 to +0.12 per step)"),
    Claim("reward", "A rejected text turning more positive makes the post RM misalign (slope on "
          "original - rewritten is negative)", "robustness_flip_rejected_sentiment", None, "< 0",
          "SEAL robustness scores (direction)"),
    Claim("reward", "Original vs rewritten rewards (Pearson r)", "rewrite_reward_r", 0.958,
          source="SEAL robustness"),
    Claim("reward", "Rewrites keep their meaning (embedding cosine)", "rewrite_similarity", 0.96,
          source="SEAL robustness"),
)
