"""Fitting a linear direction that separates two labelled groups of activations.

A shared layer below the studies: the partisan study fits its probes with it, and the
diffing study fits the direction its latents are matched to with the same estimator, so
an edit here reruns both, and an edit of either study reruns neither's GPU jobs.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("diffmean", "logreg")
"""Direction estimators: difference of means, or L2 logistic regression."""


def fit_direction(X: np.ndarray, y: np.ndarray, method: str, *, C: float = 1.0,
                  standardize: bool = True, max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """Fit a direction on labelled activations.

    ``X``: ``[n, d_model]`` activations; ``y``: ``[n]`` 1 = the positive side (e.g.
    "right"), 0 = the other. Returns ``(u, b)``: ``u`` ``[d_model]`` unit vector in the raw
    activation space pointing to the positive side, ``b`` the decision threshold on
    ``X @ u`` (activation units). ``diffmean``: the difference of the two means (the axis
    itself, no hyperparameter). ``logreg``: logistic regression at inverse L2 strength
    ``C`` on z-scored features (``standardize``), mapped back to raw units: a
    discriminant, which under uneven noise is not the difference of means.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    if method == "diffmean":
        m_right, m_left = X[y].mean(0), X[~y].mean(0)
        w = m_right - m_left
        norm = np.linalg.norm(w)
        if norm == 0:
            raise ValueError("left and right prompts have identical mean activations")
        u = w / norm
        return u, float(0.5 * (m_right + m_left) @ u)
    if method == "logreg":
        from sklearn.linear_model import LogisticRegression  # here: ~0.5 s to import

        if standardize:
            mu = X.mean(0)
            sd = X.std(0)
            sd = np.where(sd > 0, sd, 1.0)  # constant features carry no signal
        else:
            mu, sd = np.zeros(X.shape[1]), np.ones(X.shape[1])
        Z = ((X - mu) / sd).astype(np.float32)
        clf = LogisticRegression(C=C, max_iter=max_iter)
        clf.fit(Z, y.astype(int))
        if clf.n_iter_[0] >= max_iter:
            log.warning("logistic regression hit max_iter=%d", max_iter)
        coef = clf.coef_[0].astype(np.float64)
        # decision = ((x - mu)/sd) @ coef + c = x @ (coef/sd) + (c - (mu/sd) @ coef)
        w = coef / sd
        c = float(clf.intercept_[0]) - float((mu / sd) @ coef)
        norm = np.linalg.norm(w)
        if norm == 0:
            raise ValueError("logistic regression returned zero weights (C too small?)")
        return w / norm, -c / norm
    raise ValueError(f"unknown partisan method {method!r}: use one of {METHODS}")
