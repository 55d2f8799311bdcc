"""SEAL's analysis (Revel et al., 2024; PAPERS.md C): the code of rule analyse_rewards.

Two reward models score every chosen and rejected transcript of a preference
dataset: "pre" (not trained on it) and "post" (trained on it). With per-text
feature labels (:mod:`rlhf_audit.labelling`) this module measures:

- agreement with the human preference, 1[r(chosen) > r(rejected)], pre and
  post, and the pre -> post alignment regimes. An exact tie r(chosen) ==
  r(rejected) is neither agreement nor disagreement: tied pairs are left out
  of that reward model's shares and counted apart (headline n_ties_pre/post);
- alignment resistance (share of pairs the post RM still gets wrong), overall
  and per LM-labeller preference stratum gamma;
- feature imprint: OLS of reward on the feature labels at the text level (two
  rows per pair) with pair-clustered CR1 standard errors and Bonferroni
  correction, for post, pre and the shift post - pre;
- the reward-shift angle theta per pair and its regression on the chosen- and
  rejected-text features;
- alignment robustness on rewritten pairs: agreement before/after, Pearson r
  of original vs rewritten rewards, semantic similarity, and a linear
  probability model of "became misaligned" on the label changes (original
  minus rewritten label per side, SEAL's signed encoding, over every
  rewritten pair by default).

The pairs table every metric takes has one row per pair::

    pair_id, r_pre_chosen, r_pre_rejected, r_post_chosen, r_post_rejected,
    chosen_<feature>..., rejected_<feature>...   (labels; nulls = missing)

Sign convention of theta: the reward vector of a pair is u = (r_pre(chosen),
r_pre(rejected)) before and v = (r_post(chosen), r_post(rejected)) after.
theta is the signed angle from u to v in **degrees**, counter-clockwise
positive, in (-180, 180]. With r(chosen) on the x axis the agreement region is
below the diagonal, so a positive theta turns the pair toward favouring the
rejected text and a negative theta toward favouring the chosen text. This is
the convention of SEAL's analysis code (sign of the 2-D cross product u x v).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as sps
from scipy.linalg import cho_factor, cho_solve

from rlhf_audit.labelling import DEFAULT_FEATURES, SIDES
from rlhf_audit.stats import Estimate, bootstrap, correlation_undefined, pearson

log = logging.getLogger(__name__)

REWARD_COLUMNS = ("r_pre_chosen", "r_pre_rejected", "r_post_chosen", "r_post_rejected")
REGIMES: dict[str, str] = {
    "stayed_aligned": "agreed with the human preference before and after training",
    "got_aligned": "disagreed before training, agrees after",
    "resisted": "disagreed before and after training",
    "reversed": "agreed before training, disagrees after",
}
GAMMA_STRATA: dict[str, str] = {
    "chosen_better": "the LM labeller ranks the chosen text above the rejected one",
    "rejected_better": "the LM labeller ranks the rejected text above the chosen one",
    "indifferent": "the LM labeller ranks both texts the same",
}
IMPRINT_OUTCOMES = ("post", "pre", "shift")
ROBUSTNESS_POPULATIONS = ("all", "correct_before")
FLIP_ENCODINGS = ("signed", "unsigned")


@dataclass(frozen=True)
class SealSettings:
    """Settings of the SEAL analysis."""

    features: tuple[str, ...] = DEFAULT_FEATURES
    """Feature labels used as regressors (label columns chosen_<f>, rejected_<f>)."""
    target_features: tuple[str, ...] = ("helpful", "harmless", "honest", "coherent")
    """Features the alignment dataset is meant to instil (desired values)."""
    spoiler_features: tuple[str, ...] = ("sentiment", "eloquent", "creative", "anthropomorphic")
    """Features a reward model may pick up inadvertently (undesired or irrelevant)."""
    exclude_from_regression: tuple[str, ...] = ()
    """Features left out of every regression (e.g. near-collinear ones)."""
    gamma_features: tuple[str, str] = ("harmless", "helpful")
    """(first, second) labels ranking a text: [1,1] > [1,0] > [0,1] > [0,0]."""
    n_boot: int = 2000
    """Bootstrap replicates for every interval."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    confidence: float = 0.95
    """Level of every interval (before any Bonferroni adjustment)."""
    robustness_rm: str = "post"
    """Reward model ('pre' or 'post') whose rewrite-induced misalignment the LPM models."""
    robustness_population: str = "all"
    """Rows of the flip LPM: 'all' (every rewritten pair, as SEAL's rewriting notebook) or
    'correct_before' (pairs the RM got right before rewriting, so the coefficients are
    changes in P(misaligned after | aligned before))."""
    flip_encoding: str = "signed"
    """Regressors of the flip LPM: 'signed' (original minus rewritten label per side, as
    SEAL; sentiment effects are directional) or 'unsigned' (1 where the label changed)."""
    vif_threshold: float | None = 10.0
    """Before the imprint regression, features are dropped one at a time (highest VIF
    first) while any VIF exceeds this; None keeps every feature (the VIFs are still
    reported)."""

    def __post_init__(self):
        if self.robustness_rm not in ("pre", "post"):
            raise ValueError(f"robustness_rm must be 'pre' or 'post', got {self.robustness_rm!r}")
        if self.robustness_population not in ROBUSTNESS_POPULATIONS:
            raise ValueError(f"robustness_population must be one of {ROBUSTNESS_POPULATIONS}, "
                             f"got {self.robustness_population!r}")
        if self.flip_encoding not in FLIP_ENCODINGS:
            raise ValueError(f"flip_encoding must be one of {FLIP_ENCODINGS}, got "
                             f"{self.flip_encoding!r}")
        if self.vif_threshold is not None and not self.vif_threshold > 1:
            raise ValueError(f"vif_threshold must exceed 1 (or be null), got {self.vif_threshold}")
        if len(self.gamma_features) != 2:
            raise ValueError("gamma_features must name two features (first, second)")
        for name in ("target_features", "spoiler_features", "exclude_from_regression",
                     "gamma_features"):
            unknown = sorted(set(getattr(self, name)) - set(self.features))
            if unknown:
                raise ValueError(f"{name}: {unknown} are not in features {list(self.features)}")
        both = sorted(set(self.target_features) & set(self.spoiler_features))
        if both:
            raise ValueError(f"{both} are listed as both target and spoiler features")
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must lie in (0, 1)")

    @property
    def regressors(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f not in self.exclude_from_regression)

    def role(self, feature: str) -> str:
        """'target', 'spoiler' or 'other'."""
        if feature in self.target_features:
            return "target"
        if feature in self.spoiler_features:
            return "spoiler"
        return "other"


