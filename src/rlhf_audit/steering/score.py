"""Partisanship scores of the steered and primed replies (rule score_steering): identity
words masked first in every reply, then the judge's score or the base model's projection
on a partisan direction cross-fitted over issues."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl

from rlhf_audit.lm.generation import padding_side, perplexity
from rlhf_audit.steering.activations import layer_activations
from rlhf_audit.steering.settings import NO_JUDGE, SteeringSettings

log = logging.getLogger(__name__)
_DEFAULTS = SteeringSettings()
"""The defaults (a frozen dataclass: one shared instance is safe)."""


def identity_terms(design: pl.DataFrame) -> list[str]:
    """Words that tell the two sides' primes apart: in some left prime and no right prime,
    or the reverse (lower case, sorted), e.g. democrat, progressive, republican."""
    def words(cond):
        primes = design.filter(pl.col("condition") == cond)["prime"].to_list()
        return {w for p in primes for w in re.findall(r"[a-z]+", p.lower())}

    left, right = words("left"), words("right")
    return sorted((left - right) | (right - left))


IDENTITY_MASK = "someone"
"""What a masked identity word is replaced with."""


def mask_identity_terms(texts: Sequence[str], terms: Sequence[str]) -> list[str]:
    """Replace every whole-word (case-insensitive, plural -s too) occurrence of ``terms`` with
    :data:`IDENTITY_MASK`: applied to every reply of every arm before scoring, so echoing the
    prime's identity words carries no side. The terms' stance-bearing uses elsewhere (e.g.
    "right to bear arms") are masked in every arm alike."""
    if not terms:
        return [str(t) for t in texts]
    pat = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in sorted(terms, key=len,
                                                                        reverse=True))
                     + r")s?\b", re.IGNORECASE)
    return [pat.sub(IDENTITY_MASK, str(t)) for t in texts]


def projection_score(
    base_model,
    tokenizer,
    texts: Sequence[str],
    direction: np.ndarray,
    layer: int,
    *,
    center: np.ndarray | None = None,
    pooling: Literal["mean", "last"] = "mean",
    batch_size: int = 16,
) -> np.ndarray:
    """Partisanship of each text read off the BASE model: [n] float64, + = right, - = left.

    ``(pooled block-layer activation - center) . direction / |direction|`` where the
    activation is pooled over the text's tokens (:func:`layer_activations`) and
    ``direction`` [d_model] points from left to right (e.g. right-mean minus left-mean).
    Units: residual-stream units along the unit direction. NaN for an empty text.
    """
    u = np.asarray(direction, dtype=np.float64).ravel()
    nrm = np.linalg.norm(u)
    if nrm == 0 or not np.isfinite(nrm):
        raise ValueError("partisan direction is zero or not finite")
    if len(u) != base_model.config.hidden_size:
        raise ValueError(
            f"direction has {len(u)} dims, the model's residual stream "
            f"{base_model.config.hidden_size}"
        )
    with padding_side(tokenizer, "left"):
        acts = layer_activations(base_model, tokenizer, texts, layer, pooling, batch_size)
    acts = acts.astype(np.float64)
    if center is not None:
        acts = acts - np.asarray(center, dtype=np.float64).ravel()
    return acts @ (u / nrm)


def crossfit_directions(
    meta: pl.DataFrame,
    X: np.ndarray,
    question_issues: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Partisan directions for the projection scorer, disjoint in issues from the questions.

    The issues of the statements ``X`` [n, d_model] (``meta`` columns label, issue), with any
    question issue that has none, are split into ``n_folds`` folds (seeded); for a question
    of an issue in fold k the direction is mean(right) - mean(left) of the statements of
    every issue outside fold k, and the centre the midpoint of the two means. The folds
    depend on the statements and the seed only, so asking more questions (the identity
    primes read more than the sweep) never changes another question's direction. Returns
    {question issue: (direction, centre)}.
    """
    for c in ("label", "issue"):
        if c not in meta.columns:
            raise ValueError(f"activation metadata lacks column {c!r} (columns: {meta.columns})")
    asked = set(map(str, question_issues))
    if not asked:
        raise ValueError("no question issues given")
    lab = meta["label"].to_numpy()
    iss = meta["issue"].cast(pl.String).to_numpy()
    issues = sorted(set(iss.tolist()) | set(asked))
    k = max(1, min(n_folds, len(issues)))
    order = np.random.default_rng(seed).permutation(len(issues))
    fold = {issues[i]: j % k for j, i in enumerate(order)}
    X = np.asarray(X, np.float64)
    out = {}
    for f in range(k):
        held = {i for i, g in fold.items() if g == f}
        if not held & asked:
            continue
        train = ~np.isin(iss, list(held))
        r, left = train & (lab == "right"), train & (lab == "left")
        if not r.any() or not left.any():
            raise ValueError(
                f"no left or right statements outside the issues {sorted(held)}: the "
                "projection direction needs statements of issues the questions do not ask about"
            )
        mr, ml = X[r].mean(0), X[left].mean(0)
        for i in sorted(held & asked):
            out[i] = (mr - ml, (mr + ml) / 2)
    return out


