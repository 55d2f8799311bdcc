"""Calibration metrics with problem-clustered inference, the headline and the per-level summary."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats as sps

from rlhf_audit.calibration.confidence import PARSE_KINDS
from rlhf_audit.calibration.settings import DEFAULT_SETTINGS, CalibrationSettings
from rlhf_audit.calibration.templates import _NAME
from rlhf_audit.stats import Estimate, bootstrap, correlation_undefined, pearson


def _undefined(x: np.ndarray, y: np.ndarray, names: tuple[str, str]) -> str:
    """Why a correlation of ``x`` and ``y`` is undefined ('' when it is defined); see
    :func:`rlhf_audit.stats.correlation_undefined` (exact constancy check)."""
    return correlation_undefined(x, y, names, unit="replies")


def _constant_within(v: np.ndarray, groups: np.ndarray, name: str) -> str:
    """Why a correlation of ``v`` with the injected level says nothing ('' when it does):
    ``v`` never changes with the level inside a problem. Every problem is put at every
    level, so the pooled correlation is then 0 (or a composition artefact of which replies
    parsed) by construction, not an estimate. A globally constant ``v`` is left to
    :func:`_undefined`; problems with one reply only are a between-problem design, and
    decide nothing here."""
    if len(v) < 3 or np.ptp(v) == 0:
        return ""
    order = np.argsort(groups, kind="stable")
    g, vv = groups[order], v[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(g)])
    if not (sizes >= 2).any():
        return ""
    spread = np.maximum.reduceat(vv, starts) - np.minimum.reduceat(vv, starts)
    if np.all(spread[sizes >= 2] == 0):
        return (f"{name} does not change with the injected level within any problem "
                f"(constant within each of {int((sizes >= 2).sum())} problems): its "
                "correlation with the level is 0 by construction, not an estimate")
    return ""


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """scipy.stats.spearmanr, NaN when undefined (a constant input or fewer than 3 rows)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if _undefined(x, y, ("x", "y")):
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


_pearson = pearson
"""scipy.stats.pearsonr, NaN when undefined (a constant input or fewer than 3 rows)."""


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise scipy.stats.pearsonr of ``[B, n]`` arrays; NaN where a row is constant."""
    out = np.full(len(x), np.nan)
    ok = (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
    if ok.any() and x.shape[1] >= 3:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", sps.NearConstantInputWarning)
            out[ok] = sps.pearsonr(x[ok], y[ok], axis=1).statistic
    return out


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman rho (scipy.stats.rankdata, then pearsonr) of ``[B, n]`` arrays."""
    return _pearson_rows(sps.rankdata(x, axis=1), sps.rankdata(y, axis=1))


_ROW_STATS = {"pearson": (_pearson, _pearson_rows), "spearman": (_spearman, _spearman_rows)}


@dataclass(frozen=True)
class CorrelationEstimate:
    """A correlation with its bootstrap interval and p-values (see :func:`correlation_estimate`)."""

    estimate: Estimate
    """Value, 95% percentile interval, n (problems when clustered, else replies)."""
    p_value: float
    """Two-sided p of 0 from the same resamples (:func:`_bootstrap_p` rule), NaN if undefined."""
    p_value_naive: float
    """Two-sided p of scipy.stats.pearsonr / spearmanr over replies taken as independent."""
    reason: str = ""
    """Why the value or interval is undefined ('' when defined)."""


def _snap(r):
    """Rounding noise around 0 is 0: a balanced design (every problem at every level) with a
    confidence that is constant within each problem gives r = 0 exactly, not 1e-17."""
    return np.where(np.abs(r) < 1e-12, 0.0, r) if isinstance(r, np.ndarray) else (
        0.0 if abs(r) < 1e-12 else r)


