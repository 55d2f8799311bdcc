"""Statistics of the steering study (rule analyse_steering; The Neutral Mask, claims 4-5).

Inputs are the scored tables of :mod:`rlhf_audit.steering.score`: one row per generation with
model, vector, alpha, question_id, issue, text and a column per score (``judge``,
``projection``; null where a scorer failed). Everything here is CPU-only and imports no
model code, so changing an analysis never reruns a generation.

- Degeneration: a reply is degenerate when empty, or when its repeated-4-gram share or
  non-text share exceeds ``degenerate_text_share``; per (model, vector, alpha) the rate is
  the degenerate share. A vector's slopes use the window ``|alpha| <= a_max`` where a_max
  is the largest strength whose cells, and every weaker one's, stay at or under
  ``max_degenerate_rate`` in both models (the same alphas for both, so slopes compare).
- Slopes: OLS of the score on alpha over the window, per (model, vector), on the
  per-question means. The disconnect of a vector is the slope difference instruct minus
  base; its null gap is that difference minus the mean difference over its null family
  (random directions for the direction vectors, random feature sets for the feature
  vector). Intervals: percentile bootstrap over issues (questions of one issue move
  together), every slope of every vector refitted on the same resample, and the null
  family's vectors resampled with replacement in the same replicate.
- Identity primes: right-primed minus left-primed mean score, pooled over every wording;
  the bootstrap resamples issues and, independently, wordings (identity wordings and
  persona wordings each), so the interval carries the wording as a random effect. The
  persona control is mean(persona) - mean(none).
- Judge failures are counted per cell (table and headline), never dropped silently.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import polars as pl

from rlhf_audit.stats import Estimate
from rlhf_audit.steering.settings import (
    MODEL_ROLES,
    NO_JUDGE,
    NULL_FAMILIES,
    PRIME_CONDITIONS,
    SCORES,
    VECTOR_KINDS,
    SteeringSettings,
    null_family_of,
    vector_family,
)

log = logging.getLogger(__name__)

_F, _S, _I = pl.Float64, pl.String, pl.Int64


# ---------------------------------------------------------------- text measures


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams / word n-grams in ``text`` (1 = no repeats); NaN if under n words."""
    w = _words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeat_n(text: str, n: int = 4) -> float:
    """Share of word n-grams that already occurred earlier in ``text`` (0 = none); NaN if short."""
    w = _words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return float("nan")
    seen: set = set()
    rep = 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def non_text_share(text: str) -> float:
    """Share of whitespace-separated tokens without a letter (digits, symbols, punctuation
    runs); NaN for a text without tokens."""
    toks = str(text).split()
    if not toks:
        return float("nan")
    return sum(not any(c.isalpha() for c in t) for t in toks) / len(toks)


def is_degenerate(text: str, threshold: float = SteeringSettings.degenerate_text_share) -> bool:
    """Empty, or its repeated-4-gram share (:func:`repeat_n`) or non-text share
    (:func:`non_text_share`) above ``threshold``. Texts under 4 words have repeat share 0."""
    if not str(text).strip():
        return True
    rep = repeat_n(text, 4)
    rep = 0.0 if math.isnan(rep) else rep
    return rep > threshold or non_text_share(text) > threshold



# ---------------------------------------------------------------- statistics


