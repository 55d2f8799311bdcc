"""The shared Pearson correlation (rlhf_audit.stats.pearson), which the calibration and the
reward analyses both use: planted correlations are recovered, degenerate input is
undefined (NaN with a reason), never 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rlhf_audit import stats
from rlhf_audit.calibration import analysis as cal
from rlhf_audit.reward import analysis as rew


def _planted(rho: float, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return x, y


@pytest.mark.parametrize("rho", [-0.8, -0.3, 0.0, 0.5, 0.9])
def test_planted_correlation_is_recovered_over_many_seeds(rho):
    n, seeds = 400, 200
    rs = np.array([stats.pearson(*_planted(rho, n, np.random.default_rng(s)))
                   for s in range(seeds)])
    # The sampling sd of r is about (1 - rho^2) / sqrt(n); the mean of 200 draws is within
    # 4 standard errors of rho (r's small-sample bias, rho (1 - rho^2) / 2n, is far below).
    se = (1 - rho**2) / math.sqrt(n) / math.sqrt(seeds)
    assert abs(rs.mean() - rho) < 4 * se + 1e-3
    assert rs.std() == pytest.approx((1 - rho**2) / math.sqrt(n), rel=0.2, abs=2e-3)


def test_equals_scipy_and_is_invariant_to_affine_maps():
    rng = np.random.default_rng(7)
    x, y = _planted(0.6, 50, rng)
    r = stats.pearson(x, y)
    assert r == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12)
    assert stats.pearson(3 * x + 2, -0.5 * y + 1) == pytest.approx(-r, abs=1e-12)
    assert stats.correlation_undefined(x, y) == ""


@pytest.mark.parametrize("x,y,why", [
    (np.full(10, 0.1 + 0.2), np.arange(10.0), "the first variable is constant (0.3 in all 10"),
    (np.arange(10.0), np.full(10, 2.0), "the second variable is constant (2 in all 10"),
    ([1.0, 2.0], [2.0, 3.0], "only 2 values"),
    ([], [], "only 0 values"),
])
def test_constant_or_too_short_input_is_undefined_with_a_reason(x, y, why):
    assert math.isnan(stats.pearson(x, y))
    assert why in stats.correlation_undefined(x, y)


def test_a_near_constant_side_is_defined_and_exact():
    # std of a mean-rounded constant is 1e-17, yet ptp is exact: 1e-9 steps are real data.
    x = 1.0 + 1e-9 * np.arange(20.0)
    y = 2 * np.arange(20.0)
    assert stats.pearson(x, y) == pytest.approx(1.0, abs=1e-6)


def test_both_studies_use_the_one_pearson():
    assert cal._pearson is stats.pearson and rew._pearson is stats.pearson
    rng = np.random.default_rng(3)
    x, y = _planted(0.4, 200, rng)
    groups = np.repeat(np.arange(50), 4)
    # the reward study's headline correlation is the shared one, bootstrapped
    est = rew.correlation_estimate(x, y, groups, n_boot=200, seed=1)
    assert est.value == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12) and est.n == 50
    const = rew.correlation_estimate(np.ones(5), np.arange(5.0))
    assert math.isnan(const.value) and "first variable is constant" in const.method
    assert rew._pearson_undefined(x, y) is None
    assert "correctness is constant" in cal._undefined(x, np.zeros(200), ("level",
                                                                         "correctness"))