def _bootstrap_p(reps: np.ndarray) -> float:
    """Two-sided p-value of 0 from bootstrap replicates: twice the smaller share (with the
    +1 correction) on either side of 0, the level at which the percentile interval starts
    to exclude 0. Its floor is 2 / (n_boot + 1)."""
    lower = (1 + np.sum(reps <= 0)) / (len(reps) + 1)
    upper = (1 + np.sum(reps >= 0)) / (len(reps) + 1)
    return float(min(1.0, 2 * min(lower, upper)))


def correlation_estimate(x, y, groups=None, *, method: Literal["pearson", "spearman"],
                         n_boot: int = 2000, seed: int = 0, unit: str = "",
                         names: tuple[str, str] = ("x", "y"),
                         batch: int = 250) -> CorrelationEstimate:
    """Correlation of ``x`` and ``y`` (scipy.stats) with a percentile bootstrap interval.

    With ``groups`` (the problem of each reply) whole groups are resampled and the p-value
    comes from the same resamples (:func:`_bootstrap_p`), so one problem's replies across
    levels count once; without, rows are resampled and the p-value is scipy's. An
    undefined correlation (a constant input, fewer than 3 rows) has NaN value, interval and
    p-values and a ``reason``. Replicates are computed ``batch`` at a time, vectorised
    when every group has the same size.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    scalar, rows = _ROW_STATS[method]
    g = None if groups is None else np.asarray(groups)
    n_units = len(x) if g is None else len(np.unique(g))
    nan = float("nan")
    why = _undefined(x, y, names)
    if why:
        return CorrelationEstimate(Estimate(nan, nan, nan, n_units, unit), nan, nan, why)
    value = _snap(scalar(x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.NearConstantInputWarning)
        naive = float((sps.pearsonr(x, y) if method == "pearson" else sps.spearmanr(x, y))
                      .pvalue)
    rng = np.random.default_rng(seed)
    if g is None:
        members = [np.arange(len(x))]
        picks_of = lambda b: rng.integers(0, len(x), (b, len(x)))  # noqa: E731
    else:
        uniq, inv = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(len(uniq))]
        picks_of = lambda b: rng.integers(0, len(uniq), (b, len(uniq)))  # noqa: E731
    if n_units < 2:
        return CorrelationEstimate(Estimate(value, nan, nan, n_units, unit), nan, naive,
                                   "interval undefined: fewer than 2 units to resample")
    reps = []
    equal = g is None or len({len(m) for m in members}) == 1
    stacked = np.stack(members) if g is not None and equal else None
    for start in range(0, n_boot, batch):
        picks = picks_of(min(batch, n_boot - start))
        if g is None:
            reps.append(rows(x[picks], y[picks]))
        elif equal:
            idx = stacked[picks].reshape(len(picks), -1)
            reps.append(rows(x[idx], y[idx]))
        else:
            for p in picks:
                idx = np.concatenate([members[k] for k in p])
                reps.append(rows(x[idx][None], y[idx][None]))
    reps = _snap(np.concatenate(reps))
    finite = reps[np.isfinite(reps)]
    if len(finite) < n_boot / 2:
        return CorrelationEstimate(
            Estimate(value, nan, nan, n_units, unit), nan, naive,
            "interval undefined: fewer than half of the resamples have a defined value")
    lo, hi = np.quantile(finite, [0.025, 0.975])
    est = Estimate(value, float(lo), float(hi), n_units, unit)
    return CorrelationEstimate(est, _bootstrap_p(finite) if g is not None else naive, naive)


METRICS: dict[str, str] = {
    "rho": "Spearman rho between injected and verbalized confidence (parsed replies)",
    "bias_pp": "mean(verbalized - injected) in percentage points (parsed replies; > 0: "
               "overconfident relative to the signal)",
    "compliance": "share of parsed replies whose verbalized confidence is within "
                  "compliance_tol_pp of the injected one",
    "accuracy": "share of replies whose extracted answer equals the GSM8K gold number "
                "(no answer counts as wrong)",
    "parse_rate": "share of replies with a numeric or verbal confidence",
    "mean_verbalized": "mean verbalized confidence (%) over parsed replies",
    "mean_injected": "mean injected confidence (%) over parsed replies",
    "internal_r_correct": "Pearson r between internal token confidence over the answer and "
                          "correctness (the interval resamples whole problems when "
                          "cluster_by_problem)",
    "internal_r_signal": "Pearson r between internal token confidence over the answer and "
                         "the injected confidence (the interval resamples whole problems when "
                         "cluster_by_problem)",
    "mean_internal_conf": "mean internal token confidence over the answer span",
}
"""Estimated metrics per (model, strategy) in :func:`metrics`; besides these, count rows
``n_items``, ``n_answer_missing`` and ``n_kind_<kind>`` for each of :data:`PARSE_KINDS`."""

METRICS_SCHEMA = {"model": pl.String, "strategy": pl.String, "metric": pl.String,
                  "value": pl.Float64, "lo": pl.Float64, "hi": pl.Float64, "n": pl.Int64,
                  "n_rows": pl.Int64, "unit": pl.String, "p_value": pl.Float64,
                  "p_value_naive": pl.Float64, "method": pl.String, "reason": pl.String}
"""Columns of :func:`metrics` (long format: one row per model x strategy x metric).
``p_value`` resamples whole problems when ``cluster_by_problem``; ``p_value_naive`` is
scipy.stats.pearsonr over replies as if they were independent; ``reason`` says why a value
or interval is undefined (null when defined)."""

_CORRELATIONS = {"rho": ("injected confidence", "verbalized confidence"),
                 "internal_r_correct": ("internal confidence", "correctness"),
                 "internal_r_signal": ("internal confidence", "injected confidence")}


def _estimates_for_group(g: pl.DataFrame, s: CalibrationSettings) -> list[dict]:
    groups_all = g["problem_id"].to_numpy() if s.cluster_by_problem else None
    kw = {"n_boot": s.n_boot, "seed": s.seed}
    clusters = " (clusters: problems)" if s.cluster_by_problem else " (rows)"
    out: list[dict] = []

    def add(metric, est: Estimate, n_rows, p=None, p_naive=None, reason=None):
        if reason is None and math.isfinite(est.value) and not (
                math.isfinite(est.lo) and math.isfinite(est.hi)) and est.n >= 2:
            reason = ("interval undefined: fewer than half of the resamples have a defined "
                      "value")
        out.append({"metric": metric, "value": est.value, "lo": est.lo, "hi": est.hi,
                    "n": est.n, "n_rows": n_rows, "unit": est.unit, "p_value": p,
                    "p_value_naive": p_naive, "method": est.method + clusters,
                    "reason": reason or None})

    def boot(fn, *arrays, mask=None, unit=""):
        arrays = [np.asarray(a, float) for a in arrays]
        grp = groups_all
        if mask is not None:
            arrays = [a[mask] for a in arrays]
            grp = None if grp is None else grp[mask]
        return bootstrap(fn, *arrays, groups=grp, unit=unit, **kw)

    problems = g["problem_id"].to_numpy()

    def correlation(metric, method, x, y, mask, unit, with_p, response=None):
        grp = groups_all[mask] if groups_all is not None else None
        why = ""
        if response is not None:  # a correlation with the level, which varies per problem
            v = (x if response == "x" else y)[mask]
            name = _CORRELATIONS[metric][0 if response == "x" else 1]
            why = _constant_within(v, problems[mask], name)
        if why:
            nan = float("nan")
            n_units = len(np.unique(grp)) if grp is not None else int(mask.sum())
            add(metric, Estimate(nan, nan, nan, n_units, unit), int(mask.sum()),
                nan if with_p else None, nan if with_p else None, why)
            return
        c = correlation_estimate(x[mask], y[mask], grp, method=method, unit=unit,
                                 names=_CORRELATIONS[metric], **kw)
        add(metric, c.estimate, int(mask.sum()), c.p_value if with_p else None,
            c.p_value_naive if with_p else None, c.reason or None)

    n = g.height
    verbal = g["verbalized"].to_numpy().astype(float)  # nulls become NaN
    inj = g["injected"].to_numpy().astype(float)
    correct = g["correct"].to_numpy().astype(float)
    parsed = np.isfinite(verbal)
    signal = np.isfinite(inj)
    both = parsed & signal
    nan = float("nan")

    def none(metrics_units, reason, with_p=False):
        """Metrics that cannot be computed at all: null, with the reason, never left out."""
        for metric, unit in metrics_units:
            add(metric, Estimate(nan, nan, nan, 0, unit), 0, nan if with_p else None,
                nan if with_p else None, reason)

    add("accuracy", boot(np.mean, correct, unit="share"), n)
    add("parse_rate", boot(np.mean, parsed.astype(float), unit="share"), n)
    no_parse = f"no reply states a confidence (0 of {n} parsed)"
    if parsed.any():
        add("mean_verbalized", boot(lambda v: 100 * v.mean(), verbal, mask=parsed, unit="%"),
            int(parsed.sum()))
    else:
        none([("mean_verbalized", "%")], no_parse)
    if both.any():
        m = int(both.sum())
        add("mean_injected", boot(lambda v: 100 * v.mean(), inj, mask=both, unit="%"), m)
        correlation("rho", "spearman", inj, verbal, both, "Spearman rho", with_p=False,
                    response="y")
        add("bias_pp", boot(lambda a, b: 100 * float(np.mean(b - a)), inj, verbal, mask=both,
                            unit="pp"), m)
        tol = s.compliance_tol_pp / 100 + 1e-9  # float noise must not break exact copies
        complied = (np.abs(verbal - inj) <= tol).astype(float)
        add("compliance", boot(np.mean, complied, mask=both, unit="share"), m)
    elif signal.any():
        none([("mean_injected", "%"), ("rho", "Spearman rho"), ("bias_pp", "pp"),
              ("compliance", "share")], no_parse)
    internal = g[f"internal_conf_{s.internal_measure}"].to_numpy().astype(float)
    has_int = np.isfinite(internal)
    if has_int.any():
        k = int(has_int.sum())
        add("mean_internal_conf", boot(np.mean, internal, mask=has_int, unit="probability"), k)
        correlation("internal_r_correct", "pearson", internal, correct, has_int, "Pearson r",
                    with_p=True)
        sig = has_int & signal
        if sig.any():
            correlation("internal_r_signal", "pearson", internal, inj, sig, "Pearson r",
                        with_p=True, response="x")
    else:
        no_int = (f"no answer located in the generated tokens (0 of {n} replies), so no "
                  "internal confidence")
        none([("mean_internal_conf", "probability")], no_int)
        none([("internal_r_correct", "Pearson r")]
             + ([("internal_r_signal", "Pearson r")] if signal.any() else []), no_int,
             with_p=True)
    counts = {"n_items": n, "n_answer_missing": int(g["answer"].null_count())}
    kinds = g["parse_kind"].to_list()
    for kind in PARSE_KINDS:
        counts[f"n_kind_{kind}"] = sum(k == kind for k in kinds)
    for metric, v in counts.items():
        out.append({"metric": metric, "value": float(v), "lo": None, "hi": None, "n": n,
                    "n_rows": n, "unit": "count", "p_value": None, "p_value_naive": None,
                    "method": "count", "reason": None})
    return out


def metrics(scored: pl.DataFrame, settings: CalibrationSettings = DEFAULT_SETTINGS
            ) -> pl.DataFrame:
    """Calibration metrics per (model, strategy), long format (:data:`METRICS_SCHEMA`).

    ``scored`` is :func:`score_generations` output with a ``model`` column (the model's
    role in its pair, e.g. ``base`` / ``instruct``). Estimates (:data:`METRICS`) carry a
    95% bootstrap interval; with ``settings.cluster_by_problem`` (the default) whole
    problems are resampled (one problem's replies at every level are one cluster; ``n`` =
    problems, ``n_rows`` = replies used). Pearson correlations carry two p-values:
    ``p_value`` from the same bootstrap over problems (:func:`_bootstrap_p`; scipy's when
    not clustering) and ``p_value_naive`` from scipy.stats.pearsonr over replies. A
    correlation with a constant input is undefined: value, interval and p are null and
    ``reason`` says why. So is a correlation with the injected level (rho,
    internal_r_signal) whose other side never changes with the level inside a problem
    (:func:`_constant_within`): it is 0 by construction, and 0 [0, 0] would read as a
    precise finding. Counts of every parse kind and of replies without an answer are
    rows too, so refusals and misses are always reported.
    """
    need = [c for c in ("model", "strategy", "problem_id", "injected", "verbalized",
                        "parse_kind", "correct", "answer", "internal_conf_mean",
                        "internal_conf_min") if c not in scored.columns]
    if need:
        raise KeyError(f"scored table lacks columns {need}; use score_generations output "
                       "and add the model's role, e.g. .with_columns(model=pl.lit('base'))")
    rows = []
    for (model, strategy), g in scored.group_by(["model", "strategy"], maintain_order=True):
        for r in _estimates_for_group(g, settings):
            rows.append({"model": model, "strategy": strategy, **r})
    df = pl.DataFrame(rows, schema=METRICS_SCHEMA)
    # NaN (undefined, e.g. constant input) and null (not applicable) both mean "no value".
    return df.with_columns(pl.col(c).fill_nan(None)
                           for c in ("value", "lo", "hi", "p_value", "p_value_naive"))


HEADLINE_METRICS = ("rho", "bias_pp", "compliance", "accuracy", "parse_rate",
                    "mean_verbalized", "internal_r_correct", "internal_r_correct_p",
                    "internal_r_correct_p_naive", "internal_r_signal", "internal_r_signal_p",
                    "internal_r_signal_p_naive")
"""Metrics that go into the headline, per model x strategy."""

_P_DESCRIPTIONS = {
    "_p": "two-sided p-value of {base}, from the bootstrap over whole problems (twice the "
          "smaller share of resamples on either side of 0; scipy.stats.pearsonr when "
          "cluster_by_problem is false; changed: it used to be scipy's over replies, which "
          "is now the _p_naive key)",
    "_p_naive": "two-sided p-value of {base} from scipy.stats.pearsonr over replies taken as "
                "independent (anti-conservative: one problem's replies across levels are "
                "correlated; shown to compare with a paper that pooled replies)",
}


def headline_key(model: str, strategy: str, metric: str) -> str:
    """``{metric}_{model}_{strategy}``, e.g. ``rho_instruct_command``."""
    return f"{metric}_{model}_{strategy}"


def headline_keys(models: Sequence[str] = ("base", "instruct"),
                  strategies: Sequence[str] = ("command", "conversational", "control"),
                  signal: Mapping[str, bool] | None = None) -> dict[str, str]:
    """Every headline key for these models and strategies, with a one-line description.

    ``signal`` says which strategies inject a confidence (default: all but ``control``);
    the others have no rho, bias, compliance or internal_r_signal.
    """
    out = {}
    for model in models:
        for st in strategies:
            has_signal = (signal or {}).get(st, st != "control")
            for metric in HEADLINE_METRICS:
                if not has_signal and (metric in ("rho", "bias_pp", "compliance")
                                       or metric.startswith("internal_r_signal")):
                    continue
                suffix = next((x for x in ("_p_naive", "_p") if metric.endswith(x)), "")
                base = metric.removesuffix(suffix) if suffix else metric
                desc = _P_DESCRIPTIONS[suffix].format(base=base) if suffix else METRICS[metric]
                out[headline_key(model, st, metric)] = f"{model}, {st} prompts: {desc}"
    return out


HEADLINE_KEYS: dict[str, str] = headline_keys()
"""Headline keys for the default pair roles (base, instruct) and the shipped strategies."""


def headline(scored: pl.DataFrame, settings: CalibrationSettings = DEFAULT_SETTINGS
             ) -> dict[str, Estimate]:
    """Headline numbers per model x strategy, keyed by :func:`headline_key` (descriptions
    in :func:`headline_keys`; :data:`HEADLINE_KEYS` for base/instruct and the shipped
    strategies). p-values are Estimates with a NaN interval and unit ``p``. An undefined
    number (e.g. rho when the model states the same confidence at every level) is an
    Estimate with NaN value and interval and its ``reason``; its p-values are too.
    """
    for col in ("model", "strategy"):
        if col in scored.columns:
            bad = sorted({v for v in scored[col].unique().to_list() if not _NAME.match(str(v))})
            if bad:
                raise ValueError(f"{col} values {bad} are not snake_case; headline keys are "
                                 f"built from them (use e.g. 'base' / 'instruct')")
    table = metrics(scored, settings)
    nan = float("nan")

    def val(x):
        return nan if x is None else float(x)

    out: dict[str, Estimate] = {}
    for r in table.iter_rows(named=True):
        metric = r["metric"]
        if metric not in HEADLINE_METRICS:
            continue
        reason = r["reason"] or ""
        out[headline_key(r["model"], r["strategy"], metric)] = Estimate(
            val(r["value"]), val(r["lo"]), val(r["hi"]), int(r["n"]), r["unit"], r["method"],
            reason)
        if metric.startswith("internal_r_"):
            undefined = r["value"] is None
            clustered = settings.cluster_by_problem
            for suffix, col, n, method in (
                    ("_p", "p_value", r["n"] if clustered else r["n_rows"],
                     "bootstrap over problems, two-sided" if clustered
                     else "scipy.stats.pearsonr, two-sided"),
                    ("_p_naive", "p_value_naive", r["n_rows"],
                     "scipy.stats.pearsonr, two-sided, replies as independent")):
                out[headline_key(r["model"], r["strategy"], metric + suffix)] = Estimate(
                    val(r[col]), nan, nan, int(n), "p", method,
                    reason if undefined else ("" if r[col] is not None
                                              else "p-value undefined"))
    return out


def level_summary(scored: pl.DataFrame, settings: CalibrationSettings = DEFAULT_SETTINGS
                  ) -> pl.DataFrame:
    """Mean verbalized confidence per model x strategy x injected level (null level for
    no-signal strategies), for the figure.

    Columns: model, strategy, injected (Float64, 0-1, null for no signal), mean_verbalized,
    lo, hi (0-1, 95% percentile bootstrap; over problems with ``cluster_by_problem``, which
    at one level is one reply per problem), n_parsed, n_items.
    """
    rows = []
    keys = ["model", "strategy", "injected"]
    for (model, strategy, inj), g in scored.sort(keys, nulls_last=True).group_by(
            keys, maintain_order=True):
        parsed = g.filter(pl.col("verbalized").is_not_null())
        v = parsed["verbalized"].to_numpy().astype(float)
        grp = parsed["problem_id"].to_numpy() if settings.cluster_by_problem else None
        est = bootstrap(np.mean, v, groups=grp, n_boot=settings.n_boot, seed=settings.seed)
        rows.append({"model": model, "strategy": strategy, "injected": inj,
                     "mean_verbalized": est.value, "lo": est.lo, "hi": est.hi,
                     "n_parsed": len(v), "n_items": g.height})
    schema = {"model": pl.String, "strategy": pl.String, "injected": pl.Float64,
              "mean_verbalized": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
              "n_parsed": pl.Int64, "n_items": pl.Int64}
    return pl.DataFrame(rows, schema=schema).with_columns(
        pl.col(c).fill_nan(None) for c in ("mean_verbalized", "lo", "hi"))
