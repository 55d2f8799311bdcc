"""Partisan geometry of a base/instruct model pair ("The Neutral Mask", claims 1-2).

Per layer, from residual-stream activations of the SAME prompts in both models
(``X_base``, ``X_instruct``: ``[n_prompts, d_model]``, rows in the same order):

* **Partisan direction.** A unit vector in the raw activation space pointing from
  left-labelled towards right-labelled prompts (neutral prompts never enter a
  fit). Two estimators: ``diffmean`` (difference of class means, raw space) and
  ``logreg`` (L2 logistic regression on standardised features; its weights are
  divided by the feature scales so the direction lives in the raw space).
* **Probe quality.** Out-of-fold (OOF) scores from folds grouped by policy issue
  (no issue is in both the training and the test part of a fold), so a probe
  cannot score well by recognising topics. Each prompt's score is its projection
  on the fold's unit direction minus the fold's decision threshold (activation
  units; > 0 means "right"), which keeps scores of different folds on one scale
  before they are pooled. AUC, accuracy and Cohen's d (right minus left) are
  computed on the pooled OOF scores of the partisan (left/right) prompts.
* **Transfer.** The base model's fold directions applied to the instruct model's
  held-out activations and the reverse (AUC; thresholds do not transfer between
  models, so transfer scores are centred on the target model's training-fold
  mean projection, which uses no labels).
* **Variance compression (split-half cross products).** The partisan variance of a
  model is the between-party variance ``|Delta|^2 / 4`` along its partisan
  direction, ``Delta`` the population right-minus-left mean difference. The
  issues are split at random into two disjoint halves; each half gives a mean
  difference ``d_A``, ``d_B``; their noises are independent, so ``d_A . d_B`` is
  unbiased for ``|Delta|^2`` whatever the noise covariance (projecting on a fitted
  direction is not: it picks up each model's own off-axis noise, worst when the
  noise spectrum decays as real residual spectra do). Averaged over
  ``n_splits`` random splits, this gives each model's partisan variance, its share
  of the model's total variance, the ratio instruct/base (``variance_ratio``, the
  paper's compression in scale-free form), the ratio along the base direction and
  the disattenuated cosine between the models' directions (cross-model products
  from opposite halves). Intervals: an issue bootstrap that refits (re-splits and
  recomputes the difference vectors). Noise floor: the ratio's 95th percentile
  after permuting left/right labels within each issue of the instruct model.
  The ratio of ``|Delta|^2`` equals the paper's ratio of projection variances when
  alignment scales the partisan coordinate as a whole (spread within parties too).
* **Descriptive spread.** Each prompt (all labels, neutral included) projected on
  its model's OWN unit direction (and, as a check, on the BASE direction),
  out-of-fold by default and centred on the training-fold mean projection: SD,
  min, max and range (a width, comparable with the paper's widths, not
  endpoints) in raw activation units, which differ between models and from the
  paper's, so only ratios and shares are compared with it. Their variance ratio is
  kept as ``projection_variance_ratio``, a check of the old, biased estimate.

Uncertainty. Probe, transfer and SD numbers are :class:`~rlhf_audit.stats.Estimate`s
with a 95% interval from a cluster bootstrap over policy issues (prompts of one issue
are resampled together; ``n`` = number of issues), because prompts on one issue share
wording and topic and are not independent. Prompts without an issue are their own
cluster. That bootstrap resamples the fixed OOF scores/projections (no refitting); the
split-half estimates refit in every replicate. Min, max and range carry no interval (a
percentile bootstrap is not valid for extremes). The raw cosine of the fitted
directions (``cosine_raw``, attenuated by their noise) gets a delete-one-fold
jackknife interval.

Known biases. (1) The split-half ratio is a ratio of unbiased estimates: nearly
unbiased when the base signal is well above its noise, upward biased (and noisy)
when it is not; the permutation floor says when the instruct signal is
indistinguishable from none. (2) Within-issue permutation moves single prompts;
when several prompts share a statement (paraphrases), the real null is wider than
this floor. (3) Under no signal, pooled cross-validated AUC sits slightly below 0.5
(a training part's class difference is anti-correlated with its test part's).

Selection. The best layer is the one with the highest base OOF AUC for
``headline_method`` (ties go to the shallower layer); its own interval comes
from re-selecting the layer in each bootstrap replicate. Numbers reported at the
best layer are optimistically selected among layers; the interval does not
account for that selection.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from rlhf_audit.directions import METHODS
from rlhf_audit.directions import fit_direction as _fit_direction
from rlhf_audit.params import settings_from_params
from rlhf_audit.stats import Estimate, bootstrap, cohens_d

log = logging.getLogger(__name__)

LABELS = ("left", "right", "neutral")
"""Allowed prompt labels."""
MODELS = ("base", "instruct")
"""Roles in a model pair."""
PROJECTIONS = ("out_of_fold", "full")
"""How prompts are projected for the variance analysis (see :class:`PartisanSettings`)."""
JACKKNIFE_METHOD = "delete-one-fold jackknife (issue-grouped folds), t 95%"
"""``Estimate.method`` of the cosine intervals."""
BOOT_METHOD = "cluster bootstrap over policy issues, percentile 95%"
"""``Estimate.method`` of the bootstrap intervals of fixed scores and projections."""
SPLIT_METHOD = (
    "split-half cross products over random halves of the issues; cluster bootstrap over "
    "issues that refits (re-splits), percentile 95%"
)
"""``Estimate.method`` of the split-half estimates (variance ratio, shares, cosine)."""
DESCRIPTIVE_METHOD = "descriptive: no interval (a bootstrap interval is not valid for extremes)"
"""``Estimate.method`` of min, max and range."""

HEADLINE_KEYS: dict[str, str] = {
    "best_layer": "Layer (0-based block output) with the highest base out-of-fold AUC; "
    "interval from re-selecting the layer in each bootstrap replicate. Every partisan key "
    "reads vectors pooled over the statement's own tokens (extract.pool_over: content; "
    "since issue 16, before which instruct vectors also pooled the chat template's tokens)",
    "auc_base": "Out-of-fold AUC (right vs left) of the base model's partisan probe at the "
    "best layer",
    "auc_instruct": "Out-of-fold AUC of the instruct model's own partisan probe at the best layer",
    "accuracy_base": "Out-of-fold accuracy (right vs left) of the base probe at the best layer",
    "accuracy_instruct": "Out-of-fold accuracy of the instruct probe at the best layer",
    "cohens_d_base": "Cohen's d (right minus left) of base out-of-fold projections at the "
    "best layer",
    "cohens_d_instruct": "Cohen's d of instruct out-of-fold projections at the best layer",
    "sd_base": "Descriptive, raw activation units (not comparable across models or with a "
    "paper): SD of all prompts' out-of-fold projections on the base direction, base model",
    "sd_instruct": "Descriptive, raw activation units: SD of all prompts' out-of-fold "
    "projections on the instruct model's own direction",
    "range_base": "Descriptive, raw activation units: width (max - min) of base out-of-fold "
    "projections on the base direction; no interval (not valid for extremes; until issue 16 "
    "a percentile interval was given)",
    "range_instruct": "Descriptive, raw activation units: width (max - min) of instruct "
    "projections on its own direction; no interval",
    "variance_ratio": "Partisan variance instruct/base: the between-party variance D.D/4 "
    "along each model's partisan direction (D: right-minus-left mean difference), each D.D "
    "estimated without bias by the dot product of the mean differences of two disjoint "
    "halves of the issues (averaged over random splits); interval: issue bootstrap that "
    "refits; < 1 = "
    "compression. Since issue 16 (was: variance of own-direction projections, biased towards 1 "
    "when noise is uneven across dimensions)",
    "sd_ratio": "Square root of variance_ratio (split-half; since issue 16)",
    "variance_ratio_noise_floor": "Noise floor of variance_ratio: 95th percentile of the "
    "instruct/base ratio after permuting left/right labels within each issue of the instruct "
    "model (a model with no partisan separation reaches this by chance); no interval",
    "variance_ratio_base_direction": "Variance ratio instruct/base along the base direction: "
    "(D_i.D_b)^2 / (D_b.D_b)^2 from split-half cross products (since issue 16; was: "
    "projection variance on the base direction)",
    "partisan_share_base": "Share of the base model's total variance (trace of the covariance "
    "of the partisan prompts) that is between-party variance along its partisan direction, "
    "split-half numerator (since issue 16; was: variance of own-direction projections)",
    "partisan_share_instruct": "The same share for the instruct model (split-half; since "
    "issue 16)",
    "transfer_auc_base_to_instruct": "AUC of the base direction applied to instruct "
    "activations (out-of-fold)",
    "transfer_auc_instruct_to_base": "AUC of the instruct direction applied to base "
    "activations (out-of-fold)",
    "cosine_base_instruct": "Disattenuated cosine of the base and instruct partisan "
    "directions: D_b.D_i / sqrt(D_b.D_b D_i.D_i), every product from opposite "
    "issue halves, so estimation noise does not shrink it; issue bootstrap that refits "
    "(since issue 16; was: raw cosine of the fitted directions with a jackknife interval)",
}
"""Headline keys returned by :func:`headline` (per model pair), with a description each."""


@dataclass(frozen=True)
class PartisanSettings:
    """How partisan directions are fitted, evaluated and bootstrapped."""

    methods: tuple[str, ...] = ("diffmean", "logreg")
    """Direction estimators to run: "diffmean" and/or "logreg"."""
    headline_method: str = "diffmean"
    """Estimator behind the headline numbers and the best-layer choice; the difference of
    means is the partisan axis itself (no hyperparameter); logreg is reported as a check."""
    n_folds: int = 5
    """Folds of the issue-grouped cross-validation (capped at the number of issues)."""
    C: float = 1.0
    """Inverse L2 strength of the logistic regression (on standardised features)."""
    standardize: bool = True
    """Standardise features (per-dimension z-score on the training fold) before logreg."""
    max_iter: int = 1000
    """Maximum lbfgs iterations of the logistic regression."""
    projection: str = "out_of_fold"
    """Projections for the variance analysis: "out_of_fold" (each prompt on the direction
    fitted without its issue, centred on the training-fold mean) or "full" (all prompts on
    the full-data direction, centred on their mean)."""
    n_boot: int = 1000
    """Bootstrap replicates of every interval."""
    seed: int = 0
    """Seed of the fold assignment, the split-halves, the bootstrap and the permutations."""
    n_splits: int = 20
    """Random half-splits of the issues averaged in every split-half cross-product estimate
    (more splits: less split-to-split noise, same expectation)."""
    n_perm: int = 200
    """Within-issue label permutations behind the variance-ratio noise floor."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PartisanSettings:
        """From rule fit_partisan_probes' ``params.settings`` (lists become tuples)."""
        return settings_from_params(cls, params)

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(
                f"partisan methods {list(self.methods)}: each must be one of {METHODS}"
            )
        if self.headline_method not in self.methods:
            raise ValueError(
                f"partisan headline_method {self.headline_method!r} is not in methods "
                f"{list(self.methods)}; add it to methods or pick one of them"
            )
        if self.projection not in PROJECTIONS:
            raise ValueError(f"partisan projection {self.projection!r}: use one of {PROJECTIONS}")
        if self.n_folds < 2:
            raise ValueError(f"partisan n_folds={self.n_folds}: need at least 2")
        if not self.C > 0:
            raise ValueError(f"partisan C={self.C}: must be > 0")
        if self.n_boot < 1:
            raise ValueError(f"partisan n_boot={self.n_boot}: must be >= 1")
        if self.n_splits < 1:
            raise ValueError(f"partisan n_splits={self.n_splits}: must be >= 1")
        if self.n_perm < 1:
            raise ValueError(f"partisan n_perm={self.n_perm}: must be >= 1")


