"""A stance classifier as a partisanship judge: TF-IDF + logistic regression.

A judge of kind ``stance_classifier`` (config ``steering.judge``) that any user can
pick instead of an LM judge: it is trained on the labelled partisan statements
(label ``left`` or ``right``; ``neutral`` rows are not used) and scores a reply as
``2 * P(right | text) - 1`` in [-1, 1], the LM judge's scale (+ = right, 0 = no
lean; the implied 1-7 rating is ``4 + 3 * score``). Its issue-held-out AUC
(statements of whole issues left out of training, StratifiedGroupKFold by issue)
is reported with it, so a reader sees how well it generalises to issues it never
saw, which is what scoring free-form replies asks of it.

The fitted model is stored as JSON (vocabulary, idf weights, coefficients), not as
a pickle: it loads without executing code and diffs as text. Scoring rebuilds the
TF-IDF transform from those numbers exactly (same tokeniser, sublinear tf, L2 norm).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from rlhf_audit.params import settings_from_params
from rlhf_audit.rating import RESULT_SCHEMA, SCALE_MAX, SCALE_MID
from rlhf_audit.stats import Estimate, bootstrap

log = logging.getLogger(__name__)

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
"""Word tokens of two or more characters (scikit-learn's default)."""


@dataclass(frozen=True)
class StanceSettings:
    """Settings of the stance classifier (config ``steering.judge`` with kind stance_classifier)."""

    ngram_max: int = 2
    """Longest word n-gram used as a feature (1 = words only)."""
    min_df: int = 2
    """An n-gram must occur in at least this many training statements."""
    C: float = 4.0
    """Inverse L2 regularisation strength of the logistic regression."""
    n_folds: int = 5
    """Issue-grouped folds of the held-out AUC."""
    n_boot: int = 1000
    """Bootstrap replicates of the AUC interval (issues resampled)."""
    seed: int = 0
    """Seed of the fold assignment and the bootstrap."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> StanceSettings:
        """From rule train_stance_classifier's ``params.settings`` (``dataset``, the
        statements' config key, is the rule's input, not a setting)."""
        return settings_from_params(cls, params, ignore=("dataset",))


def _check_statements(df: pl.DataFrame, source: str) -> pl.DataFrame:
    missing = {"text", "label", "issue"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{source}: labelled statements need columns text, label, issue; missing "
            f"{sorted(missing)} (the partisan format: {{id, text, label, issue}})"
        )
    d = df.filter(pl.col("label").is_in(["left", "right"]))
    if d.filter(pl.col("label") == "left").height == 0 or d.filter(
        pl.col("label") == "right"
    ).height == 0:
        raise ValueError(f"{source}: the stance classifier needs both left and right statements")
    if d["issue"].null_count():
        raise ValueError(f"{source}: every left/right statement needs an issue (the AUC holds "
                         "whole issues out)")
    if d["issue"].n_unique() < 2:
        raise ValueError(f"{source}: statements of at least 2 issues are needed for an "
                         "issue-held-out AUC")
    return d


def _fit(texts: Sequence[str], y: np.ndarray, s: StanceSettings):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(
        ngram_range=(1, s.ngram_max), min_df=s.min_df, sublinear_tf=True,
        token_pattern=TOKEN_PATTERN, lowercase=True, norm="l2",
    )
    X = vec.fit_transform(list(texts))
    clf = LogisticRegression(C=s.C, max_iter=2000).fit(X, y)
    return vec, clf


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


@dataclass(frozen=True)
class StanceClassifier:
    """A fitted TF-IDF + logistic-regression stance model (see module doc)."""

    vocabulary: dict[str, int]
    """n-gram -> column."""
    idf: np.ndarray
    """Inverse document frequency per column [n_features]."""
    coef: np.ndarray
    """Logistic-regression weights per column [n_features] (+ = right)."""
    intercept: float
    """Logistic-regression intercept."""
    settings: StanceSettings
    """How it was fitted."""
    heldout_auc: Estimate | None = None
    """Issue-held-out AUC of right vs left (interval: issues resampled)."""

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """Log-odds of right vs left per text [n]."""
        from sklearn.feature_extraction.text import CountVectorizer

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros(0)
        cv = CountVectorizer(
            ngram_range=(1, self.settings.ngram_max), token_pattern=TOKEN_PATTERN,
            lowercase=True, vocabulary=self.vocabulary,
        )
        tf = cv.transform(texts).astype(np.float64)
        tf.data = 1.0 + np.log(tf.data)  # sublinear tf, as fitted
        X = tf.multiply(self.idf[None, :]).tocsr()
        nrm = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        z = np.asarray(X @ self.coef).ravel()
        z = np.divide(z, nrm, out=np.zeros_like(z), where=nrm > 0)
        return z + self.intercept

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Partisanship in [-1, 1] per text: 2 P(right) - 1 (+ = right)."""
        return 2.0 / (1.0 + np.exp(-self.decision(texts))) - 1.0

    def to_json(self) -> dict:
        return {
            "kind": "stance_classifier",
            "settings": asdict(self.settings),
            "intercept": float(self.intercept),
            "vocabulary": self.vocabulary,
            "idf": self.idf.tolist(),
            "coef": self.coef.tolist(),
            "heldout_auc": None if self.heldout_auc is None else self.heldout_auc.to_dict(),
        }

    @classmethod
    def from_json(cls, d: dict, source: str = "stance classifier") -> StanceClassifier:
        try:
            auc = d.get("heldout_auc")
            est = None
            if auc:
                est = Estimate(*(float("nan") if auc[k] is None else auc[k]
                                 for k in ("value", "lo", "hi")), auc["n"], auc.get("unit", ""))
            return cls({str(k): int(v) for k, v in d["vocabulary"].items()},
                       np.asarray(d["idf"], float), np.asarray(d["coef"], float),
                       float(d["intercept"]), StanceSettings(**d["settings"]), est)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: not a stance classifier file ({err}); rerun "
                             "train_stance_classifier") from None

    def save(self, path: str | os.PathLike) -> None:
        from rlhf_audit.io import write_json

        write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StanceClassifier:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f), str(path))