def _percentile(reps: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    r = reps[np.isfinite(reps)]
    if len(r) < max(1, len(reps)) / 2:
        return math.nan, math.nan
    a = (1 - confidence) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return float(lo), float(hi)


def _estimate(point: float, reps: np.ndarray, n: int, unit: str) -> Estimate:
    lo, hi = _percentile(np.asarray(reps, float))
    return Estimate(float(point), lo, hi, int(n), unit,
                    "percentile bootstrap, 95%, issues resampled")


def _issue_weights(issue_of_unit: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot + 1, n_units] weights: row 0 all ones (the point estimate), then one row per
    cluster-bootstrap resample of the issues (a unit weighs as often as its issue is drawn)."""
    uniq, inv = np.unique(np.asarray(issue_of_unit, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
                       for _ in range(n_boot)]) if n_boot else np.zeros((0, len(uniq)))
    return np.vstack([np.ones((1, len(uniq))), counts])[:, inv].astype(float)


# --------------------------------------------------------------------------- degeneration


def add_text_measures(df: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Add distinct_2, repeat_4, non_text and degenerate (bool) from the ``text`` column."""
    texts = df["text"].to_list()
    return df.with_columns(
        pl.Series("distinct_2", [distinct_n(t, 2) for t in texts], dtype=_F),
        pl.Series("repeat_4", [repeat_n(t, 4) for t in texts], dtype=_F),
        pl.Series("non_text", [non_text_share(t) for t in texts], dtype=_F),
        pl.Series("degenerate", [is_degenerate(t, threshold) for t in texts], dtype=pl.Boolean),
    )


def degeneration_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Per model x vector x alpha: degenerate_rate, median_perplexity (if scored),
    mean_distinct_2, mean_repeat_4, mean_non_text, share_finished, n_rows."""
    aggs = [
        pl.col("degenerate").mean().alias("degenerate_rate"),
        pl.col("distinct_2").fill_nan(None).mean().alias("mean_distinct_2"),
        pl.col("repeat_4").fill_nan(None).mean().alias("mean_repeat_4"),
        pl.col("non_text").fill_nan(None).mean().alias("mean_non_text"),
        pl.col("finished").mean().alias("share_finished"),
        pl.len().alias("n_rows"),
    ]
    if "perplexity" in scores.columns:
        aggs.insert(1, pl.col("perplexity").fill_nan(None).median().alias("median_perplexity"))
    return scores.group_by(["model", "vector", "alpha"]).agg(aggs).sort(
        ["model", "vector", "alpha"])


def alpha_window(degen: pl.DataFrame, vector: str, max_rate: float) -> float:
    """Largest |alpha| such that every cell of ``vector`` with |alpha| at most it has a
    degenerate rate <= ``max_rate`` in every model (0.0: only the unsteered point)."""
    d = degen.filter(pl.col("vector") == vector)
    if d.height == 0:
        raise ValueError(f"no degeneration rows for vector {vector!r}")
    worst = d.group_by(pl.col("alpha").abs().alias("level")).agg(
        pl.col("degenerate_rate").max()).sort("level")
    a_max = 0.0
    for level, rate in worst.iter_rows():
        if level == 0:
            continue
        if rate > max_rate:
            break
        a_max = float(level)
    return a_max


# --------------------------------------------------------------------------- slopes


def _cube(d: pl.DataFrame, score: str, models, vectors, alphas, questions) -> np.ndarray:
    """Y[model, vector, alpha, question]: mean valid score over samples (NaN: none valid)."""
    g = d.filter(pl.col(score).is_not_null() & pl.col(score).is_finite()).group_by(
        ["model", "vector", "alpha", "question_id"]).agg(pl.col(score).mean())
    Y = np.full((len(models), len(vectors), len(alphas), len(questions)), np.nan)
    mi = {m: i for i, m in enumerate(models)}
    vi = {v: i for i, v in enumerate(vectors)}
    ai = {a: i for i, a in enumerate(alphas)}
    qi = {q: i for i, q in enumerate(questions)}
    for m, v, a, q, y in g.iter_rows():
        if m in mi and v in vi:
            Y[mi[m], vi[v], ai[a], qi[q]] = y
    return Y


def _weighted_slopes(Y: np.ndarray, alphas: np.ndarray, keep: np.ndarray,
                     W: np.ndarray) -> np.ndarray:
    """Slopes [B, M, V] of the per-question means Y [M, V, A, Q] on alpha, over the alphas
    keep [V, A], each question weighted by W [B, Q]. NaN where fewer than 2 alphas remain."""
    M = np.isfinite(Y) & keep[None, :, :, None]
    Yz = np.where(M, Y, 0.0)
    Mf = M.astype(float)
    a = alphas[None, None, :, None]
    sw = np.einsum("bq,mvaq->bmv", W, Mf)
    sa = np.einsum("bq,mvaq->bmv", W, Mf * a)
    saa = np.einsum("bq,mvaq->bmv", W, Mf * a * a)
    sy = np.einsum("bq,mvaq->bmv", W, Yz)
    say = np.einsum("bq,mvaq->bmv", W, Yz * a)
    with np.errstate(all="ignore"):
        den = saa - sa * sa / sw
        out = (say - sa * sy / sw) / den
    out[~(den > 1e-12)] = np.nan
    return out


def steering_contrast(
    scores: pl.DataFrame,
    score: str,
    degen: pl.DataFrame,
    *,
    base_model: str = "base",
    instruct_model: str = "instruct",
    max_degenerate_rate: float = SteeringSettings.max_degenerate_rate,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Slopes, slope differences and null gaps of every vector for one score.

    Returns {"slopes": table (model, vector, family, score, slope, lo, hi, n, alpha_max),
    "disconnect": table (vector, family, score, null_family, n_null, difference, lo, hi,
    null_mean, null_sd, null_share_below, gap, gap_lo, gap_hi, n, alpha_max),
    "estimates": {headline key: Estimate}}. n = issues. Comparisons with a null also
    resample its vectors (with replacement) in every replicate. A null vector whose every alpha
    degenerated has NaN slopes and is left out of its family's mean (``n_null`` counts the
    rest).
    """
    with warnings.catch_warnings():  # nan-means of all-NaN slices are expected here
        warnings.simplefilter("ignore", RuntimeWarning)
        return _steering_contrast(scores, score, degen, base_model, instruct_model,
                                  max_degenerate_rate, n_boot, seed)


def _steering_contrast(scores, score, degen, base_model, instruct_model, max_degenerate_rate,
                       n_boot, seed) -> dict:
    if score not in scores.columns:
        raise ValueError(f"scores table has no column {score!r} (columns: {scores.columns})")
    for c in ("issue", "question_id"):
        if c not in scores.columns:
            raise ValueError(f"scores table has no {c!r} column")
    models = [base_model, instruct_model]
    vectors = sorted(set(scores["vector"].to_list()))
    alphas = np.array(sorted(set(scores["alpha"].to_list())), float)
    qmap = scores.select("question_id", "issue").unique("question_id").sort("question_id")
    questions = qmap["question_id"].to_list()
    Y = _cube(scores, score, models, vectors, list(alphas), questions)
    a_max = {v: alpha_window(degen, v, max_degenerate_rate) for v in vectors}
    keep = np.array([[abs(a) <= a_max[v] + 1e-12 for a in alphas] for v in vectors])
    W = _issue_weights(qmap["issue"].to_numpy(), n_boot, seed)
    n_iss = qmap["issue"].n_unique()
    S = _weighted_slopes(Y, alphas, keep, W)  # [B+1, 2, V]
    vi = {v: i for i, v in enumerate(vectors)}
    fam = {f: [vi[v] for v in vectors if vector_family(v) == f] for f in NULL_FAMILIES}
    # each replicate also resamples the null vectors of a family (with replacement), so the
    # intervals of anything compared with a null carry which random vectors were drawn
    rng = np.random.default_rng((seed, 0x4E55))
    wn = {}
    for f, ix in fam.items():
        w = np.ones((n_boot + 1, len(ix)))
        for b in range(1, n_boot + 1 if ix else 1):
            w[b] = np.bincount(rng.integers(0, len(ix), len(ix)), minlength=len(ix))
        wn[f] = w

    def null_mean(X, f):  # X [B+1, ..., K] over the family's vectors -> weighted nan-mean
        w = wn[f].reshape(wn[f].shape[:1] + (1,) * (X.ndim - 2) + wn[f].shape[1:])
        w = np.where(np.isfinite(X), w, 0.0)
        with np.errstate(all="ignore"):
            return np.where(w.sum(-1) > 0, (np.nan_to_num(X) * w).sum(-1) / w.sum(-1), np.nan)

    null_slope = {f: null_mean(S[:, :, ix], f) if ix else None for f, ix in fam.items()}
    diff = S[:, 1, :] - S[:, 0, :]
    est: dict[str, Estimate] = {}
    slope_rows, dis_rows = [], []
    for v in vectors:
        for mi, m in enumerate(models):
            e = _estimate(S[0, mi, vi[v]], S[1:, mi, vi[v]], n_iss, "score/alpha")
            slope_rows.append({"model": m, "vector": v, "family": vector_family(v),
                               "score": score, "slope": e.value, "lo": e.lo, "hi": e.hi,
                               "n": e.n, "alpha_max": a_max[v]})
    roles = dict(zip(MODEL_ROLES, range(2), strict=True))
    for f, short in (("random_direction", "random"), ("random_features", "random_features")):
        if null_slope[f] is None:
            continue
        for role, mi in roles.items():
            est[f"steering_slope_{role}_{short}_{score}"] = _estimate(
                null_slope[f][0, mi], null_slope[f][1:, mi], n_iss, "score/alpha")
    for v in VECTOR_KINDS:
        if v not in vi:
            continue
        j = vi[v]
        f = null_family_of(v)
        for role, mi in roles.items():
            est[f"steering_slope_{role}_{v}_{score}"] = _estimate(
                S[0, mi, j], S[1:, mi, j], n_iss, "score/alpha")
        d = _estimate(diff[0, j], diff[1:, j], n_iss, "score/alpha")
        est[f"disconnect_ratio_{v}_{score}"] = d
        row = {"vector": v, "family": v, "score": score, "null_family": f, "n_null": 0,
               "difference": d.value, "lo": d.lo, "hi": d.hi, "null_mean": math.nan,
               "null_sd": math.nan, "null_share_below": math.nan, "gap": math.nan,
               "gap_lo": math.nan, "gap_hi": math.nan, "n": n_iss, "alpha_max": a_max[v]}
        ix = fam[f]
        if ix:
            nd = diff[:, ix]  # [B+1, n_null]
            ok = np.isfinite(nd[0])
            gap = diff[:, j] - null_mean(nd, f)
            g = _estimate(gap[0], gap[1:], n_iss, "score/alpha")
            est[f"disconnect_null_gap_{v}_{score}"] = g
            for role, mi in roles.items():
                with np.errstate(all="ignore"):
                    vs = S[:, mi, j] - null_slope[f][:, mi]
                est[f"steering_slope_vs_null_{role}_{v}_{score}"] = _estimate(
                    vs[0], vs[1:], n_iss, "score/alpha")
            row.update(n_null=int(ok.sum()), null_mean=float(np.nanmean(nd[0])),
                       null_sd=float(np.nanstd(nd[0], ddof=1)) if ok.sum() > 1 else math.nan,
                       null_share_below=float((nd[0][ok] < diff[0, j]).mean())
                       if ok.any() else math.nan,
                       gap=g.value, gap_lo=g.lo, gap_hi=g.hi)
            if ok.sum() < 10:
                log.warning("%s: only %d finite null vectors in %s (10 or more expected)",
                            v, int(ok.sum()), f)
        dis_rows.append(row)
    if {"direction", "feature"} <= set(vi):
        gg = diff[:, vi["direction"]] - diff[:, vi["feature"]]
        est[f"disconnect_gap_{score}"] = _estimate(gg[0], gg[1:], n_iss, "score/alpha")
    slopes = pl.DataFrame(slope_rows, schema={
        "model": _S, "vector": _S, "family": _S, "score": _S, "slope": _F, "lo": _F, "hi": _F,
        "n": _I, "alpha_max": _F})
    disconnect = pl.DataFrame(dis_rows, schema={
        "vector": _S, "family": _S, "score": _S, "null_family": _S, "n_null": _I,
        "difference": _F, "lo": _F, "hi": _F, "null_mean": _F, "null_sd": _F,
        "null_share_below": _F, "gap": _F, "gap_lo": _F, "gap_hi": _F, "n": _I,
        "alpha_max": _F})
    return {"slopes": slopes, "disconnect": disconnect, "estimates": est}


def dose_response(scores: pl.DataFrame, score: str, *, n_boot: int = 2000,
                  seed: int = 0) -> pl.DataFrame:
    """Mean score per model x vector x alpha (vectors under test and each null family
    pooled), issue-bootstrap interval. Columns: model, vector, alpha, score, mean, lo, hi,
    n (issues), n_rows (valid rows), n_failed (rows without a valid score)."""
    d = scores.with_columns(pl.col("vector").map_elements(vector_family, pl.String))
    d = d.with_columns((pl.col(score).is_not_null() & pl.col(score).is_finite()).alias("_ok"))
    rows = []
    for (m, v, a), g in d.group_by(["model", "vector", "alpha"], maintain_order=True):
        ok = g.filter(pl.col("_ok"))
        # sorted: the bootstrap weights and the sum follow row order, which group_by
        # does not fix (two runs must give the same bits)
        q = (ok.group_by("question_id").agg(pl.col(score).mean(), pl.col("issue").first())
             .sort("question_id"))
        if q.height:
            W = _issue_weights(q["issue"].to_numpy(), n_boot, seed)
            y = q[score].to_numpy()
            means = (W @ y) / W.sum(1)
            e = _estimate(means[0], means[1:], q["issue"].n_unique(), score)
        else:
            e = Estimate(math.nan, math.nan, math.nan, 0, score)
        rows.append({"model": m, "vector": v, "alpha": a, "score": score, "mean": e.value,
                     "lo": e.lo, "hi": e.hi, "n": e.n, "n_rows": ok.height,
                     "n_failed": g.height - ok.height})
    return pl.DataFrame(rows, schema={"model": _S, "vector": _S, "alpha": _F, "score": _S,
                                      "mean": _F, "lo": _F, "hi": _F, "n": _I, "n_rows": _I,
                                      "n_failed": _I}).sort(["model", "vector", "alpha"])


# --------------------------------------------------------------------------- primes


def _wording_weights(wordings: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot + 1, n_rows] weights resampling the identity wordings (p*) and, independently,
    the persona wordings (persona:*); "none" rows weigh 1."""
    w = np.asarray(wordings, dtype=str)
    out = np.ones((n_boot + 1, len(w)))
    rng = np.random.default_rng(seed + 7919)
    persona = np.char.startswith(w, "persona:")
    for is_group in (np.char.startswith(w, "p") & ~persona, persona):
        uniq, inv = np.unique(w[is_group], return_inverse=True)
        if len(uniq) == 0:
            continue
        for b in range(1, n_boot + 1):
            c = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
            out[b, np.flatnonzero(is_group)] = c[inv]
    return out


def _wmean(W: np.ndarray, y: np.ndarray, sel: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return (W[:, sel] @ y[sel]) / W[:, sel].sum(1)


def prime_contrasts(primes: pl.DataFrame, score: str, *, n_boot: int = 2000,
                    seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Estimate]]:
    """(means per model x condition, effects per model, headline estimates) of one score.

    Rows without a valid score are left out of the means and counted in ``n_failed``.
    Effects: right - left (pooled over wordings), Cohen's d, persona - none. The bootstrap
    resamples issues and wordings independently (weights multiply).
    """
    for c in ("condition", "wording", "issue", "question_id", score):
        if c not in primes.columns:
            raise ValueError(f"identity-prime table has no {c!r} column")
    means, effects, est = [], [], {}
    models = sorted(set(primes["model"].to_list()))
    for m in models:
        g = primes.filter(pl.col("model") == m)
        ok = (g[score].is_not_null() & g[score].is_finite()).to_numpy()
        g, n_all = g.filter(pl.Series(ok)), g.group_by("condition").len()
        failed = dict(n_all.iter_rows())
        y = g[score].to_numpy().astype(float)
        cond = g["condition"].to_numpy()
        W = (_issue_weights(g["issue"].to_numpy(), n_boot, seed)
             * _wording_weights(g["wording"].to_numpy(), n_boot, seed))
        n_iss = g["issue"].n_unique()
        mean_of = {}
        for c in PRIME_CONDITIONS:
            sel = cond == c
            if not sel.any():
                continue
            mean_of[c] = mv = _wmean(W, y, sel)
            e = _estimate(mv[0], mv[1:], g.filter(pl.Series(sel))["issue"].n_unique(), score)
            means.append({"model": m, "condition": c, "score": score, "mean": e.value,
                          "lo": e.lo, "hi": e.hi, "n": e.n, "n_rows": int(sel.sum()),
                          "n_failed": failed.get(c, 0) - int(sel.sum())})
        row = {"model": m, "score": score}
        if {"left", "right"} <= set(mean_of):
            eff = mean_of["right"] - mean_of["left"]
            r, left = cond == "right", cond == "left"
            with np.errstate(all="ignore"):
                vr = _wmean(W, y * y, r) - mean_of["right"] ** 2
                vl = _wmean(W, y * y, left) - mean_of["left"] ** 2
                d = eff / np.sqrt((vr + vl) / 2)
            e, dd = _estimate(eff[0], eff[1:], n_iss, score), _estimate(d[0], d[1:], n_iss,
                                                                         "Cohen's d")
            row.update(effect=e.value, effect_lo=e.lo, effect_hi=e.hi, cohens_d=dd.value,
                       d_lo=dd.lo, d_hi=dd.hi, n=e.n,
                       n_wordings=int(g.filter(pl.col("condition").is_in(["left", "right"]))
                                      ["wording"].n_unique()))
            role = {"base": "base", "instruct": "instruct"}.get(m)
            if role:
                est[f"prime_effect_{role}_{score}"] = e
                est[f"prime_cohens_d_{role}_{score}"] = dd
        if {"persona", "none"} <= set(mean_of):
            ps = mean_of["persona"] - mean_of["none"]
            e = _estimate(ps[0], ps[1:], n_iss, score)
            row.update(persona_shift=e.value, persona_lo=e.lo, persona_hi=e.hi)
            if m in MODEL_ROLES:
                est[f"prime_persona_shift_{m}_{score}"] = e
        effects.append(row)
    mschema = {"model": _S, "condition": _S, "score": _S, "mean": _F, "lo": _F, "hi": _F,
               "n": _I, "n_rows": _I, "n_failed": _I}
    eschema = {"model": _S, "score": _S, "effect": _F, "effect_lo": _F, "effect_hi": _F,
               "cohens_d": _F, "d_lo": _F, "d_hi": _F, "n": _I, "n_wordings": _I,
               "persona_shift": _F, "persona_lo": _F, "persona_hi": _F}
    return (pl.DataFrame(means, schema=mschema).sort(["model", "condition"]),
            pl.DataFrame(effects, schema=eschema), est)


# --------------------------------------------------------------------------- judge failures


def judge_failures(steer: pl.DataFrame, primes: pl.DataFrame) -> pl.DataFrame:
    """Judge failures per cell: study (steering/primes), model, vector (or prime condition),
    alpha (null for primes), n, n_failed, failure_rate. "no judge configured" rows are not
    failures and are left out. Null-family vectors are pooled per family."""
    parts = []
    for study, df, cell in (("steering", steer, "vector"), ("primes", primes, "condition")):
        if "judge_ok" not in df.columns or df.height == 0:
            continue
        d = df.filter(pl.col("judge_error").is_null() | (pl.col("judge_error") != NO_JUDGE))
        if cell == "vector":
            d = d.with_columns(pl.col("vector").map_elements(vector_family, pl.String))
            keys = ["model", "vector", "alpha"]
        else:
            d = d.with_columns(pl.col("condition").alias("vector"), pl.lit(None, _F).alias(
                "alpha"))
            keys = ["model", "vector", "alpha"]
        parts.append(d.group_by(keys).agg(pl.len().alias("n"),
                                          (~pl.col("judge_ok")).sum().alias("n_failed"))
                     .with_columns(pl.lit(study).alias("study")))
    schema = {"study": _S, "model": _S, "vector": _S, "alpha": _F, "n": _I, "n_failed": _I,
              "failure_rate": _F}
    if not parts:
        return pl.DataFrame(schema=schema)
    t = pl.concat(parts, how="diagonal_relaxed").with_columns(
        (pl.col("n_failed") / pl.col("n")).alias("failure_rate"))
    return t.select(list(schema)).cast(schema).sort(["study", "model", "vector", "alpha"])


# --------------------------------------------------------------------------- headline


def analyse(
    steer: pl.DataFrame,
    primes: pl.DataFrame,
    vectors: pl.DataFrame | None = None,
    *,
    stance_auc: Estimate | None = None,
    settings: SteeringSettings | None = None,
    scores: Sequence[str] = SCORES,
    base_model: str = "base",
    instruct_model: str = "instruct",
) -> dict:
    """Every table and headline estimate of one pair.

    Returns {"dose", "slopes", "disconnect", "prime_means", "prime_effects",
    "degeneration", "judge_failures": tables, "estimates": {key: Estimate}}. A score with
    no valid rows adds no estimates; its failures still show in judge_failures.
    """
    settings = settings or SteeringSettings()
    kw = {"n_boot": settings.n_boot, "seed": settings.seed}
    steer = add_text_measures(steer, settings.degenerate_text_share)
    degen = degeneration_table(steer)
    out = {k: [] for k in ("dose", "slopes", "disconnect", "prime_means", "prime_effects")}
    est: dict[str, Estimate] = {}
    for s in scores:
        if s not in steer.columns:
            continue
        valid = steer.filter(pl.col(s).is_not_null() & pl.col(s).is_finite())
        out["dose"].append(dose_response(steer, s, **kw))
        if valid.height and valid["model"].n_unique() == 2:
            c = steering_contrast(steer, s, degen, base_model=base_model,
                                  instruct_model=instruct_model,
                                  max_degenerate_rate=settings.max_degenerate_rate, **kw)
            out["slopes"].append(c["slopes"])
            out["disconnect"].append(c["disconnect"])
            est.update(c["estimates"])
        if s in primes.columns and primes.filter(pl.col(s).is_not_null()).height:
            pm, pe, pest = prime_contrasts(primes, s, **kw)
            out["prime_means"].append(pm)
            out["prime_effects"].append(pe)
            est.update({k.replace(f"_{base_model}_", "_base_")
                        .replace(f"_{instruct_model}_", "_instruct_"): v
                        for k, v in pest.items()})
    tables = {k: pl.concat(v) if v else None for k, v in out.items()}
    fails = judge_failures(steer, primes)
    if fails.height:
        n, f = int(fails["n"].sum()), int(fails["n_failed"].sum())
        rate = f / n
        # Wilson interval: the rows of a cell are not independent units, but the headline
        # rate is descriptive; the per-cell table is the accounting
        z = 1.959964
        den = 1 + z * z / n
        mid = (rate + z * z / (2 * n)) / den
        half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / den
        est["judge_failure_rate"] = Estimate(rate, mid - half, mid + half, n, "share",
                                             "Wilson 95% over generations")
        est["judge_failure_rate_max_cell"] = Estimate(float(fails["failure_rate"].max()),
                                                      math.nan, math.nan, fails.height,
                                                      "share", "maximum over cells")
    if vectors is not None and "feature" in vectors["vector"].to_list():
        r = vectors.filter(pl.col("vector") == "feature").row(0, named=True)
        est["feature_vector_cos_partisan"] = Estimate(r["cos_partisan"], math.nan, math.nan,
                                                      len(r["features"]), "cosine",
                                                      "descriptive")
    if stance_auc is not None:
        est["stance_classifier_auc"] = stance_auc
    unknown = set(est) - set(HEADLINE_KEYS)
    if unknown:
        raise AssertionError(f"undocumented steering headline keys {sorted(unknown)}")
    return {**tables, "degeneration": degen, "judge_failures": fails, "estimates": est}


__all__ = [
    "add_text_measures",
    "alpha_window",
    "analyse",
    "degeneration_table",
    "dose_response",
    "judge_failures",
    "prime_contrasts",
    "steering_contrast",
]


def _headline_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    null_of = {"direction": "random directions", "direction_instruct": "random directions",
               "feature": "random non-policy feature sets"}
    for s in SCORES:
        for role in MODEL_ROLES:
            for v in VECTOR_KINDS:
                keys[f"steering_slope_{role}_{v}_{s}"] = (
                    f"{role} model: slope of the {s} partisanship score per unit alpha when "
                    f"steering with the {v} vector (alpha in the base model's typical residual "
                    "norm; fit over the alphas where neither model degenerates)"
                )
                keys[f"steering_slope_vs_null_{role}_{v}_{s}"] = (
                    f"{role} model: {v}-steering slope of the {s} score minus the mean slope of "
                    f"its null ({null_of[v]}) (> 0: moves output beyond a random vector)"
                )
            keys[f"steering_slope_{role}_random_{s}"] = (
                f"{role} model: mean {s}-score slope over the random-direction null vectors"
            )
            keys[f"steering_slope_{role}_random_features_{s}"] = (
                f"{role} model: mean {s}-score slope over the random-feature-set null vectors"
            )
        for v in VECTOR_KINDS:
            keys[f"disconnect_ratio_{v}_{s}"] = (
                f"{v} vector, {s} score: instruct minus base steering slope (name kept from "
                "the former instruct/base ratio; now a difference, < 0: instruct moves less)"
            )
            keys[f"disconnect_null_gap_{v}_{s}"] = (
                f"{v} vector, {s} score: instruct-minus-base slope difference minus the mean "
                f"of that difference over its null ({null_of[v]}) (< 0: a disconnect beyond "
                "what a random vector shows)"
            )
        keys[f"disconnect_gap_{s}"] = (
            f"{s} score: instruct-minus-base slope difference of the direction vector minus "
            "that of the feature vector (> 0: instruct follows the direction more than the "
            "features, relative to base)"
        )
        for role in MODEL_ROLES:
            keys[f"prime_effect_{role}_{s}"] = (
                f"{role} model: mean {s} score of right-primed minus left-primed answers, "
                "over every prime wording (questions and wordings resampled)"
            )
            keys[f"prime_cohens_d_{role}_{s}"] = (
                f"{role} model: Cohen's d of right- vs left-primed {s} scores"
            )
            keys[f"prime_persona_shift_{role}_{s}"] = (
                f"{role} model: mean {s} score under a non-partisan persona prime minus no "
                "prime (the control: about 0)"
            )
    keys["judge_failure_rate"] = (
        "share of generations whose judge reply could not be scored (all cells)"
    )
    keys["judge_failure_rate_max_cell"] = (
        "largest judge failure share over the (model, vector, alpha) and (model, prime "
        "condition) cells (table judge_failures.parquet); n = cells"
    )
    keys["feature_vector_cos_partisan"] = (
        "cosine of the feature steering vector with the base partisan direction; n = features"
    )
    keys["stance_classifier_auc"] = (
        "issue-held-out AUC (right vs left statements) of the stance-classifier judge"
    )
    return keys


HEADLINE_KEYS: dict[str, str] = _headline_keys()
"""Stable headline keys of the steering study (per model pair) and what each means."""
