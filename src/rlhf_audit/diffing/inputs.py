"""The diffing study's partisan directions: the one its latents are compared with, fitted
on the paired file itself, and the partisan study's, for comparison (light: numpy and
polars; sklearn only for a logistic-regression fit; no other study's code, so an edit of
the partisan study reruns none of the diffing study's GPU jobs)."""

from __future__ import annotations

import logging
import os

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


def partisan_direction(path: str | os.PathLike | None, layer: int,
                       method: str) -> np.ndarray | None:
    """The base model's partisan direction at ``layer`` from the partisan study's
    directions table, or None (no partisan study, or that layer was not fitted)."""
    if not path:
        return None
    t = pl.read_parquet(path).filter((pl.col("model") == "base") & (pl.col("layer") == layer)
                                     & (pl.col("method") == method))
    if t.height != 1:
        log.warning("%s: no base %r direction at layer %d: cos_partisan stays null", path,
                    method, layer)
        return None
    return np.asarray(t["direction"][0], np.float64)


MIN_PER_SIDE = 2
"""Fewest left and fewest right statements :func:`context_direction` fits on."""


def context_direction(paired: str | os.PathLike, method: str, *, C: float = 1.0,
                      role: str = "base") -> tuple[np.ndarray | None, dict]:
    """The base model's partisan direction fitted on the paired file's own statements.

    Each statement's mean paired-token vector of ``role`` (:func:`rlhf_audit.diffing.paired.
    statement_means`: the content tokens as the crosscoder read them, in the pair's
    ``diffing.context``), right against left with the partisan study's estimator
    (:func:`rlhf_audit.directions.fit_direction`, ``method`` diffmean or logreg at ``C``),
    on every statement of both splits (a reference direction, as the partisan study's
    full-data one: it enters only decoder cosines, the choice of latents by cosine and the
    sign of steering vectors, never a number read off held-out activations). The partisan
    study's own direction reads each model natively (an instruct-role model inside its
    template), so in the ``chat`` or ``native`` context, or with a chat model in the base
    role, it can be another direction from the one the decoders live in; for a bare base
    in ``raw`` both pool the same tokens. Returns (unit direction [d_model] or None,
    description): None when the statements carry fewer than :data:`MIN_PER_SIDE` left or
    right labels (a dataset that is not partisan)."""
    from rlhf_audit.diffing.paired import statement_means

    frame, M = statement_means(paired, role)
    lab = frame["label"].to_numpy()
    n_right, n_left = int((lab == "right").sum()), int((lab == "left").sum())
    info = {"source": "paired", "method": method,
            "n_right": n_right, "n_left": n_left}
    if min(n_right, n_left) < MIN_PER_SIDE:
        log.warning("%s: %d right and %d left statements: no partisan direction in context; "
                    "cos_partisan stays null", paired, n_right, n_left)
        return None, info
    from rlhf_audit.directions import fit_direction

    part = (lab == "right") | (lab == "left")
    u, _ = fit_direction(M[part], lab[part] == "right", method, C=C)
    return np.asarray(u, np.float64), info


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Cosine of two directions, or None when either is missing."""
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"directions of {a.shape[0]} and {b.shape[0]} dims")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
