"""Shared statistics: point estimates with a 95% bootstrap interval and n.

Every headline number of the three studies is an :class:`Estimate`. The
bootstrap is a percentile bootstrap over rows, or over clusters when ``groups``
is given (e.g. pairs in SEAL, policy issues in the partisan probes), so that
correlated rows are resampled together.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A number with its uncertainty."""

    value: float
    """Point estimate on the full sample."""
    lo: float
    """Lower end of the interval (NaN when it cannot be computed)."""
    hi: float
    """Upper end of the interval."""
    n: int
    """Number of independent units behind the estimate (rows, or clusters)."""
    unit: str = ""
    """Unit of ``value`` (e.g. "AUC", "pp", "ratio")."""
    method: str = "percentile bootstrap, 95%"
    """How the interval was made."""
    reason: str = ""
    """Why ``value`` (or the interval) is undefined, e.g. a correlation with a constant
    input; empty when it is defined (and then left out of :meth:`to_dict`)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("value", "lo", "hi"):
            d[k] = None if d[k] is None or not math.isfinite(d[k]) else float(d[k])
        if not d["reason"]:
            del d["reason"]
        return d

    def covers(self, x: float) -> bool:
        """Whether ``x`` lies inside the interval."""
        return bool(self.lo <= x <= self.hi)


def bootstrap(
    statistic: Callable[..., float],
    *arrays: Sequence | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
    confidence: float = 0.95,
    unit: str = "",
) -> Estimate:
    """Percentile bootstrap of ``statistic(*arrays)``.

    ``arrays`` share their first axis (rows). With ``groups`` (one label per
    row), whole groups are resampled with replacement (cluster bootstrap) and
    ``n`` is the number of groups. Replicates where the statistic is not finite
    (e.g. a resample with one class only for an AUC) are dropped; if fewer than
    half are finite the interval is NaN.
    """
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise ValueError("bootstrap needs at least one array")
    n_rows = len(arrs[0])
    for a in arrs[1:]:
        if len(a) != n_rows:
            raise ValueError(f"bootstrap arrays differ in length: {[len(x) for x in arrs]}")
    value = float(statistic(*arrs)) if n_rows else float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        n_units = n_rows
        if n_rows < 2:
            return Estimate(value, math.nan, math.nan, n_units, unit)
        idx_iter = (rng.integers(0, n_rows, n_rows) for _ in range(n_boot))
    else:
        g = np.asarray(groups)
        if len(g) != n_rows:
            raise ValueError("groups must have one label per row")
        uniq, inv = np.unique(g, return_inverse=True)
        n_units = len(uniq)
        if n_units < 2:
            return Estimate(value, math.nan, math.nan, n_units, unit)
        members = [np.flatnonzero(inv == k) for k in range(n_units)]

        def _cluster_idx():
            pick = rng.integers(0, n_units, n_units)
            return np.concatenate([members[k] for k in pick])

        idx_iter = (_cluster_idx() for _ in range(n_boot))
    reps = []
    for idx in idx_iter:
        with np.errstate(all="ignore"):
            reps.append(float(statistic(*[a[idx] for a in arrs])))
    reps = np.asarray(reps)
    finite = reps[np.isfinite(reps)]
    if len(finite) < n_boot / 2:
        return Estimate(value, math.nan, math.nan, n_units, unit)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return Estimate(value, float(lo), float(hi), n_units, unit)


def cohens_d(x: np.ndarray, y: np.ndarray) -> float:
    """Cohen's d of two samples with the pooled standard deviation."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return float("nan")
    pooled = ((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2)
    return float((x.mean() - y.mean()) / math.sqrt(pooled)) if pooled > 0 else float("nan")


def correlation_undefined(x, y, names: tuple[str, str] = ("the first variable",
                                                         "the second variable"),
                          unit: str = "values") -> str:
    """Why a correlation of ``x`` and ``y`` is undefined ('' when it is defined): fewer
    than 3 ``unit`` (rows), or a constant side.

    The constancy check is exact (``ptp == 0``), not ``std == 0``: a mean's rounding turns
    a constant such as 0.1 + 0.2 into noise of 1e-17, which would give a spurious r."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return f"only {len(x)} {unit}, fewer than the 3 a correlation needs"
    for arr, name in ((x, names[0]), (y, names[1])):
        if np.ptp(arr) == 0:
            return f"{name} is constant ({float(arr[0]):.6g} in all {len(arr)} {unit})"
    return ""


def pearson(x, y) -> float:
    """scipy.stats.pearsonr's r, NaN where :func:`correlation_undefined` says it is undefined
    (never 0); :func:`bootstrap` drops such replicates."""
    from scipy import stats as sps  # here: scipy.stats costs ~0.8 s to import, and most
    # jobs that import this module never correlate

    x, y = np.asarray(x, float), np.asarray(y, float)
    if correlation_undefined(x, y):
        return float("nan")
    with warnings.catch_warnings():
        # A near-constant side is still defined; the warning is about precision only.
        warnings.simplefilter("ignore", sps.NearConstantInputWarning)
        return float(sps.pearsonr(x, y).statistic)
