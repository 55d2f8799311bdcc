"""Planted activations for partisan tests at realistic dimension and noise.

Real residual streams have a decaying covariance spectrum, under which estimators
that pass with isotropic noise at d = 16 are biased. ``anisotropic_pair`` draws a
model pair whose partisan coordinate has a known instruct/base variance ratio
(``scale**2``) on top of 1/k^alpha noise in a random basis plus issue offsets.
"""

from __future__ import annotations

import numpy as np


def anisotropic_pair(
    seed: int,
    *,
    d: int = 512,
    n_issues: int = 44,
    n_left: int = 24,
    n_right: int = 24,
    n_neutral: int = 9,
    m: float = 1.0,
    spread: float = 0.5,
    scale: float = 0.3,
    noise_total: float = 60.0,
    issue_total: float = 20.0,
    alpha: float = 1.0,
    same_direction: bool = True,
):
    """``(X_base, X_instruct, labels, issues, u, w)``: ``[n, d]`` activations of one pair.

    Partisan coordinate s = +-m (right/left, 0 neutral) + N(0, spread) along unit ``u``
    in base and ``scale`` times a fresh draw of it along ``w`` in instruct (``w = u`` if
    ``same_direction``, else a unit vector orthogonal to u), so the population variance
    ratio along the direction and the squared class-separation ratio are both
    ``scale**2``. Noise: eigenvalues proportional to 1/k^alpha summing to
    ``noise_total``, in a random orthonormal basis; issue offsets of total variance
    ``issue_total``; both orthogonal to the partisan axis.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    w = u
    if not same_direction:
        w = rng.normal(size=d)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
    per = n_left + n_right + n_neutral
    labels = np.array((["left"] * n_left + ["right"] * n_right + ["neutral"] * n_neutral)
                      * n_issues)
    issue_idx = np.repeat(np.arange(n_issues), per)
    issues = np.array([f"issue{k}" for k in issue_idx])
    n = len(labels)
    a = np.where(labels == "right", 1.0, np.where(labels == "left", -1.0, 0.0))
    lam = 1.0 / np.arange(1, d + 1) ** alpha
    lam *= noise_total / lam.sum()
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))

    def draw(sc, axis):
        s = sc * (a * m + rng.normal(size=n) * spread)
        noise = (rng.normal(size=(n, d)) * np.sqrt(lam)) @ Q.T
        iv = rng.normal(size=(n_issues, d)) * np.sqrt(issue_total / d)
        rest = noise + iv[issue_idx]
        rest -= np.outer(rest @ axis, axis)
        return np.outer(s, axis) + rest

    Xb = draw(1.0, u) + 2.0
    Xi = draw(scale, w) - 1.0
    return Xb, Xi, labels, issues, u, w
