"""What the organism's generators predict for the reward study (SEAL), from first principles.

The reward models are trained on pairs ranked by a known taste
(:data:`rlhf_audit.organism.hh.PREFERENCES`) with a known share of swapped labels
(annotator noise). A reward model that had learned its taste exactly would score
each text by ``preference_score(labels, taste)``; :func:`seal_predictions` gives
the agreement, regime shares and resistance such ideal "pre" (alt taste) and
"post" (hh taste) models have on a set of hh-preference pairs, and the sign each
feature's imprint should take (the sign of its weight; for the shift, of the hh
weight minus the alt weight). The trained models only approach these values
(they are 2-layer networks trained for seconds), so the planted file states the
signs as expectations and the ideal values as references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rlhf_audit.organism.hh import PREFERENCES, preference_score


def _agree(pairs: Sequence[Mapping], taste: str) -> np.ndarray:
    """1 if the ideal model of ``taste`` ranks chosen above rejected, 0 below, 0.5 on ties."""
    out = []
    for i, p in enumerate(pairs):
        for key in ("labels_chosen", "labels_rejected"):
            if key not in p:
                raise ValueError(f"pair {i}: no '{key}' (use organism.hh.generate_pairs rows)")
        c = preference_score(p["labels_chosen"], taste)
        r = preference_score(p["labels_rejected"], taste)
        out.append(1.0 if c > r else 0.0 if c < r else 0.5)
    return np.asarray(out)


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
