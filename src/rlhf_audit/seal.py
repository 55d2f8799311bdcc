"""SEAL: systematic error analysis of reward models (Revel et al., 2024; PAPERS.md C).

Two reward models score every chosen and rejected transcript of a preference
dataset: "pre" (not trained on it) and "post" (trained on it). With per-text
feature labels (:mod:`rlhf_audit.labelling`) this module measures:

- agreement with the human preference, 1[r(chosen) > r(rejected)] (ties count
  as disagreement), pre and post, and the pre -> post alignment regimes;
- alignment resistance (share of pairs the post RM still gets wrong), overall
  and per LM-labeller preference stratum gamma;
- feature imprint: OLS of reward on the feature labels at the text level (two
  rows per pair) with pair-clustered CR1 standard errors and Bonferroni
  correction, for post, pre and the shift post - pre;
- the reward-shift angle theta per pair and its regression on the chosen- and
  rejected-text features;
- alignment robustness on rewritten pairs: agreement before/after, Pearson r
  of original vs rewritten rewards, semantic similarity, and a linear
  probability model of "became misaligned" on feature-flip indicators.

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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as sps
from scipy.linalg import cho_factor, cho_solve

from rlhf_audit.labelling import DEFAULT_FEATURES, SIDES
from rlhf_audit.progress import progress
from rlhf_audit.stats import Estimate, bootstrap

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


class TranscriptError(ValueError):
    """A transcript without an Assistant turn; the message names the row."""


@dataclass(frozen=True)
class ScoringSettings:
    """How transcripts are fed to a reward model."""

    batch_size: int = 32
    """Texts per forward pass (batches are formed after sorting by length)."""
    max_length: int = 512
    """Longest input in tokens, special tokens included."""
    marker: str = "Assistant:"
    """Transcripts are split at the last occurrence of this string."""
    keep_marker: bool = True
    """Keep the marker at the start of the last turn, as SEAL's scoring code did."""


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
    robustness_population: str = "aligned"
    """Rows of the flip LPM: 'aligned' (pairs the RM got right before rewriting, so the
    outcome is P(misaligned after | aligned before)) or 'all' (every rewritten pair)."""

    def __post_init__(self):
        if self.robustness_rm not in ("pre", "post"):
            raise ValueError(f"robustness_rm must be 'pre' or 'post', got {self.robustness_rm!r}")
        if self.robustness_population not in ("aligned", "all"):
            raise ValueError("robustness_population must be 'aligned' or 'all', got "
                             f"{self.robustness_population!r}")
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


# =========================================================================== scoring


def split_transcript(text: str, *, row: object = None, marker: str = "Assistant:",
                     keep_marker: bool = True) -> tuple[str, str]:
    """(prefix, last_turn) of a transcript, split at the last ``marker``.

    With ``keep_marker`` (SEAL's choice) the last turn starts with the marker,
    e.g. ``("\\n\\nHuman: hi\\n\\n", "Assistant: hello")``. ``row`` names the
    transcript in the error raised when the marker is absent.
    """
    if not isinstance(text, str):
        raise TranscriptError(f"{_row_name(row)}: transcript is {type(text).__name__}, not text")
    idx = text.rfind(marker)
    if idx < 0:
        raise TranscriptError(f"{_row_name(row)}: no '{marker}' turn in the transcript "
                              f"(starts {text[:60]!r}). Each transcript must end with an "
                              "Assistant turn: '\\n\\nHuman: ...\\n\\nAssistant: ...'.")
    last = text[idx:] if keep_marker else text[idx + len(marker):].lstrip()
    return text[:idx], last


def _row_name(row) -> str:
    return "transcript" if row is None else f"row {row}"