# ----------------------------------------------------------------------------- results


@dataclass
class LayerResult:
    """Everything measured at one layer of one model pair (see module docstring).

    Keys of the dicts: ``probe[(model, method, metric)]`` with metric in auc/accuracy/
    cohens_d; ``transfer[(method, metric)]``; ``variance[(model, method, direction,
    metric)]`` with model in base/instruct/instruct_over_base and direction in own/base
    (projections) or split_half (cross-product estimates, method diffmean); see
    :func:`variance_table` for the metrics.
    """

    layer: int
    """Layer index (0-based block output)."""
    prompt_ids: np.ndarray
    """``[n_prompts]`` prompt ids, in input order."""
    labels: np.ndarray
    """``[n_prompts]`` left/right/neutral."""
    groups: np.ndarray
    """``[n_prompts]`` bootstrap/fold cluster of each prompt (its issue)."""
    folds: np.ndarray
    """``[n_prompts]`` test fold of each prompt."""
    probe: dict[tuple[str, str, str], Estimate] = field(default_factory=dict)
    transfer: dict[tuple[str, str], Estimate] = field(default_factory=dict)
    variance: dict[tuple[str, str, str, str], Estimate] = field(default_factory=dict)
    directions: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    """``(model, method) -> [d_model]`` unit direction fitted on all partisan prompts."""
    thresholds: dict[tuple[str, str], float] = field(default_factory=dict)
    """``(model, method) ->`` decision threshold on the projection (activation units)."""
    oof_scores: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    """``(model, method) -> [n_prompts]`` out-of-fold projection minus fold threshold."""
    projections: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    """``(model, method, direction) -> [n_prompts]`` centred projections (activation units)."""


