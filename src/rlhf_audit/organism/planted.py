"""What the organism's generators predict for the reward study (SEAL), from first principles.

The reward models are trained on pairs ranked by a known taste
(:data:`rlhf_audit.organism.hh.PREFERENCES`) with a known share of swapped labels
(annotator noise). A reward model that had learned its taste exactly would score
each text by ``preference_score(labels, taste)``; :func:`seal_predictions` gives
the agreement, regime shares and resistance such ideal "pre" (alt taste) and
"post" (hh taste) models have on a set of hh-preference pairs, and the sign each
feature's imprint should take (the sign of its weight; for the shift, of the hh
weight minus the alt weight).

The trained reward models only approach the ideal ones: a 2-layer network trained for
seconds ranks about 82% of the untied held-out pairs the way its taste does (it misreads
scrambled answers and compliance with harmful requests), and more pairs or steps gain
about 0.02 of agreement per doubling. So the reward study's resistance has two sources
the organism knows apart: the annotators' swapped labels (planted, 10%) and the reward
model's own errors. :func:`seal_expectations` predicts what the study should read from the
first given the second: on the study's own pairs, each trained model's ranking of each
pair, with the annotators' label drawn as the generator draws it (the taste's winner with
probability ``1 - noise``, a coin on a tie), averaged. The study's numbers differ from it
by the draw the labels happened to take. What this can catch: the post model's chosen and
rejected read the wrong way round, a noise rate other than the planted one, agreement or
resistance computed on the wrong quantity. What it cannot: the same slip on the pre side
or resisted mixed up with reversed, since the pre model is near chance on hh pairs (the
unit tests of the reward study plant those). An exact-taste model pair would give
:func:`seal_predictions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rlhf_audit.organism.hh import PREFERENCES, preference_score
from rlhf_audit.stats import Estimate, bootstrap

SEAL_KEYS = ("agreement_pre", "agreement_post", "regime_stayed_aligned", "regime_got_aligned",
             "regime_resisted", "regime_reversed", "alignment_resistance")
"""The reward study's headline keys that :func:`expected_seal` predicts."""


def taste_margins(pairs: Sequence[Mapping], taste: str) -> np.ndarray:
    """The ``taste``'s score of each pair's chosen text minus its rejected one's ``[n]``."""
    out = []
    for i, p in enumerate(pairs):
        for key in ("labels_chosen", "labels_rejected"):
            if key not in p:
                raise ValueError(f"pair {i}: no '{key}' (use organism.hh.generate_pairs rows)")
        out.append(preference_score(p["labels_chosen"], taste)
                   - preference_score(p["labels_rejected"], taste))
    return np.asarray(out, dtype=float)


def _agree(pairs: Sequence[Mapping], taste: str) -> np.ndarray:
    """1 if the ideal model of ``taste`` ranks chosen above rejected, 0 below, 0.5 on ties."""
    m = taste_margins(pairs, taste)
    return np.where(m > 0, 1.0, np.where(m < 0, 0.0, 0.5))


def seal_predictions(pairs: Sequence[Mapping]) -> dict[str, float]:
    """Agreement and regime shares of ideal pre (alt) and post (hh) reward models on ``pairs``.

    Ties count one half in agreement and split evenly between the regimes they
    could fall in. Keys follow the reward study's headline keys.
    """
    pre, post = _agree(pairs, "alt"), _agree(pairs, "hh")
    return {
        "agreement_pre": float(pre.mean()),
        "agreement_post": float(post.mean()),
        "regime_stayed_aligned": float(np.mean(pre * post)),
        "regime_got_aligned": float(np.mean((1 - pre) * post)),
        "regime_resisted": float(np.mean((1 - pre) * (1 - post))),
        "regime_reversed": float(np.mean(pre * (1 - post))),
        "alignment_resistance": float(1 - post.mean()),
    }


def imprint_signs(features: Sequence[str]) -> dict[str, dict[str, int]]:
    """Sign (+1, -1, 0) of each feature's weight: ``post`` (hh taste) and ``shift`` (hh - alt)."""
    hh, alt = PREFERENCES["hh"], PREFERENCES["alt"]
    out: dict[str, dict[str, int]] = {"post": {}, "shift": {}}
    for f in features:
        out["post"][f] = int(np.sign(hh.get(f, 0.0)))
        out["shift"][f] = int(np.sign(hh.get(f, 0.0) - alt.get(f, 0.0)))
    return out