def assemble_pairs(pre: pl.DataFrame, post: pl.DataFrame,
                   labels: pl.DataFrame | None = None) -> pl.DataFrame:
    """The pairs table from pre and post scores (:func:`score_pairs`) and wide labels.

    ``labels`` is :func:`rlhf_audit.labelling.labels_wide` output. Every
    pair_id must appear in all inputs; the error lists the first few that don't.
    """
    def ren(df, rm):
        return df.select(pl.col("pair_id").cast(pl.String),
                         pl.col("r_chosen").alias(f"r_{rm}_chosen"),
                         pl.col("r_rejected").alias(f"r_{rm}_rejected"))

    a, b = ren(pre, "pre"), ren(post, "post")
    _same_ids(a, b, "pre scores", "post scores")
    out = a.join(b, on="pair_id", how="inner", maintain_order="left")
    if labels is not None:
        lab = labels.with_columns(pl.col("pair_id").cast(pl.String))
        _same_ids(out, lab, "scores", "labels")
        out = out.join(lab, on="pair_id", how="inner", maintain_order="left")
    return out


def _same_ids(a: pl.DataFrame, b: pl.DataFrame, na: str, nb: str) -> None:
    for df, name in ((a, na), (b, nb)):
        dup = df.filter(pl.col("pair_id").is_duplicated())["pair_id"].unique().to_list()
        if dup:
            raise ValueError(f"{name}: pair_id(s) {sorted(dup)[:5]} appear more than once")
    sa, sb = set(a["pair_id"].to_list()), set(b["pair_id"].to_list())
    if sa != sb:
        only_a, only_b = sorted(sa - sb)[:5], sorted(sb - sa)[:5]
        raise ValueError(f"{na} and {nb} cover different pairs: only in {na}: {only_a}, only in "
                         f"{nb}: {only_b} (first 5 shown); score and label the same pairs")


# =========================================================================== agreement


def _check_rewards(pairs: pl.DataFrame, cols: Sequence[str] = REWARD_COLUMNS) -> None:
    missing = [c for c in ("pair_id", *cols) if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs table lacks column(s) {missing}; see the rlhf_audit.reward."
                         "analysis docstring")
    if pairs.height == 0:
        raise ValueError("pairs table is empty")
    for c in cols:
        bad = pairs.filter(pl.col(c).is_null() | ~pl.col(c).cast(pl.Float64).is_finite())
        if bad.height:
            raise ValueError(f"pairs table: column {c} is null or not finite for pair_id "
                             f"{bad['pair_id'][0]!r} ({bad.height} rows); rescore those pairs")


def agreement_indicator(pairs: pl.DataFrame, rm: str) -> np.ndarray:
    """1[r_rm(chosen) > r_rm(rejected)] per pair, float ``[n_pairs]``; NaN for an exact tie.

    A tie is neither agreement nor disagreement; every share below leaves tied
    pairs out of its denominator and :func:`tie_counts` reports them.
    """
    c = pairs[f"r_{rm}_chosen"].to_numpy().astype(float)
    r = pairs[f"r_{rm}_rejected"].to_numpy().astype(float)
    out = (c > r).astype(float)
    out[c == r] = np.nan
    return out


def tie_counts(pairs: pl.DataFrame) -> dict[str, int]:
    """Pairs whose chosen and rejected rewards are exactly equal, per reward model."""
    _check_rewards(pairs)
    return {rm: int(np.isnan(agreement_indicator(pairs, rm)).sum()) for rm in ("pre", "post")}


def _mean(a):
    return float(np.mean(a)) if len(a) else float("nan")


def _decided(*arrays: np.ndarray) -> np.ndarray:
    """Mask of rows where no array is NaN (a tie in any of them)."""
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= ~np.isnan(a)
    return ok


def _share(a: np.ndarray, kw: Mapping, what: str) -> Estimate:
    a = a[~np.isnan(a)]
    if not len(a):
        return Estimate(math.nan, math.nan, math.nan, 0, "share", f"undefined: no {what}")
    return bootstrap(_mean, a, unit="share", **kw)


def agreement(pairs: pl.DataFrame, settings: SealSettings = SealSettings()) -> dict[str, Estimate]:
    """agreement_pre, agreement_post (shares of untied pairs) and agreement_gain (post - pre,
    paired, over pairs neither model ties)."""
    _check_rewards(pairs)
    pre, post = agreement_indicator(pairs, "pre"), agreement_indicator(pairs, "post")
    kw = {"n_boot": settings.n_boot, "seed": settings.seed, "confidence": settings.confidence}
    both = _decided(pre, post)
    return {
        "agreement_pre": _share(pre, kw, "untied pair"),
        "agreement_post": _share(post, kw, "untied pair"),
        "agreement_gain": bootstrap(lambda a, b: _mean(a) - _mean(b), post[both], pre[both],
                                    unit="share", **kw),
    }


def regime_labels(pairs: pl.DataFrame) -> np.ndarray:
    """Alignment regime of each pair, pre -> post: one of REGIMES' keys, or None where
    either reward model ties the pair, ``[n_pairs]``."""
    pre, post = agreement_indicator(pairs, "pre"), agreement_indicator(pairs, "post")
    out = np.full(len(pre), None, dtype=object)
    out[(pre == 1) & (post == 1)] = "stayed_aligned"
    out[(pre == 0) & (post == 1)] = "got_aligned"
    out[(pre == 0) & (post == 0)] = "resisted"
    out[(pre == 1) & (post == 0)] = "reversed"
    return out