# --------------------------------------------------------------------------- validation


def _as_str_array(values, name: str, n: int) -> np.ndarray:
    arr = np.asarray(list(values), dtype=object)
    if arr.shape != (n,):
        raise ValueError(
            f"{name} has {arr.shape[0] if arr.ndim else 0} entries, expected one per prompt ({n})"
        )
    return arr


def _validate(X_base, X_instruct, labels, issues, prompt_ids):
    Xb = np.asarray(X_base)
    Xi = np.asarray(X_instruct)
    for name, X in (("X_base", Xb), ("X_instruct", Xi)):
        if X.ndim != 2:
            raise ValueError(f"{name} must be [n_prompts, d_model], got shape {X.shape}")
    if Xb.shape != Xi.shape:
        raise ValueError(
            f"X_base {Xb.shape} and X_instruct {Xi.shape} differ: both models must "
            "be given the same prompts in the same order"
        )
    n = Xb.shape[0]
    lab = _as_str_array(labels, "labels", n)
    bad = [i for i, v in enumerate(lab) if v not in LABELS]
    if bad:
        raise ValueError(
            f"labels row {bad[0]} is {lab[bad[0]]!r} ({len(bad)} bad rows): every "
            f"partisan prompt needs a label in {LABELS}"
        )
    if prompt_ids is None:
        pid = np.array([str(i) for i in range(n)], dtype=object)
    else:
        pid = _as_str_array(prompt_ids, "prompt_ids", n).astype(str).astype(object)
        uniq, counts = np.unique(pid, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"prompt_ids are not unique (e.g. {uniq[counts > 1][0]!r}); "
                "deduplicate the prompt file"
            )
    if issues is None:
        log.warning(
            "no policy issues given: every prompt is its own cluster, so the folds "
            "cannot rule out topic memorisation"
        )
        iss = np.array([None] * n, dtype=object)
    else:
        iss = _as_str_array(issues, "issues", n)
    groups = np.array(
        [
            f"__prompt__{pid[i]}"
            if v is None or (isinstance(v, float) and math.isnan(v)) or v == ""
            else str(v)
            for i, v in enumerate(iss)
        ],
        dtype=object,
    )
    for name, X in (("X_base", Xb), ("X_instruct", Xi)):
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            r = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"{name} row {r} (prompt_id {pid[r]!r}) has non-finite values; "
                "re-extract the activations (fp16 overflow? use dtype float32)"
            )
    n_left, n_right = int((lab == "left").sum()), int((lab == "right").sum())
    if n_left < 2 or n_right < 2:
        raise ValueError(
            f"need at least 2 left and 2 right prompts, got {n_left} left and {n_right} right"
        )
    return Xb.astype(np.float64), Xi.astype(np.float64), lab, groups, pid


# ------------------------------------------------------------------------- estimators


def issue_folds(labels: Sequence[str], groups: Sequence, n_folds: int, seed: int) -> np.ndarray:
    """Test-fold index ``[n_prompts]`` of each prompt; all prompts of one group share a fold.

    Stratified by label (left/right/neutral) as far as the groups allow. ``n_folds`` is capped
    at the number of groups; every training part must hold both left and right prompts.
    """
    lab = np.asarray(labels, dtype=object)
    g = np.asarray(groups, dtype=object)
    n_groups = len(np.unique(g.astype(str)))
    if n_groups < 2:
        raise ValueError(
            "all prompts share one policy issue: issue-grouped folds need >= 2 "
            "issues (give more issues, or none to split by prompt)"
        )
    k = min(n_folds, n_groups)
    if k < n_folds:
        log.warning("only %d issues: using %d folds instead of %d", n_groups, k, n_folds)
    y = np.array([LABELS.index(v) for v in lab])
    from sklearn.model_selection import StratifiedGroupKFold  # sklearn and scipy.stats are
    # imported where used: the figure jobs that import this module need neither

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.full(len(lab), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # A label with fewer prompts than folds is legal here (e.g. few neutral prompts).
        warnings.filterwarnings("ignore", message="The least populated class")
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(lab)), y, g.astype(str))):
            folds[test] = f
    for f in range(k):
        train = lab[folds != f]
        if (train == "left").sum() < 1 or (train == "right").sum() < 1:
            raise ValueError(
                f"fold {f}: training part lacks left or right prompts; the issues "
                "are too few or too one-sided for issue-grouped folds"
            )
    return folds