def heldout_auc(statements: pl.DataFrame, settings: StanceSettings = StanceSettings(),
                source: str = "statements") -> Estimate:
    """AUC of right vs left on statements of issues held out of training.

    Out-of-fold scores from ``settings.n_folds`` issue-grouped folds, pooled into one
    AUC; the interval resamples issues with the out-of-fold scores kept fixed, so it
    leaves out the variation of refitting (it is a little narrow).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    d = _check_statements(statements, source)
    texts, y = d["text"].to_list(), (d["label"] == "right").to_numpy().astype(int)
    issues = d["issue"].to_numpy()
    k = min(settings.n_folds, len(np.unique(issues)))
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=settings.seed)
    oof = np.full(len(y), np.nan)
    for tr, te in folds.split(texts, y, issues):
        vec, clf = _fit([texts[i] for i in tr], y[tr], settings)
        oof[te] = clf.decision_function(vec.transform([texts[i] for i in te]))
    return bootstrap(_auc, y, oof, groups=issues, n_boot=settings.n_boot, seed=settings.seed,
                     unit="AUC")


def train_stance_classifier(statements: pl.DataFrame,
                            settings: StanceSettings = StanceSettings(),
                            source: str = "statements") -> StanceClassifier:
    """Fit on every left/right statement, with its issue-held-out AUC attached."""
    d = _check_statements(statements, source)
    auc = heldout_auc(d, settings, source)
    vec, clf = _fit(d["text"].to_list(), (d["label"] == "right").to_numpy().astype(int),
                    settings)
    log.info("stance classifier: %d n-grams, issue-held-out AUC %.3f [%.3f, %.3f] over %d "
             "issues", len(vec.vocabulary_), auc.value, auc.lo, auc.hi, auc.n)
    return StanceClassifier({str(k): int(v) for k, v in vec.vocabulary_.items()},
                            np.asarray(vec.idf_, float), np.asarray(clf.coef_[0], float),
                            float(clf.intercept_[0]), settings, auc)


class StanceJudge:
    """The classifier behind the judge interface: ``rate(texts, questions) -> DataFrame``."""

    def __init__(self, classifier: StanceClassifier):
        self.classifier = classifier

    def rate(self, texts: Sequence[str], questions: Sequence[str] | None = None) -> pl.DataFrame:
        """One row per text (the judge's RESULT_SCHEMA). An empty reply is a failure (it
        has no stance to read); every other text gets a score."""
        texts = [str(t) for t in texts]
        s = self.classifier.score(texts)
        empty = [not t.strip() for t in texts]
        return pl.DataFrame(
            {
                "judge_score": [None if e else float(v) for v, e in zip(s, empty, strict=True)],
                "judge_rating": [None if e else float(SCALE_MID + (SCALE_MAX - SCALE_MID) * v)
                                 for v, e in zip(s, empty, strict=True)],
                "judge_ok": [not e for e in empty],
                "judge_reply": [f"p(right)={(v + 1) / 2:.3f}" for v in s],
                "judge_error": ["empty reply" if e else None for e in empty],
            },
            schema=RESULT_SCHEMA,
        )


__all__ = [
    "StanceClassifier",
    "StanceJudge",
    "StanceSettings",
    "heldout_auc",
    "train_stance_classifier",
]