def _plain_backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer",
                                                                      None)
    if backend is None or not hasattr(backend, "post_process"):
        raise TypeError(f"{type(tokenizer).__name__} has no Rust `tokenizers` backend; score_texts "
                        "needs a fast tokenizer (the default for every model in transformers 5)")
    from tokenizers import Tokenizer

    # A private copy, so the caller's truncation/padding settings neither apply nor change.
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _encode_pairs(tokenizer, prefixes: Sequence[str], responses: Sequence[str], max_length: int):
    plain = _plain_backend(tokenizer)
    n_special = plain.num_special_tokens_to_add(True)
    budget = max_length - n_special
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room for text after {n_special} "
                         "special tokens")
    enc_p = plain.encode_batch(list(prefixes), add_special_tokens=False)
    enc_r = plain.encode_batch(list(responses), add_special_tokens=False)
    out = []
    n_cut = 0
    for ep, er in zip(enc_p, enc_r, strict=True):
        lp, lr = len(ep.ids), len(er.ids)
        if lp + lr > budget:
            n_cut += 1
            # Keep the whole response when it fits and cut the oldest context first; a response
            # too long for that keeps its start and the last quarter-budget of context.
            keep_p = min(lp, max(budget - lr, budget // 4))
            keep_r = min(lr, budget - keep_p)
            ep.truncate(keep_p, 0, "left")
            er.truncate(keep_r, 0, "right")
        out.append(plain.post_process(ep, er, add_special_tokens=True))
    if n_cut:
        log.info("%d of %d inputs longer than %d tokens: context cut from the left", n_cut,
                 len(out), max_length)
    return out


def score_texts(model, tokenizer, prefixes: Sequence[str], responses: Sequence[str], *,
                batch_size: int = 32, max_length: int = 512) -> np.ndarray:
    """Rewards of (prefix, response) text pairs: the single logit of a sequence classifier.

    Each input is the tokenizer's pair encoding of (prefix, response), as SEAL
    fed its reward models. Inputs longer than ``max_length`` tokens lose the
    *start of the prefix* (the oldest turns), because the final response and
    the turn it answers matter most; only a response that cannot fit with a
    quarter of the budget of context is cut itself (from its end). Batches are
    formed after sorting by length and right-padded (DeBERTa reads position 0,
    Llama the last non-pad token); output order is the input order.

    Returns float64 ``[n_texts]``.
    """
    import torch

    if len(prefixes) != len(responses):
        raise ValueError(f"{len(prefixes)} prefixes but {len(responses)} responses")
    n = len(prefixes)
    if n == 0:
        return np.zeros(0)
    pad_id = getattr(model.config, "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("neither the model config nor the tokenizer has a pad token id; set "
                         "model.config.pad_token_id (rlhf_audit.models.load_reward_model does)")
    encs = _encode_pairs(tokenizer, prefixes, responses, max_length)
    use_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    order = sorted(range(n), key=lambda i: len(encs[i].ids), reverse=True)
    device = next(model.parameters()).device
    out = np.empty(n, dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in progress(range(0, n, batch_size), desc="reward scores", unit="batch"):
                idx = order[s:s + batch_size]
                # Right padding to the longest sequence of this batch only.
                width = max(len(encs[i].ids) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                types = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    e = encs[i]
                    ids[row, :len(e.ids)] = torch.tensor(e.ids)
                    mask[row, :len(e.ids)] = 1
                    types[row, :len(e.ids)] = torch.tensor(e.type_ids)
                kw = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                if use_types:
                    kw["token_type_ids"] = types.to(device)
                logits = model(**kw).logits
                if logits.shape[-1] != 1:
                    raise ValueError(f"the reward model outputs {logits.shape[-1]} logits per "
                                     "text; it must have num_labels=1")
                out[idx] = logits[:, 0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def score_pairs(model, tokenizer, pairs: pl.DataFrame,
                settings: ScoringSettings = ScoringSettings()) -> pl.DataFrame:
    """Rewards of both sides of every pair: DataFrame[pair_id, r_chosen, r_rejected].

    ``pairs`` has pair_id, chosen, rejected (full transcripts); both sides are
    split with :func:`split_transcript` and scored in one length-sorted pass.
    """
    prefixes, responses = [], []
    for pid, c, r in pairs.select("pair_id", "chosen", "rejected").iter_rows():
        for side, text in (("chosen", c), ("rejected", r)):
            p, t = split_transcript(text, row=f"pair_id {pid!r} ({side})", marker=settings.marker,
                                    keep_marker=settings.keep_marker)
            prefixes.append(p)
            responses.append(t)
    r = score_texts(model, tokenizer, prefixes, responses, batch_size=settings.batch_size,
                    max_length=settings.max_length)
    return pl.DataFrame({"pair_id": pairs["pair_id"].cast(pl.String),
                         "r_chosen": r[0::2], "r_rejected": r[1::2]})


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
        raise ValueError(f"pairs table lacks column(s) {missing}; see rlhf_audit.seal docstring")
    if pairs.height == 0:
        raise ValueError("pairs table is empty")
    for c in cols:
        bad = pairs.filter(pl.col(c).is_null() | ~pl.col(c).cast(pl.Float64).is_finite())
        if bad.height:
            raise ValueError(f"pairs table: column {c} is null or not finite for pair_id "
                             f"{bad['pair_id'][0]!r} ({bad.height} rows); rescore those pairs")


def agreement_indicator(pairs: pl.DataFrame, rm: str) -> np.ndarray:
    """1[r_rm(chosen) > r_rm(rejected)] per pair, int8 ``[n_pairs]`` (ties: 0)."""
    c = pairs[f"r_{rm}_chosen"].to_numpy().astype(float)
    r = pairs[f"r_{rm}_rejected"].to_numpy().astype(float)
    return (c > r).astype(np.int8)


def _mean(a):
    return float(np.mean(a)) if len(a) else float("nan")


def agreement(pairs: pl.DataFrame, settings: SealSettings = SealSettings()) -> dict[str, Estimate]:
    """agreement_pre, agreement_post (shares of pairs) and agreement_gain (post - pre)."""
    _check_rewards(pairs)
    pre, post = agreement_indicator(pairs, "pre"), agreement_indicator(pairs, "post")
    kw = {"n_boot": settings.n_boot, "seed": settings.seed, "confidence": settings.confidence}
    return {
        "agreement_pre": bootstrap(_mean, pre, unit="share", **kw),
        "agreement_post": bootstrap(_mean, post, unit="share", **kw),
        "agreement_gain": bootstrap(lambda a, b: _mean(a) - _mean(b), post, pre, unit="share",
                                    **kw),
    }


def regime_labels(pairs: pl.DataFrame) -> np.ndarray:
    """Alignment regime of each pair, pre -> post: one of REGIMES' keys, ``[n_pairs]``."""
    pre, post = agreement_indicator(pairs, "pre"), agreement_indicator(pairs, "post")
    out = np.empty(len(pre), dtype=object)
    out[(pre == 1) & (post == 1)] = "stayed_aligned"
    out[(pre == 0) & (post == 1)] = "got_aligned"
    out[(pre == 0) & (post == 0)] = "resisted"
    out[(pre == 1) & (post == 0)] = "reversed"
    return out


def alignment_regimes(pairs: pl.DataFrame,
                      settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Shares of the four regimes: DataFrame[regime, description, count, share, lo, hi, n_pairs].

    Each share has a percentile bootstrap interval over pairs (same resamples
    for all four, so they stay consistent).
    """
    _check_rewards(pairs)
    lab = regime_labels(pairs)
    rows = []
    for reg, desc in REGIMES.items():
        ind = (lab == reg).astype(np.int8)
        e = bootstrap(_mean, ind, n_boot=settings.n_boot, seed=settings.seed,
                      confidence=settings.confidence, unit="share")
        rows.append({"regime": reg, "description": desc, "count": int(ind.sum()),
                     "share": e.value, "lo": e.lo, "hi": e.hi, "n_pairs": e.n})
    return pl.DataFrame(rows)


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
    then GAMMA_STRATA's keys; pairs whose gamma labels are missing count only
    in 'all' (their number is in the 'labels_missing' row, with no estimate).
    """
    _check_rewards(pairs)
    wrong = 1 - agreement_indicator(pairs, "post")
    kw = {"n_boot": settings.n_boot, "seed": settings.seed, "confidence": settings.confidence}
    e = bootstrap(_mean, wrong, unit="share", **kw)
    rows = [{"stratum": "all", "description": "every pair", "n_pairs": e.n, "resistance": e.value,
             "lo": e.lo, "hi": e.hi}]
    have_labels = all(f"{s}_{f}" in pairs.columns for s in SIDES for f in settings.gamma_features)
    if have_labels:
        gamma = labeller_preference(pairs, settings.gamma_features)
        for st, desc in GAMMA_STRATA.items():
            sel = wrong[gamma == st]
            e = bootstrap(_mean, sel, unit="share", **kw) if len(sel) else \
                Estimate(math.nan, math.nan, math.nan, 0, "share")
            rows.append({"stratum": st, "description": desc, "n_pairs": e.n,
                         "resistance": e.value, "lo": e.lo, "hi": e.hi})
        n_miss = int(sum(g is None for g in gamma))
        rows.append({"stratum": "labels_missing", "description": "pairs without gamma labels",
                     "n_pairs": n_miss, "resistance": math.nan, "lo": math.nan, "hi": math.nan})
    return pl.DataFrame(rows)


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


def feature_imprint(pairs: pl.DataFrame, settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Feature imprint: reward ~ feature labels, text level, pair-clustered CR1, Bonferroni.

    Two rows per pair (the chosen and the rejected text, each with its own
    labels and reward); outcomes 'post' (r_post), 'pre' (r_pre) and 'shift'
    (r_post - r_pre). Pairs with a missing label are left out (counted in
    n_pairs_excluded). Columns: outcome, term, role (target/spoiler/other/
    intercept), then those of :func:`ols_clustered`, then n_pairs_excluded.
    """
    feats = settings.regressors
    cols = [f"{s}_{f}" for s in SIDES for f in feats]
    _check_rewards(pairs)
    ok = _complete_pairs(pairs, cols, "feature imprint")
    n_excl = pairs.height - ok.height
    X = np.vstack([ok.select([f"{s}_{f}" for f in feats]).cast(pl.Float64).to_numpy()
                   for s in SIDES])
    groups = np.concatenate([np.arange(ok.height)] * 2)
    r = {rm: np.concatenate([ok[f"r_{rm}_{s}"].cast(pl.Float64).to_numpy() for s in SIDES])
         for rm in ("pre", "post")}
    ys = {"post": r["post"], "pre": r["pre"], "shift": r["post"] - r["pre"]}
    tables = []
    for outcome in IMPRINT_OUTCOMES:
        t = ols_clustered(X, ys[outcome], feats, groups, confidence=settings.confidence)
        tables.append(t.with_columns(pl.lit(outcome).alias("outcome")))
    out = pl.concat(tables)
    roles = {f: settings.role(f) for f in feats} | {"intercept": "intercept"}
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


def shift_angle_regression(pairs: pl.DataFrame,
                           settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """theta (degrees) ~ chosen-text and rejected-text features, one row per pair.

    Terms 'chosen_<f>' and 'rejected_<f>' (role from the feature); robust HC1
    errors (each pair its own cluster), Bonferroni over all terms. Columns as
    :func:`ols_clustered` plus role and n_pairs_excluded.
    """
    _check_rewards(pairs)
    feats = settings.regressors
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
    """Per-pair view: pair_id, agree_pre, agree_post, regime, gamma (null if labels
    missing or absent), theta_deg."""
    _check_rewards(pairs)
    has = all(f"{s}_{f}" in pairs.columns for s in SIDES for f in settings.gamma_features)
    gamma = labeller_preference(pairs, settings.gamma_features) if has else \
        np.full(pairs.height, None, dtype=object)
    theta = reward_shift_angle(*(pairs[c].to_numpy() for c in REWARD_COLUMNS))
    return pl.DataFrame({
        "pair_id": pairs["pair_id"].cast(pl.String),
        "agree_pre": agreement_indicator(pairs, "pre"),
        "agree_post": agreement_indicator(pairs, "post"),
        "regime": pl.Series(regime_labels(pairs).tolist(), dtype=pl.String),
        "gamma": pl.Series(gamma.tolist(), dtype=pl.String),
        "theta_deg": theta,
    })


# =========================================================================== robustness


def select_rewrite_pairs(pair_ids: Sequence[str], share: float, seed: int = 0) -> list[str]:
    """A reproducible random ``share`` of pair ids to rewrite (at least one when share > 0).

    The draw depends on the set of ids and the seed, not on their order.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"rewrite share must be in [0, 1], got {share}")
    ids = sorted({str(p) for p in pair_ids})
    k = min(len(ids), max(1, round(share * len(ids)))) if share > 0 else 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=k, replace=False) if k else np.zeros(0, int)
    return [ids[i] for i in sorted(pick)]


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


def _pearson(a, b):
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def robustness_summary(original: pl.DataFrame, rewritten: pl.DataFrame,
                       settings: SealSettings = SealSettings(),
                       similarity: pl.DataFrame | None = None) -> dict[str, Estimate]:
    """Agreement before/after rewriting, reward correlation and semantic similarity.

    ``rewritten`` is a pairs table (same columns) for the rewritten subset;
    ``original`` the full pairs table. ``similarity`` has pair_id, sim_chosen,
    sim_rejected (cosines, e.g. from :func:`semantic_similarity`). Keys:
    agreement_{pre,post}_{original,rewritten,drop} (drop = original -
    rewritten, paired bootstrap over pairs), rewrite_reward_r{,_pre} (Pearson r
    of original vs rewritten rewards, both sides stacked, pair-cluster
    bootstrap) and rewrite_similarity (mean cosine over texts).
    """
    orig, rew = _matched(original, rewritten)
    kw = {"n_boot": settings.n_boot, "seed": settings.seed, "confidence": settings.confidence}
    out: dict[str, Estimate] = {}
    for rm in ("pre", "post"):
        a, b = agreement_indicator(orig, rm), agreement_indicator(rew, rm)
        out[f"agreement_{rm}_original"] = bootstrap(_mean, a, unit="share", **kw)
        out[f"agreement_{rm}_rewritten"] = bootstrap(_mean, b, unit="share", **kw)
        out[f"agreement_{rm}_drop"] = bootstrap(lambda x, y: _mean(x) - _mean(y), a, b,
                                                unit="share", **kw)
        x = np.concatenate([orig[f"r_{rm}_{s}"].to_numpy() for s in SIDES]).astype(float)
        y = np.concatenate([rew[f"r_{rm}_{s}"].to_numpy() for s in SIDES]).astype(float)
        groups = np.concatenate([np.arange(orig.height)] * 2)
        key = "rewrite_reward_r" if rm == "post" else "rewrite_reward_r_pre"
        out[key] = bootstrap(_pearson, x, y, groups=groups, unit="r", **kw)
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
                    features: Sequence[str]) -> pl.DataFrame:
    """pair_id, flip_<side>_<f> = 1 where rewriting changed the label (null if either missing)."""
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
            cols[f"flip_{s}_{f}"] = (a != b).cast(pl.Int8)
    return pl.DataFrame(cols)


def robustness_flip_regression(original: pl.DataFrame, rewritten: pl.DataFrame,
                               settings: SealSettings = SealSettings()) -> pl.DataFrame:
    """Robustness scores: LPM of "became misaligned" on feature-flip indicators.

    Outcome per rewritten pair: 1 if the ``robustness_rm`` agreed with the human
    before rewriting and disagrees after. With robustness_population 'aligned'
    only pairs it agreed on before enter (so the coefficients are changes in
    P(misaligned after | aligned before)); with 'all' every rewritten pair.
    Regressors flip_<side>_<f>; HC1 robust errors (one row per pair),
    Bonferroni. Columns of :func:`ols_clustered` plus role, feature, side,
    population, n_pairs_excluded.
    """
    feats = settings.regressors
    flips = flip_indicators(original, rewritten, feats)
    orig, rew = _matched(original, rewritten)
    rm = settings.robustness_rm
    before, after = agreement_indicator(orig, rm), agreement_indicator(rew, rm)
    y = ((before == 1) & (after == 0)).astype(float)
    df = flips.with_columns(pl.Series("y", y), pl.Series("before", before))
    if settings.robustness_population == "aligned":
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
        pl.lit(n_excl, dtype=pl.Int64).alias("n_pairs_excluded"),
    )


# =========================================================================== headline


HEADLINE_KEYS: dict[str, str] = {
    "agreement_pre": "share of pairs where the pre RM scores the chosen text above the rejected",
    "agreement_post": "share of pairs where the post RM scores the chosen text above the rejected",
    "agreement_gain": "agreement_post - agreement_pre",
    "regime_stayed_aligned": "share of pairs aligned before and after training (pre and post)",
    "regime_got_aligned": "share of pairs misaligned pre and aligned post",
    "regime_resisted": "share of pairs misaligned pre and post",
    "regime_reversed": "share of pairs aligned pre and misaligned post",
    "alignment_resistance": "share of pairs the post RM still gets wrong",
    "alignment_resistance_chosen_better": (
        "alignment resistance among pairs where the LM labeller prefers the chosen text"),
    "alignment_resistance_rejected_better": (
        "alignment resistance among pairs where the LM labeller prefers the rejected text"),
    "alignment_resistance_indifferent": (
        "alignment resistance among pairs the LM labeller ranks equal"),
    "imprint_post_{feature}": (
        "post RM reward per unit of the feature label (text-level OLS, pair-clustered CR1)"),
    "imprint_shift_{feature}": (
        "change in reward (post - pre) per unit of the feature label (text-level OLS, CR1)"),
    "agreement_post_rewritten": "post RM agreement on the rewritten pairs",
    "agreement_post_rewrite_drop": (
        "post RM agreement on the original minus on the rewritten version of the same pairs"),
    "agreement_pre_rewritten": "pre RM agreement on the rewritten pairs",
    "agreement_pre_rewrite_drop": (
        "pre RM agreement on the original minus on the rewritten version of the same pairs"),
    "rewrite_reward_r": "Pearson r of post RM rewards, original vs rewritten texts",
    "rewrite_similarity": "mean embedding cosine of original and rewritten texts",
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


def _imprint_estimate(row: Mapping, confidence: float) -> Estimate:
    if row.get("dropped") or row.get("coef") is None:
        return Estimate(math.nan, math.nan, math.nan, int(row["n_clusters"]), "reward/label",
                        "dropped: constant or collinear")
    return Estimate(row["coef"], row["lo"], row["hi"], int(row["n_clusters"]), "reward/label",
                    f"CR1 pair-clustered t interval, {confidence:.0%}")


def headline(pairs: pl.DataFrame, settings: SealSettings = SealSettings(), *,
             imprint: pl.DataFrame | None = None, rewritten: pl.DataFrame | None = None,
             similarity: pl.DataFrame | None = None) -> dict[str, Estimate]:
    """Every SEAL headline number (keys: :func:`headline_keys`).

    ``imprint`` (from :func:`feature_imprint`) is computed when not given and
    when the pairs table has labels; robustness keys need ``rewritten`` (and
    rewrite_similarity needs ``similarity``). n is the number of pairs.
    """
    out = dict(agreement(pairs, settings))
    for row in alignment_regimes(pairs, settings).iter_rows(named=True):
        out[f"regime_{row['regime']}"] = Estimate(row["share"], row["lo"], row["hi"],
                                                  row["n_pairs"], "share")
    for row in alignment_resistance(pairs, settings).iter_rows(named=True):
        if row["stratum"] == "labels_missing":
            continue
        key = "alignment_resistance" + ("" if row["stratum"] == "all" else f"_{row['stratum']}")
        out[key] = Estimate(row["resistance"], row["lo"], row["hi"], row["n_pairs"], "share")
    has_labels = all(f"{s}_{f}" in pairs.columns for s in SIDES for f in settings.regressors)
    if imprint is None and has_labels:
        imprint = feature_imprint(pairs, settings)
    if imprint is not None:
        for row in imprint.filter(pl.col("outcome").is_in(["post", "shift"]) &
                                  (pl.col("term") != "intercept")).iter_rows(named=True):
            out[f"imprint_{row['outcome']}_{row['term']}"] = _imprint_estimate(
                row, settings.confidence)
    if rewritten is not None:
        rob = robustness_summary(pairs, rewritten, settings, similarity)
        for rm in ("pre", "post"):
            out[f"agreement_{rm}_rewritten"] = rob[f"agreement_{rm}_rewritten"]
            out[f"agreement_{rm}_rewrite_drop"] = rob[f"agreement_{rm}_drop"]
        out["rewrite_reward_r"] = rob["rewrite_reward_r"]
        if "rewrite_similarity" in rob:
            out["rewrite_similarity"] = rob["rewrite_similarity"]
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


# =========================================================================== figures

_ROLE_COLOURS = {"target": "#1f77b4", "spoiler": "#d62728", "other": "#7f7f7f"}


def plot_imprint(imprint: pl.DataFrame, png_path: str | os.PathLike,
                 outcomes: Sequence[str] = ("post", "shift")) -> None:
    """Imprint coefficients with 95% (bar) and Bonferroni (thin) intervals, one panel per
    outcome; colour = target/spoiler/other; filled marker = Bonferroni-significant."""
    from rlhf_audit.plotting import new_figure, save_figure

    terms = imprint.filter(pl.col("term") != "intercept")
    feats = list(dict.fromkeys(terms["term"].to_list()))
    fig, axes = new_figure(ncols=len(outcomes), width=4.2, height=0.28 * len(feats) + 1.4)
    for ax, outcome in zip(axes[0], outcomes, strict=True):
        sub = {r["term"]: r for r in terms.filter(pl.col("outcome") == outcome)
               .iter_rows(named=True)}
        for yi, f in enumerate(feats):
            r = sub.get(f)
            if r is None or r["dropped"]:
                continue
            col = _ROLE_COLOURS.get(r["role"], "#7f7f7f")
            ax.plot([r["lo_bonferroni"], r["hi_bonferroni"]], [yi, yi], color=col, lw=0.8)
            ax.plot([r["lo"], r["hi"]], [yi, yi], color=col, lw=2.5)
            ax.plot(r["coef"], yi, "o", color=col,
                    mfc=col if r["significant"] else "white")
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(range(len(feats)), feats)
        ax.invert_yaxis()
        ax.set_title({"post": "post RM", "pre": "pre RM", "shift": "shift (post - pre)"}
                     .get(outcome, outcome))
        ax.set_xlabel("reward per unit of label")
    handles = [axes[0][0].plot([], [], "o", color=c, label=k)[0]
               for k, c in _ROLE_COLOURS.items()]
    axes[0][-1].legend(handles=handles, frameon=False, loc="best")
    save_figure(fig, png_path)


def plot_regimes(regimes: pl.DataFrame, png_path: str | os.PathLike) -> None:
    """Bar chart of the four alignment-regime shares with their 95% intervals."""
    from rlhf_audit.plotting import new_figure, save_figure

    fig, axes = new_figure(width=4.6)
    ax = axes[0][0]
    x = np.arange(regimes.height)
    share = regimes["share"].to_numpy()
    err = np.vstack([share - regimes["lo"].to_numpy(), regimes["hi"].to_numpy() - share])
    ax.bar(x, share, color=["#2ca02c", "#1f77b4", "#d62728", "#ff7f0e"][:len(x)],
           yerr=np.nan_to_num(err), capsize=3)
    ax.set_xticks(x, [r.replace("_", " ") for r in regimes["regime"].to_list()])
    ax.set_ylabel("share of pairs")
    ax.set_ylim(0, max(1e-9, float(np.nanmax(regimes["hi"].to_numpy()))) * 1.15)
    save_figure(fig, png_path)


def plot_robustness(robustness: Mapping[str, Estimate], png_path: str | os.PathLike) -> None:
    """Agreement on the original vs the rewritten pairs, pre and post RM, with 95% intervals."""
    from rlhf_audit.plotting import new_figure, save_figure

    fig, axes = new_figure(width=4.2)
    ax = axes[0][0]
    if not robustness:
        # Say so in the figure rather than leave a hole in the report.
        ax.text(0.5, 0.5, "robustness not run:\nno rewrites configured (reward.rewrite.kind)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        save_figure(fig, png_path)
        return
    w = 0.38
    for k, (version, col) in enumerate((("original", "#1f77b4"), ("rewritten", "#ff7f0e"))):
        es = [robustness[f"agreement_{rm}_{version}"] for rm in ("pre", "post")]
        vals = np.array([e.value for e in es])
        err = np.array([[e.value - e.lo for e in es], [e.hi - e.value for e in es]])
        ax.bar(np.arange(2) + (k - 0.5) * w, vals, w, yerr=np.nan_to_num(err), capsize=3,
               color=col, label=version)
    ax.set_xticks(range(2), ["pre RM", "post RM"])
    ax.set_ylabel("agreement with human preference")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False)
    save_figure(fig, png_path)