def fit_direction(
    X: np.ndarray, y: np.ndarray, method: str, settings: PartisanSettings
) -> tuple[np.ndarray, float]:
    """Fit a partisan direction on partisan prompts (:func:`rlhf_audit.directions.
    fit_direction` with the settings' C, standardize and max_iter).

    ``X``: ``[n, d_model]`` activations; ``y``: ``[n]`` 1 = right, 0 = left. Returns
    ``(u, b)``: ``u`` ``[d_model]`` unit vector in the raw activation space pointing to
    "right", ``b`` the decision threshold on ``X @ u`` (activation units): predict right
    where ``X @ u > b``.
    """
    return _fit_direction(X, y, method, C=settings.C, standardize=settings.standardize,
                          max_iter=settings.max_iter)


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``y`` (bool, positive = right); ties count half.

    The Mann-Whitney form: for each positive, the negatives below it plus half those equal.
    """
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[y], np.sort(scores[~y])
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    below_or_equal = np.searchsorted(neg, pos, side="right")
    return float((below + below_or_equal).sum() / (2.0 * len(pos) * len(neg)))


def _accuracy(scores, y):
    return float(np.mean((np.asarray(scores) > 0) == np.asarray(y, dtype=bool)))


def _d(scores, y):
    y = np.asarray(y, dtype=bool)
    return cohens_d(scores[y], scores[~y])


def _clusters(groups: np.ndarray) -> np.ndarray | None:
    """``groups`` for :func:`bootstrap`, or None when every row is its own cluster (the row
    bootstrap is then the same resampling, without per-cluster bookkeeping)."""
    g = np.asarray(groups).astype(str)
    return None if len(np.unique(g)) == len(g) else g


def _boot(stat, arrays, groups, settings, unit):
    est = bootstrap(
        stat,
        *arrays,
        n_boot=settings.n_boot,
        seed=settings.seed,
        groups=_clusters(groups),
        unit=unit,
    )
    return Estimate(est.value, est.lo, est.hi, est.n, unit, BOOT_METHOD)


def _jackknife_interval(full: float, per_fold: np.ndarray, n_units: int, unit: str) -> Estimate:
    k = len(per_fold)
    if k < 2:
        return Estimate(full, math.nan, math.nan, n_units, unit, JACKKNIFE_METHOD)
    se = math.sqrt((k - 1) / k * float(((per_fold - per_fold.mean()) ** 2).sum()))
    from scipy import stats as sps

    t = float(sps.t.ppf(0.975, k - 1))
    return Estimate(
        full, max(-1.0, full - t * se), min(1.0, full + t * se), n_units, unit, JACKKNIFE_METHOD
    )


# ------------------------------------------------------------------ split-half geometry

MAX_SPLIT_UNITS = 200
"""Most resampling units of the split-half estimates (clusters beyond are pooled)."""
SPLIT_HALF_STATS = (
    "partisan_variance_base",
    "partisan_variance_instruct",
    "partisan_share_base",
    "partisan_share_instruct",
    "variance_ratio",
    "variance_ratio_base_direction",
    "cosine_base_instruct",
)
"""Statistics of :func:`split_half_statistics`, in the order of its arrays."""


@dataclass
class ClusterSums:
    """Per-cluster (issue) sums of the partisan prompts' centred activations, both models.

    ``V[m]`` ``[2K, d_model]`` stacks the sums over right prompts (rows 0..K-1) and over
    left prompts (rows K..2K-1) of each cluster; every split-half statistic is a bilinear
    form of these rows, so it only needs their Gram matrices ``G[(m, m2)]`` ``[2K, 2K]``.
    Vectors are centred on the partisan prompts' mean (differences are unchanged, and
    the sums stay well conditioned).
    """

    clusters: np.ndarray
    """``[K]`` cluster names."""
    n_right: np.ndarray
    """``[K]`` right prompts per cluster."""
    n_left: np.ndarray
    """``[K]`` left prompts per cluster."""
    sq: dict[str, np.ndarray]
    """``model -> [K]`` sum of squared norms of the cluster's centred partisan vectors."""
    G: dict[tuple[str, str], np.ndarray]
    """``(model, model) -> [2K, 2K]`` Gram matrices of the stacked sums."""

    @classmethod
    def build(cls, Xs: dict[str, np.ndarray], right: np.ndarray, clusters: np.ndarray):
        """From ``Xs[model]`` ``[n_partisan, d]``, ``right`` ``[n]`` bool, ``clusters`` ``[n]``."""
        names, inv = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
        K = len(names)
        n_right = np.bincount(inv, weights=right, minlength=K)
        n_left = np.bincount(inv, weights=~right, minlength=K)
        V, sq = {}, {}
        for m, X in Xs.items():
            Xc = X - X.mean(0)
            V[m] = _class_sums(Xc, inv, right, K)
            sq[m] = np.bincount(inv, weights=(Xc**2).sum(1), minlength=K)
        G = {(a, b): V[a] @ V[b].T for a in MODELS for b in MODELS}
        return cls(names, n_right, n_left, sq, G)


def _class_sums(Xc: np.ndarray, inv: np.ndarray, right: np.ndarray, K: int) -> np.ndarray:
    """``[2K, d]``: per-cluster sums of right rows, then of left rows."""
    import scipy.sparse as sp

    n = len(inv)
    rows = np.where(right, inv, inv + K)
    M = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(2 * K, n))
    return np.asarray(M @ Xc)


def _half_coefficients(w: np.ndarray, halves: np.ndarray, cs: ClusterSums) -> np.ndarray:
    """``[S, 2K]`` coefficients c with ``c @ V`` = right mean minus left mean of one half.

    ``w`` ``[K]`` cluster weights (bootstrap multiplicities), ``halves`` ``[S, K]`` bool.
    Rows whose half lacks right or left prompts are NaN.
    """
    wh = halves * w[None, :]
    n_r = wh @ cs.n_right
    n_l = wh @ cs.n_left
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.concatenate([wh / n_r[:, None], -wh / n_l[:, None]], axis=1)
    c[(n_r == 0) | (n_l == 0)] = np.nan
    return c