def alignment_regimes(pairs: pl.DataFrame,
                      settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Shares of the four regimes: DataFrame[regime, description, count, share, lo, hi,
    n_pairs, n_tied].

    Shares are over the pairs neither model ties (n_pairs); n_tied counts the
    others. Each share has a percentile bootstrap interval over pairs.
    """
    _check_rewards(pairs)
    lab = regime_labels(pairs)
    decided = np.array([x is not None for x in lab])
    lab = lab[decided]
    rows = []
    for reg, desc in REGIMES.items():
        ind = (lab == reg).astype(np.int8)
        e = bootstrap(_mean, ind, n_boot=settings.n_boot, seed=settings.seed,
                      confidence=settings.confidence, unit="share")
        rows.append({"regime": reg, "description": desc, "count": int(ind.sum()),
                     "share": e.value, "lo": e.lo, "hi": e.hi, "n_pairs": e.n,
                     "n_tied": int((~decided).sum())})
    return pl.DataFrame(rows, schema={"regime": pl.String, "description": pl.String,
                                      "count": pl.Int64, "share": pl.Float64, "lo": pl.Float64,
                                      "hi": pl.Float64, "n_pairs": pl.Int64, "n_tied": pl.Int64})


# =========================================================================== gamma, resistance


def _label_array(pairs: pl.DataFrame, col: str) -> np.ndarray:
    if col not in pairs.columns:
        raise ValueError(f"pairs table lacks label column {col!r}; join the wide labels "
                         "(rlhf_audit.labelling.labels_wide) into it")
    return pairs[col].cast(pl.Float64).to_numpy()


def labeller_preference(pairs: pl.DataFrame,
                        gamma_features: tuple[str, str] = ("harmless", "helpful")) -> np.ndarray:
    """The LM labeller's preference gamma per pair, ``[n_pairs]`` of str or None.

    A text's rank is its (first, second) labels ordered [1,1] > [1,0] > [0,1]
    > [0,0], i.e. 2*first + second. gamma = 'chosen_better', 'rejected_better'
    or 'indifferent'; None where a needed label is missing.
    """
    a, b = gamma_features
    rank = {}
    for side in SIDES:
        x, y = _label_array(pairs, f"{side}_{a}"), _label_array(pairs, f"{side}_{b}")
        for name, v in ((a, x), (b, y)):
            ok = np.isnan(v) | np.isin(v, (0, 1))
            if not ok.all():
                raise ValueError(f"{side}_{name} must be 0/1 for gamma, got {v[~ok][0]} (pair_id "
                                 f"{pairs['pair_id'][int(np.flatnonzero(~ok)[0])]!r})")
        rank[side] = 2 * x + y
    rc, rr = rank["chosen"], rank["rejected"]
    out = np.full(len(rc), None, dtype=object)
    ok = ~(np.isnan(rc) | np.isnan(rr))
    out[ok & (rc > rr)] = "chosen_better"
    out[ok & (rc < rr)] = "rejected_better"
    out[ok & (rc == rr)] = "indifferent"
    return out


def alignment_resistance(pairs: pl.DataFrame,
                         settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Share of pairs the post RM gets wrong, overall and per gamma stratum.

    DataFrame[stratum, description, n_pairs, resistance, lo, hi]; strata 'all'
    then GAMMA_STRATA's keys, then 'gap' (rejected_better minus chosen_better,
    bootstrapped over all pairs); pairs whose gamma labels are missing count
    only in 'all' (their number is in the 'labels_missing' row, with no
    estimate). Pairs the post RM ties are neither right nor wrong and are left
    out of every stratum.
    """
    _check_rewards(pairs)
    wrong = 1 - agreement_indicator(pairs, "post")
    decided = ~np.isnan(wrong)
    kw = {"n_boot": settings.n_boot, "seed": settings.seed, "confidence": settings.confidence}
    e = _share(wrong, kw, "untied pair")
    rows = [{"stratum": "all", "description": "every pair", "n_pairs": e.n, "resistance": e.value,
             "lo": e.lo, "hi": e.hi}]
    have_labels = all(f"{s}_{f}" in pairs.columns for s in SIDES for f in settings.gamma_features)
    if have_labels:
        gamma = labeller_preference(pairs, settings.gamma_features)
        for st, desc in GAMMA_STRATA.items():
            e = _share(wrong[(gamma == st) & decided], kw, f"{st} pair")
            rows.append({"stratum": st, "description": desc, "n_pairs": e.n,
                         "resistance": e.value, "lo": e.lo, "hi": e.hi})
        code = np.select([gamma == "rejected_better", gamma == "chosen_better"], [1, 0], -1)
        sel = decided & (code >= 0)
        w, c = wrong[sel], code[sel]

        def gap(w, c):
            return _mean(w[c == 1]) - _mean(w[c == 0])

        e = bootstrap(gap, w, c, unit="share", **kw) if (c == 1).any() and (c == 0).any() \
            else Estimate(math.nan, math.nan, math.nan, int(sel.sum()), "share",
                          "undefined: a gamma stratum is empty")
        rows.append({"stratum": "gap", "description": (
            "resistance among rejected_better minus among chosen_better pairs"),
            "n_pairs": e.n, "resistance": e.value, "lo": e.lo, "hi": e.hi})
        n_miss = int(sum(g is None for g in gamma))
        rows.append({"stratum": "labels_missing", "description": "pairs without gamma labels",
                     "n_pairs": n_miss, "resistance": math.nan, "lo": math.nan, "hi": math.nan})
    return pl.DataFrame(rows, schema={"stratum": pl.String, "description": pl.String,
                                      "n_pairs": pl.Int64, "resistance": pl.Float64,
                                      "lo": pl.Float64, "hi": pl.Float64})


# =========================================================================== regression


def ols_clustered(X: np.ndarray, y: np.ndarray, names: Sequence[str],
                  groups: Sequence | np.ndarray | None = None, *, add_intercept: bool = True,
                  confidence: float = 0.95, bonferroni: bool = True,
                  collinearity_tol: float = 1e-10) -> pl.DataFrame:
    """OLS with cluster-robust (CR1) standard errors and Bonferroni-adjusted tests.

    ``X`` is ``[n_obs, n_terms]`` (no constant; one is added as 'intercept'),
    ``y`` ``[n_obs]``, ``groups`` one cluster label per row (None: every row
    its own cluster, which makes CR1 equal to HC1). V = G/(G-1) * (n-1)/(n-k)
    * (X'X)^-1 (sum_g X_g'u_g u_g'X_g) (X'X)^-1, as statsmodels' cluster
    covariance; tests and intervals use Student t with G - 1 df. Columns that
    are constant or a linear combination of earlier ones are dropped (reported
    with dropped=True and null estimates). Bonferroni multiplies p by the
    number m of estimated non-intercept terms and widens the interval to level
    1 - (1 - confidence)/m.

    Returns DataFrame[term, coef, se, t, p, lo, hi, p_bonferroni, lo_bonferroni,
    hi_bonferroni, significant (Bonferroni p < 1 - confidence), dropped, n_obs,
    n_clusters].
    """
    fit = _ols_fit(X, y, names, groups, add_intercept=add_intercept,
                   collinearity_tol=collinearity_tol)
    all_names, keep, beta, cov = fit["names"], fit["keep"], fit["beta"], fit["cov"]
    n, n_clusters = fit["n"], fit["n_clusters"]
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    df = n_clusters - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        t = beta / se
    p = 2 * sps.t.sf(np.abs(t), df)
    alpha = 1 - confidence
    q1 = sps.t.ppf(1 - alpha / 2, df)
    est_terms = [j for j, name in enumerate(np.array(all_names)[keep]) if name != "intercept"]
    m = len(est_terms) if bonferroni else 1
    qb = sps.t.ppf(1 - alpha / (2 * max(m, 1)), df)
    rows = []
    pos = {j: i for i, j in enumerate(keep)}
    for j, name in enumerate(all_names):
        base = {"term": name, "n_obs": n, "n_clusters": n_clusters}
        if j not in pos:
            rows.append({**base, "dropped": True})
            continue
        i = pos[j]
        is_int = name == "intercept"
        pb = float(p[i]) if is_int else float(min(1.0, p[i] * m))
        qq = q1 if is_int else qb
        rows.append({**base, "coef": float(beta[i]), "se": float(se[i]), "t": float(t[i]),
                     "p": float(p[i]), "lo": float(beta[i] - q1 * se[i]),
                     "hi": float(beta[i] + q1 * se[i]), "p_bonferroni": pb,
                     "lo_bonferroni": float(beta[i] - qq * se[i]),
                     "hi_bonferroni": float(beta[i] + qq * se[i]),
                     "significant": bool(pb < alpha), "dropped": False})
    schema = {"term": pl.String, "coef": pl.Float64, "se": pl.Float64, "t": pl.Float64,
              "p": pl.Float64, "lo": pl.Float64, "hi": pl.Float64, "p_bonferroni": pl.Float64,
              "lo_bonferroni": pl.Float64, "hi_bonferroni": pl.Float64,
              "significant": pl.Boolean, "dropped": pl.Boolean, "n_obs": pl.Int64,
              "n_clusters": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def _ols_fit(X, y, names: Sequence[str], groups=None, *, add_intercept: bool = True,
             collinearity_tol: float = 1e-10) -> dict:
    """OLS coefficients and CR1 covariance of the independent columns (see ols_clustered)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != len(y) or X.shape[1] != len(names):
        raise ValueError(f"X must be [n_obs, {len(names)}] with n_obs = len(y) = {len(y)}; "
                         f"got {X.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite; drop rows with missing labels first")
    n = len(y)
    all_names = (["intercept"] if add_intercept else []) + list(names)
    if add_intercept:
        X = np.column_stack([np.ones(n), X])
    keep = _independent_columns(X, collinearity_tol)
    dropped = [all_names[j] for j in range(X.shape[1]) if j not in keep]
    if dropped:
        log.info("OLS: dropped constant or collinear term(s) %s", dropped)
    Xk = X[:, keep]
    k = Xk.shape[1]
    if groups is None:
        inv = np.arange(n)
    else:
        g = np.asarray(groups)
        if len(g) != n:
            raise ValueError("groups must have one label per row")
        inv = np.unique(g, return_inverse=True)[1].ravel()
    n_clusters = int(inv.max()) + 1 if n else 0
    if n <= k or n_clusters < 2:
        raise ValueError(f"too few observations for OLS: {n} rows, {n_clusters} clusters, "
                         f"{k} terms")
    # Normal equations through a Cholesky factor (20x faster than QR at 3e5 x 15), with one
    # step of iterative refinement to recover the accuracy QR would give.
    gram = cho_factor(Xk.T @ Xk)
    beta = cho_solve(gram, Xk.T @ y)
    resid = y - Xk @ beta
    beta = beta + cho_solve(gram, Xk.T @ resid)
    resid = y - Xk @ beta
    bread = cho_solve(gram, np.eye(k))
    scores = Xk * resid[:, None]
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    summed = np.add.reduceat(scores[order], starts, axis=0)
    meat = summed.T @ summed
    corr = n_clusters / (n_clusters - 1) * (n - 1) / (n - k)
    cov = corr * bread @ meat @ bread
    return {"names": all_names, "keep": keep, "beta": beta, "cov": cov, "n": n,
            "n_clusters": n_clusters}


def _independent_columns(X: np.ndarray, tol: float) -> list[int]:
    """Indices of columns kept greedily in order while each adds rank (Gram-matrix test)."""
    gram = X.T @ X
    keep: list[int] = []
    for j in range(X.shape[1]):
        gjj = gram[j, j]
        if gjj <= 0:
            continue
        if keep:
            gk = gram[np.ix_(keep, keep)]
            v = gram[keep, j]
            resid = gjj - v @ np.linalg.solve(gk, v)
        else:
            resid = gjj
        if resid > tol * gjj:
            keep.append(j)
    return keep


def _complete_pairs(pairs: pl.DataFrame, cols: Sequence[str], what: str) -> pl.DataFrame:
    missing = [c for c in cols if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs table lacks label column(s) {missing[:6]} needed for {what}; "
                         "join the wide labels into it or remove the feature from settings")
    ok = pairs.drop_nulls(subset=list(cols))
    if ok.height < pairs.height:
        log.warning("%s: %d of %d pairs have missing labels and are left out", what,
                    pairs.height - ok.height, pairs.height)
    return ok


def variance_inflation(X: np.ndarray) -> np.ndarray:
    """VIF of each column of ``X`` ``[n_obs, k]``: 1 / (1 - R^2) of that column on the others
    (with an intercept), ``[k]``. inf for a column the others reproduce exactly, NaN for a
    constant column."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    gram = Xc.T @ Xc
    k = X.shape[1]
    out = np.full(k, np.nan)
    for j in range(k):
        gjj = gram[j, j]
        if gjj <= 1e-12 * max(1.0, float(np.abs(X[:, j]).max()) ** 2 * len(X)):
            continue
        others = [i for i in range(k) if i != j and gram[i, i] > 0]
        if others:
            g = gram[np.ix_(others, others)]
            v = gram[others, j]
            resid = gjj - v @ np.linalg.lstsq(g, v, rcond=None)[0]
        else:
            resid = gjj
        out[j] = np.inf if resid <= 1e-10 * gjj else gjj / resid
    return out


def _imprint_design(pairs: pl.DataFrame, feats: Sequence[str]) -> tuple[pl.DataFrame, np.ndarray]:
    cols = [f"{s}_{f}" for s in SIDES for f in feats]
    ok = _complete_pairs(pairs, cols, "feature imprint")
    X = np.vstack([ok.select([f"{s}_{f}" for f in feats]).cast(pl.Float64).to_numpy()
                   for s in SIDES]) if feats else np.zeros((2 * ok.height, 0))
    return ok, X


def collinearity_check(pairs: pl.DataFrame,
                       settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """VIF check of the imprint design (text level, both sides stacked) before the regression.

    Features in ``exclude_from_regression`` are left out first; then, while the
    largest VIF exceeds ``vif_threshold``, that feature is dropped and the VIFs
    recomputed (SEAL's authors dropped coherent and anthropomorphic this way).
    DataFrame[feature, role, vif_initial, vif_final (null if dropped), dropped,
    drop_step (1 = first dropped), reason, threshold].
    """
    _check_rewards(pairs)
    feats = list(settings.regressors)
    _, X = _imprint_design(pairs, feats)
    initial = dict(zip(feats, variance_inflation(X), strict=True)) if feats else {}
    kept = list(feats)
    steps: dict[str, int] = {}
    thr = settings.vif_threshold
    while thr is not None and len(kept) > 1:
        v = variance_inflation(X[:, [feats.index(f) for f in kept]])
        v = np.where(np.isnan(v), -np.inf, v)  # constant columns: the OLS drops them itself
        j = int(np.argmax(v))
        if not v[j] > thr:
            break
        steps[kept[j]] = len(steps) + 1
        log.info("collinearity: dropping %s (VIF %.3g > %g)", kept[j], v[j], thr)
        kept.pop(j)
    final = dict(zip(kept, variance_inflation(X[:, [feats.index(f) for f in kept]]),
                     strict=True)) if kept else {}
    rows = []
    for f in settings.features:
        if f in settings.exclude_from_regression:
            rows.append({"feature": f, "role": settings.role(f), "vif_initial": None,
                         "vif_final": None, "dropped": True, "drop_step": None,
                         "reason": "excluded_by_config", "threshold": thr})
            continue
        vi, vf = initial[f], final.get(f)
        reason = ("vif_above_threshold" if f in steps else
                  "constant" if np.isnan(vi) else "kept")
        rows.append({"feature": f, "role": settings.role(f),
                     "vif_initial": None if np.isnan(vi) else float(vi),
                     "vif_final": None if vf is None or np.isnan(vf) else float(vf),
                     "dropped": f in steps, "drop_step": steps.get(f), "reason": reason,
                     "threshold": thr})
    return pl.DataFrame(rows, schema={"feature": pl.String, "role": pl.String,
                                      "vif_initial": pl.Float64, "vif_final": pl.Float64,
                                      "dropped": pl.Boolean, "drop_step": pl.Int64,
                                      "reason": pl.String, "threshold": pl.Float64})


def imprint_features(settings: SealSettings, vif: pl.DataFrame | None) -> tuple[str, ...]:
    """Regressors of the imprint after the collinearity check (all regressors without one)."""
    if vif is None:
        return settings.regressors
    dropped = set(vif.filter(pl.col("dropped"))["feature"].to_list())
    return tuple(f for f in settings.regressors if f not in dropped)


def _contrast_row(fit: dict, weights: Mapping[str, float], term: str,
                  confidence: float) -> dict:
    names = np.array(fit["names"])[fit["keep"]].tolist()
    c = np.array([weights.get(nm, 0.0) for nm in names])
    base = {"term": term, "n_obs": fit["n"], "n_clusters": fit["n_clusters"], "dropped": False}
    est = float(c @ fit["beta"])
    se = float(np.sqrt(max(c @ fit["cov"] @ c, 0.0)))
    df = fit["n_clusters"] - 1
    q = sps.t.ppf(1 - (1 - confidence) / 2, df)
    t = est / se if se > 0 else math.nan
    p = float(2 * sps.t.sf(abs(t), df)) if se > 0 else math.nan
    # One pre-specified contrast: no multiplicity adjustment.
    return {**base, "coef": est, "se": se, "t": t, "p": p, "lo": est - q * se, "hi": est + q * se,
            "p_bonferroni": p, "lo_bonferroni": est - q * se, "hi_bonferroni": est + q * se,
            "significant": bool(p < 1 - confidence) if se > 0 else False}


CONTRAST_TERM = "target_minus_spoiler"


def feature_imprint(pairs: pl.DataFrame, settings: SealSettings = SealSettings(),
                    vif: pl.DataFrame | None = None) -> pl.DataFrame:
    """Feature imprint: reward ~ feature labels, text level, pair-clustered CR1, Bonferroni.

    Two rows per pair (the chosen and the rejected text, each with its own
    labels and reward); outcomes 'post' (r_post), 'pre' (r_pre) and 'shift'
    (r_post - r_pre). Features the collinearity check ``vif``
    (:func:`collinearity_check`, run here when not given) drops are left out
    and reported as dropped rows. Pairs with a missing label are left out
    (counted in n_pairs_excluded). Besides one row per term, a row with term
    'target_minus_spoiler' (role 'contrast') holds the mean imprint of the
    estimated target features minus that of the spoiler features, with its CR1
    interval (absent when either group has no estimated feature).

    Columns: outcome, term, role (target/spoiler/other/intercept/contrast),
    then those of :func:`ols_clustered`, then n_pairs_excluded.
    """
    _check_rewards(pairs)
    if vif is None:
        vif = collinearity_check(pairs, settings)
    feats = imprint_features(settings, vif)
    vif_dropped = [f for f in settings.regressors if f not in feats]
    ok, X = _imprint_design(pairs, settings.regressors)
    X = X[:, [settings.regressors.index(f) for f in feats]]
    n_excl = pairs.height - ok.height
    groups = np.concatenate([np.arange(ok.height)] * 2)
    r = {rm: np.concatenate([ok[f"r_{rm}_{s}"].cast(pl.Float64).to_numpy() for s in SIDES])
         for rm in ("pre", "post")}
    ys = {"post": r["post"], "pre": r["pre"], "shift": r["post"] - r["pre"]}
    tables = []
    for outcome in IMPRINT_OUTCOMES:
        t = ols_clustered(X, ys[outcome], feats, groups, confidence=settings.confidence)
        extra = [{"term": f, "dropped": True, "n_obs": 2 * ok.height, "n_clusters": ok.height}
                 for f in vif_dropped]
        fit = _ols_fit(X, ys[outcome], feats, groups)
        est = set(np.array(fit["names"])[fit["keep"]].tolist())
        tg = [f for f in settings.target_features if f in est]
        sp = [f for f in settings.spoiler_features if f in est]
        if tg and sp:
            w = {f: 1 / len(tg) for f in tg} | {f: -1 / len(sp) for f in sp}
            extra.append(_contrast_row(fit, w, CONTRAST_TERM, settings.confidence))
        if extra:
            t = pl.concat([t, pl.DataFrame(extra, schema=t.schema)])
        tables.append(t.with_columns(pl.lit(outcome).alias("outcome")))
    out = pl.concat(tables)
    roles = ({f: settings.role(f) for f in settings.regressors} |
             {"intercept": "intercept", CONTRAST_TERM: "contrast"})
    ols_cols = [c for c in out.columns if c not in ("outcome", "term")]
    return out.with_columns(pl.col("term").replace_strict(roles).alias("role"),
                            pl.lit(n_excl, dtype=pl.Int64).alias("n_pairs_excluded")).select(
        "outcome", "term", "role", *ols_cols, "n_pairs_excluded")


# =========================================================================== shift angle


def reward_shift_angle(r_pre_chosen, r_pre_rejected, r_post_chosen, r_post_rejected) -> np.ndarray:
    """Signed angle theta (degrees, CCW positive, (-180, 180]) from pre to post reward vectors.

    u = (r_pre_chosen, r_pre_rejected), v = (r_post_chosen, r_post_rejected),
    theta = atan2(u x v, u . v). NaN where u or v is the zero vector. Arrays
    ``[n_pairs]``.
    """
    ux, uy = np.asarray(r_pre_chosen, float), np.asarray(r_pre_rejected, float)
    vx, vy = np.asarray(r_post_chosen, float), np.asarray(r_post_rejected, float)
    theta = np.degrees(np.arctan2(ux * vy - uy * vx, ux * vx + uy * vy))
    theta = np.where(theta <= -180.0, 180.0, theta)
    zero = ((ux == 0) & (uy == 0)) | ((vx == 0) & (vy == 0))
    return np.where(zero, np.nan, theta)


def shift_angle_regression(pairs: pl.DataFrame, settings: SealSettings = SealSettings(),
                           vif: pl.DataFrame | None = None) -> pl.DataFrame:
    """theta (degrees) ~ chosen-text and rejected-text features, one row per pair.

    Terms 'chosen_<f>' and 'rejected_<f>' (role from the feature); robust HC1
    errors (each pair its own cluster), Bonferroni over all terms. Features the
    collinearity check ``vif`` dropped are left out, as SEAL's angle.R left the
    same ones out of both fits. Columns as :func:`ols_clustered` plus role and
    n_pairs_excluded.
    """
    _check_rewards(pairs)
    feats = imprint_features(settings, vif)
    cols = [f"{s}_{f}" for s in SIDES for f in feats]
    theta = reward_shift_angle(*(pairs[c].to_numpy() for c in REWARD_COLUMNS))
    ok = _complete_pairs(pairs.with_columns(pl.Series("theta_deg", theta).fill_nan(None)),
                         [*cols, "theta_deg"], "shift-angle regression")
    X = ok.select(cols).cast(pl.Float64).to_numpy()
    t = ols_clustered(X, ok["theta_deg"].to_numpy(), cols, None, confidence=settings.confidence)
    roles = {f"{s}_{f}": settings.role(f) for s in SIDES for f in feats} | \
        {"intercept": "intercept"}
    return t.with_columns(pl.col("term").replace_strict(roles).alias("role"),
                          pl.lit(pairs.height - ok.height, dtype=pl.Int64)
                          .alias("n_pairs_excluded"))


def pair_metrics(pairs: pl.DataFrame, settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Per-pair view: pair_id, agree_pre, agree_post (null for a tie), regime (null if
    either model ties), gamma (null if labels missing or absent), theta_deg."""
    _check_rewards(pairs)
    has = all(f"{s}_{f}" in pairs.columns for s in SIDES for f in settings.gamma_features)
    gamma = labeller_preference(pairs, settings.gamma_features) if has else \
        np.full(pairs.height, None, dtype=object)
    theta = reward_shift_angle(*(pairs[c].to_numpy() for c in REWARD_COLUMNS))
    return pl.DataFrame({
        "pair_id": pairs["pair_id"].cast(pl.String),
        "agree_pre": pl.Series(agreement_indicator(pairs, "pre")).fill_nan(None),
        "agree_post": pl.Series(agreement_indicator(pairs, "post")).fill_nan(None),
        "regime": pl.Series(regime_labels(pairs).tolist(), dtype=pl.String),
        "gamma": pl.Series(gamma.tolist(), dtype=pl.String),
        "theta_deg": theta,
    })


# =========================================================================== robustness


def semantic_similarity(original: np.ndarray, rewritten: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of embeddings ``[n_texts, d]`` -> ``[n_texts]``."""
    a, b = np.asarray(original, np.float64), np.asarray(rewritten, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must both be [n_texts, d]; got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("an embedding is the zero vector; cosine similarity is undefined")
    return np.einsum("ij,ij->i", a, b) / (na * nb)


def _matched(original: pl.DataFrame, rewritten: pl.DataFrame) -> tuple[pl.DataFrame,
                                                                         pl.DataFrame]:
    _check_rewards(original)
    _check_rewards(rewritten)
    ids = rewritten["pair_id"].cast(pl.String)
    if ids.is_duplicated().any():
        raise ValueError(f"rewritten pairs: pair_id {ids.filter(ids.is_duplicated())[0]!r} "
                         "appears more than once")
    known = set(original["pair_id"].cast(pl.String).to_list())
    unknown = [p for p in ids.to_list() if p not in known]
    if unknown:
        raise ValueError(f"rewritten pairs {unknown[:5]} are not in the original pairs table")
    orig = pl.DataFrame({"pair_id": ids}).join(
        original.with_columns(pl.col("pair_id").cast(pl.String)), on="pair_id", how="left",
        maintain_order="left")
    return orig, rewritten.with_columns(pl.col("pair_id").cast(pl.String))


_pearson = pearson
"""scipy.stats.pearsonr's r, NaN where it is undefined (:func:`rlhf_audit.stats.pearson`)."""


def _pearson_undefined(a: np.ndarray, b: np.ndarray) -> str | None:
    """Why Pearson r of ``a`` and ``b`` is undefined, or None when it is defined."""
    return correlation_undefined(a, b) or None


def correlation_estimate(x, y, groups=None, *, n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> Estimate:
    """Pearson r (scipy.stats) with a (cluster) percentile bootstrap interval.

    An undefined correlation (fewer than 3 values, or a constant variable) is
    reported as undefined, value NaN, with the reason in ``method``; never as 0.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    why = _pearson_undefined(x, y)
    n = len(np.unique(groups)) if groups is not None else len(x)
    if why:
        return Estimate(math.nan, math.nan, math.nan, n, "r", f"undefined: {why}")
    return bootstrap(_pearson, x, y, groups=groups, unit="r", n_boot=n_boot, seed=seed,
                     confidence=confidence)


def robustness_summary(original: pl.DataFrame, rewritten: pl.DataFrame,
                       settings: SealSettings = SealSettings(),
                       similarity: pl.DataFrame | None = None) -> dict[str, Estimate]:
    """Agreement before/after rewriting, reward correlation and semantic similarity.

    ``rewritten`` is a pairs table (same columns) for the rewritten subset;
    ``original`` the full pairs table. ``similarity`` has pair_id, sim_chosen,
    sim_rejected (cosines, e.g. from :func:`semantic_similarity`). Keys:
    agreement_{pre,post}_{original,rewritten,drop}: agreement on the originals
    of the rewritten subset (SEAL's 73.2% for post), on their rewrites (70.1%),
    and original minus rewritten (paired bootstrap over the pairs neither
    version ties); rewrite_reward_r{,_pre} (Pearson r of original vs rewritten
    rewards, both sides stacked, pair-cluster bootstrap) and
    rewrite_similarity (mean cosine over texts).
    """
    orig, rew = _matched(original, rewritten)
    kw = {"n_boot": settings.n_boot, "seed": settings.seed, "confidence": settings.confidence}
    out: dict[str, Estimate] = {}
    for rm in ("pre", "post"):
        a, b = agreement_indicator(orig, rm), agreement_indicator(rew, rm)
        both = _decided(a, b)
        out[f"agreement_{rm}_original"] = _share(a, kw, "untied original pair")
        out[f"agreement_{rm}_rewritten"] = _share(b, kw, "untied rewritten pair")
        out[f"agreement_{rm}_drop"] = bootstrap(lambda x, y: _mean(x) - _mean(y), a[both],
                                                b[both], unit="share", **kw)
        x = np.concatenate([orig[f"r_{rm}_{s}"].to_numpy() for s in SIDES]).astype(float)
        y = np.concatenate([rew[f"r_{rm}_{s}"].to_numpy() for s in SIDES]).astype(float)
        groups = np.concatenate([np.arange(orig.height)] * 2)
        key = "rewrite_reward_r" if rm == "post" else "rewrite_reward_r_pre"
        out[key] = correlation_estimate(x, y, groups, **kw)
    if similarity is not None:
        sim = pl.DataFrame({"pair_id": rew["pair_id"]}).join(
            similarity.with_columns(pl.col("pair_id").cast(pl.String)), on="pair_id",
            how="left", maintain_order="left")
        vals = np.concatenate([sim[f"sim_{s}"].cast(pl.Float64).to_numpy() for s in SIDES])
        groups = np.concatenate([np.arange(sim.height)] * 2)
        if np.isnan(vals).any():
            raise ValueError("similarity table lacks pair(s) "
                             f"{sim.filter(pl.col('sim_chosen').is_null())['pair_id'][:5]}")
        out["rewrite_similarity"] = bootstrap(_mean, vals, groups=groups, unit="cosine", **kw)
    return out


def flip_indicators(original: pl.DataFrame, rewritten: pl.DataFrame,
                    features: Sequence[str], encoding: str = "signed") -> pl.DataFrame:
    """pair_id, flip_<side>_<f> per rewritten pair (null where either label is missing).

    ``encoding`` 'signed' (SEAL's): original label minus rewritten label, so a
    chosen text whose sentiment turned from positive to neutral has +1 and a
    rejected text that turned more positive has a negative value (-2..2 for
    ternary features); 'unsigned': 1 where the label changed, else 0.
    """
    if encoding not in FLIP_ENCODINGS:
        raise ValueError(f"flip encoding must be one of {FLIP_ENCODINGS}, got {encoding!r}")
    orig, rew = _matched(original, rewritten)
    cols = {"pair_id": rew["pair_id"]}
    for s in SIDES:
        for f in features:
            c = f"{s}_{f}"
            for df, name in ((orig, "original"), (rew, "rewritten")):
                if c not in df.columns:
                    raise ValueError(f"{name} pairs table lacks label column {c!r}")
            a = orig[c].cast(pl.Float64)
            b = rew[c].cast(pl.Float64)
            cols[f"flip_{s}_{f}"] = ((a - b) if encoding == "signed" else
                                     (a != b).cast(pl.Float64))
    return pl.DataFrame(cols)


def robustness_flip_regression(original: pl.DataFrame, rewritten: pl.DataFrame,
                               settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Robustness scores: LPM of "became misaligned" on the label changes rewriting caused.

    Outcome per rewritten pair: 1 if the ``robustness_rm`` agreed with the
    human before rewriting and disagrees after (SEAL's became_misaligned).
    Rows: every rewritten pair (robustness_population 'all', as SEAL) or only
    those it agreed on before ('correct_before', so the coefficients are
    changes in P(misaligned after | aligned before)); pairs the RM ties before
    or after are left out (counted in n_pairs_tied). Regressors
    flip_<side>_<f> in ``flip_encoding`` (:func:`flip_indicators`); HC1 robust
    errors (one row per pair), Bonferroni. Columns of :func:`ols_clustered`
    plus feature, side, role, population, encoding, n_pairs_excluded (missing
    labels), n_pairs_tied.
    """
    feats = settings.regressors
    flips = flip_indicators(original, rewritten, feats, settings.flip_encoding)
    orig, rew = _matched(original, rewritten)
    rm = settings.robustness_rm
    before, after = agreement_indicator(orig, rm), agreement_indicator(rew, rm)
    y = ((before == 1) & (after == 0)).astype(float)
    df = flips.with_columns(pl.Series("y", y), pl.Series("before", before),
                            pl.Series("decided", _decided(before, after)))
    n_tied = int((~df["decided"]).sum())
    df = df.filter(pl.col("decided"))
    if settings.robustness_population == "correct_before":
        df = df.filter(pl.col("before") == 1)
    names = [f"flip_{s}_{f}" for s in SIDES for f in feats]
    ok = df.drop_nulls(subset=names)
    n_excl = df.height - ok.height
    if n_excl:
        log.warning("flip regression: %d pairs with missing labels left out", n_excl)
    t = ols_clustered(ok.select(names).cast(pl.Float64).to_numpy(), ok["y"].to_numpy(), names,
                      None, confidence=settings.confidence)
    meta = {f"flip_{s}_{f}": (f, s, settings.role(f)) for s in SIDES for f in feats}
    meta["intercept"] = (None, None, "intercept")
    return t.with_columns(
        pl.col("term").replace_strict({k: v[0] for k, v in meta.items()},
                                      return_dtype=pl.String).alias("feature"),
        pl.col("term").replace_strict({k: v[1] for k, v in meta.items()},
                                      return_dtype=pl.String).alias("side"),
        pl.col("term").replace_strict({k: v[2] for k, v in meta.items()}).alias("role"),
        pl.lit(settings.robustness_population).alias("population"),
        pl.lit(settings.flip_encoding).alias("encoding"),
        pl.lit(n_excl, dtype=pl.Int64).alias("n_pairs_excluded"),
        pl.lit(n_tied, dtype=pl.Int64).alias("n_pairs_tied"),
    )


# =========================================================================== headline


HEADLINE_KEYS: dict[str, str] = {
    "agreement_pre": ("share of pairs where the pre RM scores the chosen text above the rejected "
                      "(exact ties left out; they used to count as disagreement)"),
    "agreement_post": ("share of pairs where the post RM scores the chosen text above the "
                       "rejected (exact ties left out)"),
    "agreement_gain": "agreement_post - agreement_pre (pairs neither RM ties)",
    "n_ties_pre": ("pairs the pre RM scores exactly equal (neither agreement nor disagreement; "
                   "exact count, n = pairs)"),
    "n_ties_post": ("pairs the post RM scores exactly equal (neither agreement nor "
                    "disagreement; exact count, n = pairs)"),
    "n_truncated_pre": ("texts cut to reward.max_length before the pre RM scored them (exact "
                        "count, n = texts; 0 when nothing is truncated)"),
    "n_truncated_post": ("texts cut to reward.max_length before the post RM scored them (exact "
                         "count, n = texts)"),
    "regime_stayed_aligned": "share of pairs aligned before and after training (pre and post)",
    "regime_got_aligned": "share of pairs misaligned pre and aligned post",
    "regime_resisted": "share of pairs misaligned pre and post",
    "regime_reversed": "share of pairs aligned pre and misaligned post",
    "alignment_resistance": "share of pairs the post RM still gets wrong (exact ties left out)",
    "alignment_resistance_chosen_better": (
        "alignment resistance among pairs where the LM labeller prefers the chosen text"),
    "alignment_resistance_rejected_better": (
        "alignment resistance among pairs where the LM labeller prefers the rejected text"),
    "alignment_resistance_indifferent": (
        "alignment resistance among pairs the LM labeller ranks equal"),
    "alignment_resistance_gap": (
        "alignment resistance among rejected_better minus among chosen_better pairs"),
    "imprint_post_{feature}": (
        "post RM reward per unit of the feature label (text-level OLS, pair-clustered CR1, "
        "95% t interval; NaN when the collinearity check dropped the feature)"),
    "imprint_post_{feature}_bonferroni": (
        "imprint_post of the feature with its Bonferroni-adjusted interval (all imprint terms)"),
    "imprint_shift_{feature}": (
        "change in reward (post - pre) per unit of the feature label (text-level OLS, CR1)"),
    "imprint_shift_{feature}_bonferroni": (
        "imprint_shift of the feature with its Bonferroni-adjusted interval"),
    "imprint_post_target_minus_spoiler": (
        "mean post imprint of the target features minus that of the spoiler features (CR1)"),
    "imprint_shift_target_minus_spoiler": (
        "mean imprint shift (post - pre) of target minus spoiler features (CR1)"),
    "agreement_post_rewrite_original": (
        "post RM agreement on the original texts of the rewritten pairs (the comparator of "
        "agreement_post_rewritten)"),
    "agreement_post_rewritten": "post RM agreement on the rewritten pairs",
    "agreement_post_rewrite_drop": (
        "post RM agreement on the original minus on the rewritten version of the same pairs"),
    "agreement_pre_rewrite_original": (
        "pre RM agreement on the original texts of the rewritten pairs"),
    "agreement_pre_rewritten": "pre RM agreement on the rewritten pairs",
    "agreement_pre_rewrite_drop": (
        "pre RM agreement on the original minus on the rewritten version of the same pairs"),
    "rewrite_reward_r": "Pearson r of post RM rewards, original vs rewritten texts",
    "rewrite_similarity": (
        "mean embedding cosine of the whole original and rewritten transcripts, pooled as the "
        "embedder prescribes (was: last turn, mean-pooled, cut at 512 tokens)"),
    "robustness_flip_chosen_{feature}": (
        "change in P(became misaligned, robustness RM) per unit change of the chosen text's "
        "label (original - rewritten with flip_encoding signed; LPM, HC1, 95%)"),
    "robustness_flip_rejected_{feature}": (
        "the same for the rejected text's label change"),
}
"""Headline keys with one-line descriptions; '{feature}' expands to each regressor."""


def headline_keys(features: Sequence[str]) -> dict[str, str]:
    """HEADLINE_KEYS with the '{feature}' templates expanded for ``features``."""
    out = {}
    for k, v in HEADLINE_KEYS.items():
        if "{feature}" in k:
            for f in features:
                out[k.format(feature=f)] = f"{v} [{f}]"
        else:
            out[k] = v
    return out


def _count(value: int, n: int, unit: str) -> Estimate:
    return Estimate(float(value), float(value), float(value), int(n), unit,
                    "exact count (no sampling error)")


def _ols_estimate(row: Mapping, confidence: float, *, bonferroni: bool = False,
                  reason: str | None = None, unit: str = "reward/label",
                  errors: str = "CR1 pair-clustered") -> Estimate:
    if row.get("dropped") or row.get("coef") is None:
        return Estimate(math.nan, math.nan, math.nan, int(row["n_clusters"]), unit,
                        f"dropped: {reason or 'constant or collinear'}")
    lo, hi = (row["lo_bonferroni"], row["hi_bonferroni"]) if bonferroni else (row["lo"],
                                                                              row["hi"])
    what = "Bonferroni-adjusted" if bonferroni else f"{confidence:.0%}"
    return Estimate(row["coef"], lo, hi, int(row["n_clusters"]), unit,
                    f"{errors} t interval, {what}")


def headline(pairs: pl.DataFrame, settings: SealSettings = SealSettings(), *,
             imprint: pl.DataFrame | None = None, vif: pl.DataFrame | None = None,
             rewritten: pl.DataFrame | None = None, similarity: pl.DataFrame | None = None,
             flips: pl.DataFrame | None = None,
             truncation: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Estimate]:
    """Every SEAL headline number (keys: :func:`headline_keys`).

    ``imprint`` (from :func:`feature_imprint`) and ``vif``
    (:func:`collinearity_check`) are computed when not given and when the
    pairs table has labels; robustness keys need ``rewritten`` (and
    rewrite_similarity needs ``similarity``; ``flips`` is computed when not
    given). ``truncation`` maps 'pre'/'post' to :func:`truncation_summary`.
    n is the number of pairs (texts for the truncation counts).
    """
    out = dict(agreement(pairs, settings))
    for rm, k in tie_counts(pairs).items():
        out[f"n_ties_{rm}"] = _count(k, pairs.height, "pairs")
    for rm, t in (truncation or {}).items():
        out[f"n_truncated_{rm}"] = _count(t["n_truncated"], t["n_texts"], "texts")
    for row in alignment_regimes(pairs, settings).iter_rows(named=True):
        out[f"regime_{row['regime']}"] = Estimate(row["share"], row["lo"], row["hi"],
                                                  row["n_pairs"], "share")
    for row in alignment_resistance(pairs, settings).iter_rows(named=True):
        if row["stratum"] == "labels_missing":
            continue
        key = "alignment_resistance" + ("" if row["stratum"] == "all" else f"_{row['stratum']}")
        out[key] = Estimate(row["resistance"], row["lo"], row["hi"], row["n_pairs"], "share")
    has_labels = all(f"{s}_{f}" in pairs.columns for s in SIDES for f in settings.regressors)
    if has_labels and vif is None:
        vif = collinearity_check(pairs, settings)
    if imprint is None and has_labels:
        imprint = feature_imprint(pairs, settings, vif)
    if imprint is not None:
        reasons = {} if vif is None else {
            r["feature"]: f"collinearity check (VIF {r['vif_initial']:.3g} > {r['threshold']:g})"
            for r in vif.filter(pl.col("dropped") & (pl.col("reason") == "vif_above_threshold"))
            .iter_rows(named=True)}
        for row in imprint.filter(pl.col("outcome").is_in(["post", "shift"]) &
                                  (pl.col("term") != "intercept")).iter_rows(named=True):
            key = f"imprint_{row['outcome']}_{row['term']}"
            why = reasons.get(row["term"])
            out[key] = _ols_estimate(row, settings.confidence, reason=why)
            if row["role"] != "contrast":
                out[key + "_bonferroni"] = _ols_estimate(row, settings.confidence,
                                                         bonferroni=True, reason=why)
    if rewritten is not None:
        rob = robustness_summary(pairs, rewritten, settings, similarity)
        for rm in ("pre", "post"):
            out[f"agreement_{rm}_rewrite_original"] = rob[f"agreement_{rm}_original"]
            out[f"agreement_{rm}_rewritten"] = rob[f"agreement_{rm}_rewritten"]
            out[f"agreement_{rm}_rewrite_drop"] = rob[f"agreement_{rm}_drop"]
        out["rewrite_reward_r"] = rob["rewrite_reward_r"]
        if "rewrite_similarity" in rob:
            out["rewrite_similarity"] = rob["rewrite_similarity"]
        if flips is None and has_labels:
            flips = robustness_flip_regression(pairs, rewritten, settings)
        if flips is not None:
            for row in flips.filter(pl.col("term") != "intercept").iter_rows(named=True):
                out[f"robustness_flip_{row['side']}_{row['feature']}"] = _ols_estimate(
                    row, settings.confidence, reason="the label never changed, or collinear",
                    unit="probability/label change", errors="HC1 robust (one row per pair)")
    return out


def estimates_table(estimates: Mapping[str, Estimate],
                    descriptions: Mapping[str, str] | None = None) -> pl.DataFrame:
    """A dict of Estimates as DataFrame[key, value, lo, hi, n, unit, method, description]."""
    rows = []
    for k, e in estimates.items():
        rows.append({"key": k, "value": e.value, "lo": e.lo, "hi": e.hi, "n": e.n,
                     "unit": e.unit, "method": e.method,
                     "description": (descriptions or {}).get(k)})
    return pl.DataFrame(rows, schema={"key": pl.String, "value": pl.Float64, "lo": pl.Float64,
                                      "hi": pl.Float64, "n": pl.Int64, "unit": pl.String,
                                      "method": pl.String, "description": pl.String})