def annotator_probability(margin: np.ndarray, noise: float) -> np.ndarray:
    """P(the annotators choose the first text of a pair) given the taste's score margin
    (first minus second) ``[n]``: ``1 - noise`` for the taste's winner, ``noise`` for its
    loser, 1/2 on a tie (the generator's coin, which the swap leaves a coin)."""
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise must be in [0, 0.5], got {noise}")
    margin = np.asarray(margin, dtype=float)
    return np.where(margin > 0, 1.0 - noise, np.where(margin < 0, noise, 0.5))


def expected_seal_rows(margin, post_diff, pre_diff, noise: float) -> dict[str, np.ndarray]:
    """Per pair, the expected value under the annotators' noise of each indicator the reward
    study averages (keys :data:`SEAL_KEYS`), ``[n]`` each.

    ``margin``: the hh taste's score of the first text minus the second's; ``post_diff`` /
    ``pre_diff``: each reward model's reward of the first text minus the second's. Pairs
    either model ties exactly get NaN (the study leaves them out).
    """
    margin, post, pre = (np.asarray(a, dtype=float) for a in (margin, post_diff, pre_diff))
    if not margin.shape == post.shape == pre.shape:
        raise ValueError(f"margin, post_diff and pre_diff differ in shape: {margin.shape}, "
                         f"{post.shape}, {pre.shape}")
    pi = annotator_probability(margin, noise)
    # P(the label is the text each model prefers)
    a_post = np.where(post > 0, pi, 1.0 - pi)
    a_pre = np.where(pre > 0, pi, 1.0 - pi)
    same = np.sign(post) == np.sign(pre)
    out = {
        "agreement_pre": a_pre,
        "agreement_post": a_post,
        # The same pick: both agree or both disagree with the label. Different picks:
        # exactly one of them agrees.
        "regime_stayed_aligned": np.where(same, a_post, 0.0),
        "regime_resisted": np.where(same, 1.0 - a_post, 0.0),
        "regime_got_aligned": np.where(same, 0.0, a_post),
        "regime_reversed": np.where(same, 0.0, a_pre),
        "alignment_resistance": 1.0 - a_post,
    }
    tied = (post == 0) | (pre == 0)
    return {k: np.where(tied, np.nan, v) for k, v in out.items()}


def expected_seal(margin, post_diff, pre_diff, noise: float, *, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Estimate]:
    """What the reward study should read on pairs like these (:func:`expected_seal_rows`
    averaged over the pairs neither model ties), with a 95% bootstrap interval over pairs."""
    rows = expected_seal_rows(margin, post_diff, pre_diff, noise)
    keep = ~np.isnan(rows["agreement_post"])
    if not keep.any():
        raise ValueError("expected_seal: every pair is tied by a reward model")
    return {k: bootstrap(np.mean, v[keep], n_boot=n_boot, seed=seed, unit="share")
            for k, v in rows.items()}


def seal_expectations(pairs: Sequence[Mapping], post_margin, pre_margin, *,
                      noise: float | None = None, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Estimate]:
    """The reward study's numbers expected under the annotators' noise on ``pairs`` (the
    study's own: rows with ``labels_chosen``/``labels_rejected``), given each trained reward
    model's ``reward(chosen) - reward(rejected)`` on them (``[n_pairs]`` each): keys
    ``seal_expected_<key>`` (:data:`SEAL_KEYS`), and ``rm_taste_accuracy_post``, the share
    of the pairs the hh taste does not tie that the post model ranks as the taste does.
    ``noise``: the annotators' swap rate (default: the generator's,
    ``HHSettings.label_noise``)."""
    from rlhf_audit.organism.hh import HHSettings

    noise = HHSettings().label_noise if noise is None else noise
    margin = taste_margins(pairs, "hh")
    post_margin = np.asarray(post_margin, dtype=float)
    out = {f"seal_expected_{k}": v for k, v in
           expected_seal(margin, post_margin, pre_margin, noise, n_boot=n_boot,
                         seed=seed).items()}
    untied = margin != 0
    right = (np.sign(post_margin[untied]) == np.sign(margin[untied])).astype(float)
    out["rm_taste_accuracy_post"] = bootstrap(np.mean, right, n_boot=n_boot, seed=seed,
                                              unit="share")
    return out