def _random_halves(present: np.ndarray, n_splits: int, rng: np.random.Generator) -> np.ndarray:
    """``[S, K]`` bool: half A of ``n_splits`` random splits of the present clusters
    (``present`` ``[K]`` bool); half B is the rest of the present clusters."""
    idx = np.flatnonzero(present)
    order = np.argsort(rng.random((n_splits, len(idx))), axis=1)
    halves = np.zeros((n_splits, len(present)), dtype=bool)
    first = idx[order[:, : len(idx) // 2]]
    halves[np.repeat(np.arange(n_splits), first.shape[1]), first.ravel()] = True
    return halves


def _cross(G: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[S]``: ``a_s^T G b_s``, the dot product of two halves' difference vectors."""
    return np.einsum("sk,sk->s", a @ G, b)


def _trace(cs: ClusterSums, m: str, w: np.ndarray) -> float:
    """Total variance (trace of the covariance) of the weighted partisan prompts of ``m``."""
    n = float(w @ (cs.n_right + cs.n_left))
    s = np.concatenate([w, w]) / n  # coefficients of the weighted mean
    mean_sq = float(s @ cs.G[(m, m)] @ s)
    return (float(w @ cs.sq[m]) - n * mean_sq) / (n - 1)


def split_half_statistics(
    cs: ClusterSums, w: np.ndarray, halves: np.ndarray
) -> dict[str, float]:
    """Split-half cross-product estimates for cluster weights ``w`` over splits ``halves``.

    For each split, d_A and d_B are the right-minus-left mean differences of the two
    halves (disjoint clusters, so their noise is independent); ``d_A . d_B`` is then
    unbiased for ``|Delta|^2`` whatever the noise covariance, where ``Delta`` is the
    population class difference. The cross products are averaged over the splits and
    turned into (keys of :data:`SPLIT_HALF_STATS`): each model's partisan variance
    ``|Delta|^2 / 4`` (the between-party variance along its direction for balanced
    parties), its share of the model's total variance, their ratio instruct/base, the
    instruct/base variance ratio along the base direction ``(Delta_i . Delta_b)^2 /
    |Delta_b|^4`` and the disattenuated cosine ``Delta_b . Delta_i / (|Delta_b||Delta_i|)``
    (cross-model products use opposite halves: ``(d_A^b . d_B^i + d_B^b . d_A^i) / 2``;
    clipped to [-1, 1]; NaN when a model's own cross product is not positive).
    """
    a = _half_coefficients(w, halves, cs)
    b = _half_coefficients(w, (~halves) & (w > 0)[None, :], cs)
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    nan = dict.fromkeys(SPLIT_HALF_STATS, math.nan)
    if not ok.any():
        return nan
    a, b = a[ok], b[ok]
    c_bb = float(_cross(cs.G[("base", "base")], a, b).mean())
    c_ii = float(_cross(cs.G[("instruct", "instruct")], a, b).mean())
    G_bi = cs.G[("base", "instruct")]
    c_bi = float(0.5 * (_cross(G_bi, a, b) + _cross(G_bi, b, a)).mean())
    out = {
        "partisan_variance_base": c_bb / 4,
        "partisan_variance_instruct": c_ii / 4,
        "partisan_share_base": c_bb / 4 / _trace(cs, "base", w),
        "partisan_share_instruct": c_ii / 4 / _trace(cs, "instruct", w),
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        out["variance_ratio"] = c_ii / c_bb if c_bb > 0 else math.nan
        out["variance_ratio_base_direction"] = (c_bi / c_bb) ** 2 if c_bb > 0 else math.nan
        # Clipped: noise can push an unbiased ratio of products past +-1.
        out["cosine_base_instruct"] = (
            float(np.clip(c_bi / math.sqrt(c_bb * c_ii), -1.0, 1.0))
            if c_bb > 0 and c_ii > 0
            else math.nan
        )
    return out


def within_cluster_permutation(
    right: np.ndarray, inv: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``right`` with its values shuffled among the prompts of each cluster (``inv`` [n])."""
    grouped = np.argsort(inv, kind="stable")
    shuffled = np.lexsort((rng.random(len(inv)), inv))
    out = np.empty_like(right)
    out[grouped] = right[shuffled]
    return out


def _cluster_index(cs: ClusterSums, clusters: np.ndarray) -> np.ndarray:
    return np.searchsorted(cs.clusters, np.asarray(clusters).astype(str))


def split_half_analysis(
    Xb: np.ndarray,
    Xi: np.ndarray,
    right: np.ndarray,
    clusters: np.ndarray,
    settings: PartisanSettings,
    reps_out: dict[str, np.ndarray] | None = None,
) -> dict[str, Estimate]:
    """Split-half statistics of the partisan prompts with their intervals and noise floor.

    ``Xb``, ``Xi`` ``[n_partisan, d_model]``, ``right`` ``[n]`` bool, ``clusters`` ``[n]``.
    Point estimates average ``settings.n_splits`` random half-splits of the clusters.
    Intervals: cluster bootstrap that refits (clusters resampled, every copy of a
    cluster kept in one half, new splits, new difference vectors), percentile 95%.
    Noise floor: labels permuted within each cluster (``settings.n_perm`` times), the
    instruct cross product recomputed on the same splits; the floor is the 95th
    percentile of that null's instruct/base ratio, i.e. the ratio a model with no
    partisan separation at all would reach by chance. Also returned: ``permutation_p``,
    the one-sided permutation p-value of the instruct partisan variance.

    ``reps_out``: when given, receives each statistic's bootstrap replicates
    (``[n_boot]``, NaN where a replicate is undefined). The draws depend only on
    ``settings.seed`` and the clusters, so two calls on the same clusters and labels (the
    data and a reconstruction of it) resample identically, and a ratio of their replicates
    is a paired bootstrap.
    """
    right = np.asarray(right, dtype=bool)
    orig = np.asarray(clusters).astype(str)
    names, orig_inv = np.unique(orig, return_inverse=True)
    # Labels move within issues; without issues (every prompt its own cluster) globally.
    perm_groups = orig_inv if np.bincount(orig_inv).max() > 1 else np.zeros_like(orig_inv)
    unit_of = orig
    if len(names) > MAX_SPLIT_UNITS:
        # Many small clusters (e.g. no issues given): whole clusters are pooled into
        # MAX_SPLIT_UNITS random blocks, still independent units, so the bootstrap and
        # the splits stay O(blocks^2) instead of O(prompts^2).
        block = np.random.default_rng([settings.seed, 1]).permutation(len(names))
        unit_of = np.array([f"block{b % MAX_SPLIT_UNITS:04d}" for b in block])[orig_inv]
        log.info("%d clusters pooled into %d random blocks for the split-half estimates",
                 len(names), MAX_SPLIT_UNITS)
    cs = ClusterSums.build({"base": Xb, "instruct": Xi}, right, unit_of)
    K = len(cs.clusters)
    rng = np.random.default_rng(settings.seed)
    ones = np.ones(K)
    if K < 4:
        log.warning("only %d issues: split-half estimates need at least 4; reported as NaN", K)
        nan = Estimate(math.nan, math.nan, math.nan, K, "", SPLIT_METHOD)
        return {k: nan for k in (*SPLIT_HALF_STATS, "variance_ratio_noise_floor",
                                 "permutation_p")}
    halves = _random_halves(ones > 0, settings.n_splits, rng)
    point = split_half_statistics(cs, ones, halves)

    reps = np.full((settings.n_boot, len(SPLIT_HALF_STATS)), np.nan)
    for r in range(settings.n_boot):
        w = np.bincount(rng.integers(0, K, K), minlength=K).astype(float)
        h = _random_halves(w > 0, settings.n_splits, rng)
        st = split_half_statistics(cs, w, h)
        reps[r] = [st[k] for k in SPLIT_HALF_STATS]

    units = {"partisan_variance_base": "activation units^2",
             "partisan_variance_instruct": "activation units^2",
             "partisan_share_base": "fraction", "partisan_share_instruct": "fraction",
             "variance_ratio": "ratio", "variance_ratio_base_direction": "ratio",
             "cosine_base_instruct": "cosine"}
    out = {}
    for j, k in enumerate(SPLIT_HALF_STATS):
        if reps_out is not None:
            reps_out[k] = reps[:, j].copy()
        finite = reps[:, j][np.isfinite(reps[:, j])]
        lo = hi = math.nan
        if len(finite) >= settings.n_boot / 2:
            lo, hi = (float(x) for x in np.quantile(finite, [0.025, 0.975]))
        out[k] = Estimate(float(point[k]), lo, hi, K, units[k], SPLIT_METHOD)

    # Null: no partisan separation in instruct, same issues, same noise.
    inv = _cluster_index(cs, unit_of)
    Xic = Xi - Xi.mean(0)
    c_bb = 4 * point["partisan_variance_base"]
    c_ii = 4 * point["partisan_variance_instruct"]
    null = np.full(settings.n_perm, np.nan)
    for p in range(settings.n_perm):
        yp = within_cluster_permutation(right, perm_groups, rng)
        counts = ClusterSums(cs.clusters, np.bincount(inv, weights=yp, minlength=K),
                             np.bincount(inv, weights=~yp, minlength=K), {}, {})
        a = _half_coefficients(ones, halves, counts)
        b = _half_coefficients(ones, ~halves, counts)
        keep = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        if keep.any():
            V = _class_sums(Xic, inv, yp, K)
            null[p] = float(_cross(V @ V.T, a[keep], b[keep]).mean())
    null = null[np.isfinite(null)]
    floor = float(np.quantile(null, 0.95)) / c_bb if c_bb > 0 and len(null) else math.nan
    out["variance_ratio_noise_floor"] = Estimate(
        floor, math.nan, math.nan, K, "ratio",
        f"within-issue label permutation, 95th percentile of {settings.n_perm} permutations",
    )
    p_value = (1 + int((null >= c_ii).sum())) / (len(null) + 1)
    out["permutation_p"] = Estimate(
        p_value, math.nan, math.nan, K, "p-value",
        f"within-issue label permutation, one-sided, {settings.n_perm} permutations",
    )
    return out


# ----------------------------------------------------------------------------- analysis


def analyse_layer(
    X_base: np.ndarray,
    X_instruct: np.ndarray,
    labels: Sequence[str],
    issues: Sequence[str | None] | None,
    *,
    layer: int,
    prompt_ids: Sequence[str] | None = None,
    settings: PartisanSettings | None = None,
) -> LayerResult:
    """Probe, transfer and variance analysis of one layer of one model pair.

    ``X_base``, ``X_instruct``: ``[n_prompts, d_model]`` activations of the same prompts in
    the same order; ``labels``: ``[n_prompts]`` left/right/neutral; ``issues``:
    ``[n_prompts]`` policy-issue id (None = own cluster) or None for all.
    """
    settings = settings or PartisanSettings()
    Xs = {}
    Xs["base"], Xs["instruct"], lab, groups, pid = _validate(
        X_base, X_instruct, labels, issues, prompt_ids
    )
    n = len(lab)
    folds = issue_folds(lab, groups, settings.n_folds, settings.seed)
    k = int(folds.max()) + 1
    part = lab != "neutral"
    y_all = lab == "right"
    g_part = groups[part]
    n_groups = len(np.unique(groups.astype(str)))
    res = LayerResult(layer=int(layer), prompt_ids=pid, labels=lab, groups=groups, folds=folds)

    for method in settings.methods:
        fold_u = {m: np.zeros((k, Xs[m].shape[1])) for m in MODELS}
        scores = {m: np.zeros(n) for m in MODELS}
        oof_proj = {m: np.zeros(n) for m in MODELS}
        transfer_scores = {m: np.zeros(n) for m in MODELS}  # keyed by target model
        for f in range(k):
            test = folds == f
            train = ~test
            fit_rows = train & part
            for m in MODELS:
                u, b = fit_direction(Xs[m][fit_rows], y_all[fit_rows], method, settings)
                fold_u[m][f] = u
                p_train = Xs[m][train] @ u
                p_test = Xs[m][test] @ u
                scores[m][test] = p_test - b
                oof_proj[m][test] = p_test - p_train.mean()
                other = "instruct" if m == "base" else "base"
                q_test = Xs[other][test] @ u
                q_train = Xs[other][train] @ u
                transfer_scores[other][test] = q_test - q_train.mean()

        for m in MODELS:
            u, b = fit_direction(Xs[m][part], y_all[part], method, settings)
            res.directions[(m, method)] = u.astype(np.float32)
            res.thresholds[(m, method)] = float(b)
            res.oof_scores[(m, method)] = scores[m]
            s, yy = scores[m][part], y_all[part]
            res.probe[(m, method, "auc")] = _boot(auc, (s, yy), g_part, settings, "AUC")
            res.probe[(m, method, "accuracy")] = _boot(
                _accuracy, (s, yy), g_part, settings, "fraction"
            )
            res.probe[(m, method, "cohens_d")] = _boot(_d, (s, yy), g_part, settings, "SD")

        for src, tgt in (("base", "instruct"), ("instruct", "base")):
            res.transfer[(method, f"transfer_auc_{src}_to_{tgt}")] = _boot(
                auc, (transfer_scores[tgt][part], y_all[part]), g_part, settings, "AUC"
            )
        # The raw cosine of two fitted directions is attenuated by their estimation
        # noise (descriptive); the headline cosine is the split-half one below.
        cos_full = float(
            res.directions[("base", method)].astype(np.float64)
            @ res.directions[("instruct", method)]
        )
        cos_folds = np.einsum("kd,kd->k", fold_u["base"], fold_u["instruct"])
        res.transfer[(method, "cosine_raw")] = _jackknife_interval(
            cos_full, cos_folds, n_groups, "cosine"
        )

        if settings.projection == "full":
            own = {m: Xs[m] @ res.directions[(m, method)].astype(np.float64) for m in MODELS}
            own = {m: p - p.mean() for m, p in own.items()}
            on_base = Xs["instruct"] @ res.directions[("base", method)].astype(np.float64)
            on_base = on_base - on_base.mean()
        else:
            own = oof_proj
            on_base = transfer_scores["instruct"]
        proj = {
            ("base", "own"): own["base"],
            ("instruct", "own"): own["instruct"],
            ("base", "base"): own["base"],
            ("instruct", "base"): on_base,
        }
        for (m, direction), p in proj.items():
            res.projections[(m, method, direction)] = p
        _variance_estimates(res, method, proj, groups, settings)

    sh = split_half_analysis(
        Xs["base"][part], Xs["instruct"][part], y_all[part], groups[part], settings
    )
    _store_split_half(res, sh)

    log.info(
        "layer %d: %s",
        layer,
        ", ".join(
            f"{m}/{meth} AUC {res.probe[(m, meth, 'auc')].value:.3f}"
            for meth in settings.methods
            for m in MODELS
        ),
    )
    return res


def _variance_estimates(res, method, proj, groups, settings):
    """Descriptive spread of the out-of-fold projections (activation units): SD with a
    bootstrap interval, min/max/range without one; and, as a check, the variance ratio
    of those projections (biased when noise is uneven across dimensions: see module)."""
    idx = np.arange(len(groups))
    for (m, direction), p in proj.items():
        if m == "base" and direction == "base":
            continue  # identical to the own-direction rows; added below without recomputation
        key = (m, method, direction)
        res.variance[key + ("sd",)] = _boot(
            lambda i, p=p: float(np.std(p[i], ddof=1)), (idx,), groups, settings, "activation units"
        )
        n_units = len(np.unique(np.asarray(groups).astype(str)))
        for metric, value in (("min", p.min()), ("max", p.max()), ("range", np.ptp(p))):
            res.variance[key + (metric,)] = Estimate(
                float(value), math.nan, math.nan, n_units, "activation units", DESCRIPTIVE_METHOD
            )
    for metric in ("sd", "min", "max", "range"):
        res.variance[("base", method, "base", metric)] = res.variance[
            ("base", method, "own", metric)
        ]
    for direction in ("own", "base"):
        pb, pi = proj[("base", direction)], proj[("instruct", direction)]
        res.variance[("instruct_over_base", method, direction, "projection_variance_ratio")] = (
            _boot(
                lambda i, pb=pb, pi=pi: float(np.var(pi[i], ddof=1) / np.var(pb[i], ddof=1)),
                (idx,),
                groups,
                settings,
                "ratio",
            )
        )


def _sqrt_estimate(e: Estimate) -> Estimate:
    def root(x):
        return math.sqrt(x) if x >= 0 else math.nan

    return Estimate(root(e.value), root(e.lo), root(e.hi), e.n, "ratio", e.method)


def _store_split_half(res: LayerResult, sh: dict[str, Estimate]) -> None:
    """Split-half estimates into the variance/transfer dicts (method "diffmean": they are
    cross products of difference-of-means vectors)."""
    v, meth = res.variance, "diffmean"
    for m in MODELS:
        v[(m, meth, "split_half", "partisan_variance")] = sh[f"partisan_variance_{m}"]
        v[(m, meth, "split_half", "partisan_share")] = sh[f"partisan_share_{m}"]
    v[("instruct", meth, "split_half", "permutation_p")] = sh["permutation_p"]
    ratio = sh["variance_ratio"]
    v[("instruct_over_base", meth, "split_half", "variance_ratio")] = ratio
    v[("instruct_over_base", meth, "split_half", "sd_ratio")] = _sqrt_estimate(ratio)
    v[("instruct_over_base", meth, "split_half", "variance_ratio_noise_floor")] = sh[
        "variance_ratio_noise_floor"
    ]
    v[("instruct_over_base", meth, "base", "variance_ratio")] = sh[
        "variance_ratio_base_direction"
    ]
    res.transfer[(meth, "cosine_base_instruct")] = sh["cosine_base_instruct"]


def analyse_layers(
    layers: Iterable[tuple[int, np.ndarray, np.ndarray]],
    labels: Sequence[str],
    issues: Sequence[str | None] | None,
    *,
    prompt_ids: Sequence[str] | None = None,
    settings: PartisanSettings | None = None,
) -> list[LayerResult]:
    """:func:`analyse_layer` over ``(layer, X_base, X_instruct)`` items (e.g. a generator
    that reads one layer at a time, so only one layer's activations are in memory)."""
    settings = settings or PartisanSettings()
    out = [
        analyse_layer(Xb, Xi, labels, issues, layer=L, prompt_ids=prompt_ids, settings=settings)
        for L, Xb, Xi in layers
    ]
    if not out:
        raise ValueError("no layers to analyse")
    if len({r.layer for r in out}) != len(out):
        raise ValueError(f"duplicate layers: {[r.layer for r in out]}")
    return sorted(out, key=lambda r: r.layer)


# ------------------------------------------------------------------------------ tables


def _est_row(e: Estimate) -> dict:
    return {"value": float(e.value), "lo": float(e.lo), "hi": float(e.hi), "n": int(e.n)}


def probe_table(results: Sequence[LayerResult]) -> pl.DataFrame:
    """Per-layer probe quality: columns model, layer, method, metric (auc/accuracy/cohens_d),
    value, lo, hi, n (n = issues)."""
    rows = [
        {"model": m, "layer": r.layer, "method": meth, "metric": metric, **_est_row(e)}
        for r in results
        for (m, meth, metric), e in r.probe.items()
    ]
    return pl.DataFrame(rows, schema=_schema(["model"], ["method", "metric"]))


def transfer_table(results: Sequence[LayerResult]) -> pl.DataFrame:
    """Per-layer transfer: columns layer, method, metric (transfer_auc_base_to_instruct,
    transfer_auc_instruct_to_base, cosine_raw per method; cosine_base_instruct, the
    split-half disattenuated cosine, under method diffmean), value, lo, hi, n, interval."""
    rows = [
        {"layer": r.layer, "method": meth, "metric": metric, **_est_row(e), "interval": e.method}
        for r in results
        for (meth, metric), e in r.transfer.items()
    ]
    schema = {
        "layer": pl.Int64,
        "method": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "lo": pl.Float64,
        "hi": pl.Float64,
        "n": pl.Int64,
        "interval": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def variance_table(results: Sequence[LayerResult]) -> pl.DataFrame:
    """Per-layer variance compression: columns model (base/instruct/instruct_over_base), layer,
    method, direction, metric, value, lo, hi, n. Rows: descriptive sd/min/max/range of a
    model's projections (direction own/base, per method; min/max/range without interval);
    split-half rows under method diffmean, direction split_half: partisan_variance and
    partisan_share per model, permutation_p (instruct), and for instruct_over_base
    variance_ratio, sd_ratio, variance_ratio_noise_floor; variance_ratio along the base
    direction (direction base); projection_variance_ratio (direction own/base, per
    method), the biased projection check."""
    rows = [
        {
            "model": m,
            "layer": r.layer,
            "method": meth,
            "direction": d,
            "metric": metric,
            **_est_row(e),
        }
        for r in results
        for (m, meth, d, metric), e in r.variance.items()
    ]
    return pl.DataFrame(rows, schema=_schema(["model"], ["method", "direction", "metric"]))


def _schema(before: list[str], after: list[str]) -> dict:
    s = {c: pl.String for c in before}
    s["layer"] = pl.Int64
    s.update({c: pl.String for c in after})
    s.update({"value": pl.Float64, "lo": pl.Float64, "hi": pl.Float64, "n": pl.Int64})
    return s


def projections_table(result: LayerResult) -> pl.DataFrame:
    """Every prompt's centred projection at one layer: columns prompt_id, model, layer, label,
    issue (null if none), method, direction (own/base), projection (activation units).
    The base model's rows appear under both directions (they are the same numbers)."""
    issue = [None if str(g).startswith("__prompt__") else str(g) for g in result.groups]
    frames = []
    for (m, meth, d), p in result.projections.items():
        frames.append(
            pl.DataFrame(
                {
                    "prompt_id": result.prompt_ids.astype(str),
                    "model": m,
                    "layer": result.layer,
                    "label": result.labels.astype(str),
                    "issue": pl.Series(issue, dtype=pl.String),
                    "method": meth,
                    "direction": d,
                    "projection": p.astype(np.float64),
                }
            )
        )
    return pl.concat(frames).with_columns(pl.col("layer").cast(pl.Int64))


def directions_table(results: Sequence[LayerResult]) -> pl.DataFrame:
    """Full-data unit directions for later stages (e.g. steering): columns model, layer,
    method, threshold (activation units), direction (list[float32], length d_model, raw
    activation space, pointing left -> right)."""
    rows = [
        {
            "model": m,
            "layer": r.layer,
            "method": meth,
            "threshold": r.thresholds[(m, meth)],
            "direction": u.tolist(),
        }
        for r in results
        for (m, meth), u in r.directions.items()
    ]
    return pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "layer": pl.Int64,
            "method": pl.String,
            "threshold": pl.Float64,
            "direction": pl.List(pl.Float32),
        },
    )


# ---------------------------------------------------------------------------- headline


MANIFEST_KEYS = ("model", "resolved_revision", "weight_hash", "data_hash", "pool_over",
                 "compute_dtype")
"""Activation-manifest entries the partisan tables carry in their provenance."""


def check_same_pooling(manifests: dict[str, dict]) -> None:
    """Both models' activations must pool the same tokens (``pool_over``): otherwise one
    model's vectors average template tokens the other's do not, and every variance
    comparison is off. ``manifests``: role -> activation manifest."""
    rules = {role: m.get("pool_over", "all (written before pool_over existed)")
             for role, m in manifests.items()}
    if len(set(rules.values())) > 1:
        raise ValueError(
            f"the activation sets were pooled differently ({rules}); re-extract both with the "
            "same extract.pool_over (content pools the user's text only)"
        )


def best_layer(probe: pl.DataFrame, method: str) -> int:
    """Layer with the highest base out-of-fold AUC for ``method``; ties go to the shallower
    layer. ``probe`` is :func:`probe_table`'s output."""
    sub = probe.filter(
        (pl.col("model") == "base") & (pl.col("method") == method) & (pl.col("metric") == "auc")
    ).sort("layer")
    if sub.height == 0:
        raise ValueError(f"probe table has no base AUC rows for method {method!r}")
    vals = sub["value"].fill_nan(-np.inf).to_numpy()
    return int(sub["layer"][int(np.argmax(vals))])


def _best_layer_estimate(
    results: Sequence[LayerResult], method: str, settings: PartisanSettings
) -> Estimate:
    ref = results[0]
    for r in results[1:]:
        if not np.array_equal(r.prompt_ids, ref.prompt_ids):
            raise ValueError(
                f"layer {r.layer} has different prompts (or order) than layer "
                f"{ref.layer}; read every layer with the same prompts"
            )
    part = ref.labels != "neutral"
    y = ref.labels[part] == "right"
    S = np.stack([r.oof_scores[("base", method)][part] for r in results])  # [n_layers, n]
    layers = np.array([r.layer for r in results])

    def pick(i):
        a = np.array([auc(s[i], y[i]) for s in S])
        return float(layers[int(np.argmax(np.where(np.isnan(a), -np.inf, a)))])

    est = bootstrap(
        pick,
        np.arange(part.sum()),
        n_boot=settings.n_boot,
        seed=settings.seed,
        groups=_clusters(ref.groups[part]),
        unit="layer",
    )
    return Estimate(est.value, est.lo, est.hi, est.n, "layer", BOOT_METHOD + " (re-selected)")


def headline(
    results: Sequence[LayerResult], settings: PartisanSettings | None = None
) -> dict[str, Estimate]:
    """Headline numbers of one model pair at the best layer (keys: :data:`HEADLINE_KEYS`)."""
    settings = settings or PartisanSettings()
    results = sorted(results, key=lambda r: r.layer)
    method = settings.headline_method
    L = best_layer(probe_table(results), method)
    r = next(x for x in results if x.layer == L)
    out = {"best_layer": _best_layer_estimate(results, method, settings)}
    for m in MODELS:
        for metric in ("auc", "accuracy", "cohens_d"):
            out[f"{metric}_{m}"] = r.probe[(m, method, metric)]
        out[f"sd_{m}"] = r.variance[(m, method, "own", "sd")]
        out[f"range_{m}"] = r.variance[(m, method, "own", "range")]
        out[f"partisan_share_{m}"] = r.variance[(m, "diffmean", "split_half", "partisan_share")]
    split = ("instruct_over_base", "diffmean", "split_half")
    out["variance_ratio"] = r.variance[split + ("variance_ratio",)]
    out["sd_ratio"] = r.variance[split + ("sd_ratio",)]
    out["variance_ratio_noise_floor"] = r.variance[split + ("variance_ratio_noise_floor",)]
    out["variance_ratio_base_direction"] = r.variance[
        ("instruct_over_base", "diffmean", "base", "variance_ratio")
    ]
    for metric in ("transfer_auc_base_to_instruct", "transfer_auc_instruct_to_base"):
        out[metric] = r.transfer[(method, metric)]
    out["cosine_base_instruct"] = r.transfer[("diffmean", "cosine_base_instruct")]
    missing = set(HEADLINE_KEYS) ^ set(out)
    assert not missing, missing  # HEADLINE_KEYS and this function must agree
    return {k: out[k] for k in HEADLINE_KEYS}