PROJECTION_COLUMNS = ("projection", "perplexity")
JUDGE_COLUMNS = ("judge", "judge_ok", "judge_error", "judge_reply")


def score_projection(
    df: pl.DataFrame,
    base_model,
    base_tokenizer,
    directions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    layer: int,
    *,
    terms: Sequence[str] = (),
    settings: SteeringSettings = _DEFAULTS,
) -> pl.DataFrame:
    """Projection score and perplexity of every reply (columns :data:`PROJECTION_COLUMNS`, in
    row order). ``directions`` maps each row's ``issue`` to (direction, centre) fitted on
    other issues (:func:`crossfit_directions`); replies are masked (:func:`mask_identity_terms`)
    first. projection = (pooled base activation - centre) . unit direction (+ = right);
    perplexity is under the unsteered base model."""
    for c in ("text", "issue"):
        if c not in df.columns:
            raise ValueError(f"generations table has no {c!r} column (columns: {df.columns})")
    texts = mask_identity_terms(df["text"].to_list(), terms)
    issues = df["issue"].cast(pl.String).to_list()
    missing = sorted(set(issues) - set(directions))
    if missing:
        raise ValueError(f"no projection direction for issues {missing[:5]}")
    acts = layer_activations(base_model, base_tokenizer, texts, layer, settings.score_pooling,
                             settings.batch_size).astype(np.float64)
    proj = np.full(len(texts), np.nan)
    for i in set(issues):
        rows = np.array([k for k, x in enumerate(issues) if x == i])
        u, c = directions[i]
        u = np.asarray(u, np.float64)
        proj[rows] = (acts[rows] - c) @ (u / np.linalg.norm(u))
    ppl = perplexity(base_model, base_tokenizer, texts, batch_size=settings.batch_size)
    return pl.DataFrame({"projection": proj, "perplexity": np.asarray(ppl, float)},
                        schema={"projection": pl.Float64, "perplexity": pl.Float64})


def score_judge(df: pl.DataFrame, judge, *, terms: Sequence[str] = ()) -> pl.DataFrame:
    """The judge's score of every reply (columns :data:`JUDGE_COLUMNS`, in row order): judge
    in [-1, 1] (null when it failed), judge_ok, judge_error, judge_reply. Replies are masked
    (:func:`mask_identity_terms`) first. ``judge`` has ``rate(texts, questions)``; None
    gives every row the error :data:`NO_JUDGE`. Failures stay as rows (never dropped)."""
    if "text" not in df.columns:
        raise ValueError(f"generations table has no 'text' column (columns: {df.columns})")
    texts = mask_identity_terms(df["text"].to_list(), terms)
    schema = {"judge": pl.Float64, "judge_ok": pl.Boolean, "judge_error": pl.String,
              "judge_reply": pl.String}
    if judge is None:
        return pl.DataFrame({"judge": [None] * len(texts), "judge_ok": [False] * len(texts),
                             "judge_error": [NO_JUDGE] * len(texts),
                             "judge_reply": [None] * len(texts)}, schema=schema)
    questions = df["question"].to_list() if "question" in df.columns else None
    rated = judge.rate(texts, questions)
    if rated.height != len(texts):
        raise ValueError(f"judge returned {rated.height} ratings for {len(texts)} texts")
    n_fail = int((~rated["judge_ok"]).sum())
    if n_fail:
        log.warning("judge failed on %d of %d texts (kept as rows with a null score and "
                    "reported per cell)", n_fail, len(texts))
    return rated.select(pl.col("judge_score").alias("judge"), "judge_ok", "judge_error",
                        "judge_reply").cast(schema)
