"""Planted statement sets for the SAE study tests: hand SAEs whose features are the
input dimensions, so what fires where (and what instruct silences) is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

PARTISAN_FRAMINGS = ("plain", "convinced", "attention", "honest", "see_it", "deny")
NEUTRAL_FRAMINGS = ("plain", "context", "background")
N_TOK = 4


def hand_sae(W_enc: np.ndarray, threshold: float = 0.5, hook: str = "blocks.2.hook_resid_post"):
    """JumpReLU SAE with encoder W_enc [d_in, d_sae], decoder W_enc.T, no biases."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = W_enc.shape
    sae = JumpReLUSAE(
        JumpReLUSAEConfig(
            d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=hook)
        )
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W_enc, dtype=torch.float32))
        sae.W_dec.copy_(torch.as_tensor(W_enc.T, dtype=torch.float32))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(threshold)
    return sae


def statements(n_issues: int, n_claims: int = 4, n_neutral: int = 3):
    """(statement, issue, label) rows of a planted prompt set."""
    rows = []
    for i in range(n_issues):
        for label, n in (("left", n_claims), ("right", n_claims), ("neutral", n_neutral)):
            for k in range(n):
                rows.append((f"issue{i:02d}-{label}-{k}", f"issue{i:02d}", label))
    return rows


def planted_study(
    seed: int,
    n_issues: int = 20,
    n_policy: int = 6,
    n_background: int = 150,
    silence_policy: bool = True,
    silence_background: float = 0.0,
    policy_rate: float = 0.6,
    thin_instruct: float = 0.0,
    duplicate_framings: bool = False,
    background_like_policy: bool = False,
    redraw_instruct: bool = False,
    instruct_rate_scale: float = 1.0,
    bursty_background: float = 0.0,
    faint_background: float = 0.0,
    instruct_shrink: float = 1.0,
):
    """(base (meta, X), instruct (meta, X), feature roles) for a planted study.

    Features (= input dims, fire when > 0.5): the first ``n_policy`` are policy features
    (half right-leaning: fire on token 1 of every framing of a right statement that
    carries it, with probability ``policy_rate`` per statement; half left-leaning), then
    one rhetoric feature (fires on token 2 of every non-plain partisan framing, either
    side), then ``n_background`` label-blind features, each carried by a statement with
    its own probability (log-uniform 0.02-0.8) and firing on token 3. Instruct:
    policy features removed (``silence_policy``), a random ``silence_background`` share of
    the background features removed, and every remaining firing token kept with
    probability 1 - ``thin_instruct``. ``duplicate_framings`` adds a copy of every framing.
    ``background_like_policy``: background features fire on any partisan statement with
    probability ``policy_rate / 2`` (the policy features' overall rate, no side).
    ``redraw_instruct``: instruct's features are carried by an independent redraw with the
    probabilities times ``instruct_rate_scale`` for every feature alike (no effect
    specific to policy features). ``bursty_background``: this share of the background
    features fires on every token of a carrying statement's framings (not only token 3):
    four times the token rate at the same statement incidence. ``faint_background``: this
    share of the background features fires at 0.55, just above the SAE's threshold of 0.5,
    instead of 1. ``instruct_shrink``: every instruct activation is multiplied by it (a
    shift of the residual stream blind to what a feature means; at 0.85 the faint features
    fall under the threshold and the others still fire).
    """
    rng = np.random.default_rng(seed)
    d = n_policy + 1 + n_background
    rhet = n_policy
    bg = np.arange(n_policy + 1, d)
    bg_rate = np.exp(rng.uniform(np.log(0.02), np.log(0.8), n_background))
    silenced_bg = bg[rng.random(n_background) < silence_background]
    # drawn only when asked for, so the other studies' random streams stay as they were
    bursty = bg[rng.random(n_background) < bursty_background] if bursty_background else bg[:0]
    value = np.ones(d, np.float32)
    if faint_background:
        value[bg[rng.random(n_background) < faint_background]] = 0.55
    rows, Xb, Xi = [], [], []

    def draw(label, scale=1.0):
        carried = np.zeros(d, bool)
        for f in range(n_policy):
            side = "right" if f % 2 == 0 else "left"
            carried[f] = label == side and rng.random() < policy_rate * scale
        if background_like_policy:
            carried[bg] = (label != "neutral") & (
                rng.random(n_background) < scale * policy_rate / 2)
        else:
            carried[bg] = rng.random(n_background) < bg_rate * scale
        return carried

    for stmt, issue, label in statements(n_issues):
        carried = draw(label)
        carried_i = draw(label, instruct_rate_scale) if redraw_instruct else carried
        framings = NEUTRAL_FRAMINGS if label == "neutral" else PARTISAN_FRAMINGS
        if duplicate_framings:
            framings = framings + tuple(f"{f}_again" for f in framings)
        for fr in framings:
            for t in range(N_TOK):
                x = np.zeros(d, np.float32)
                if t == 1:
                    x[:n_policy] = carried[:n_policy]
                if t == 2 and label != "neutral" and not fr.startswith("plain"):
                    x[rhet] = 1.0
                if t == 3:
                    x[bg] = carried[bg]
                x[bursty] = carried[bursty]
                xi = x.copy()
                x *= value
                if t == 1:
                    xi[:n_policy] = carried_i[:n_policy]
                if t == 3:
                    xi[bg] = carried_i[bg]
                xi[bursty] = carried_i[bursty]
                xi *= value * np.float32(instruct_shrink)
                if silence_policy:
                    xi[:n_policy] = 0
                xi[silenced_bg] = 0
                if thin_instruct:
                    xi[rng.random(d) < thin_instruct] = 0
                rows.append({"prompt_id": f"{stmt}-{fr}", "label": label, "issue": issue,
                             "token_index": t + 1, "token_id": 10 + t})
                Xb.append(x)
                Xi.append(xi)
    meta = pl.DataFrame(rows)
    roles = {"right": list(range(0, n_policy, 2)), "left": list(range(1, n_policy, 2)),
             "rhetoric": rhet, "background": bg.tolist(), "silenced_background":
             silenced_bg.tolist(), "bursty_background": bursty.tolist(),
             "faint_background": np.flatnonzero(value < 1).tolist(), "d": d}
    return (meta, np.stack(Xb)), (meta, np.stack(Xi)), roles
