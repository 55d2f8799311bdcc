"""Stance classifier judge: recovers planted left/right texts on issues it never saw."""

import numpy as np
import polars as pl
import pytest

from rlhf_audit.judge import RESULT_SCHEMA, JudgeSettings, make_judge
from rlhf_audit.stance import StanceClassifier, StanceSettings, heldout_auc, train_stance_classifier

LEFT = ["workers", "equality", "public", "fairness", "climate", "union", "welfare", "rights"]
RIGHT = ["freedom", "markets", "taxes", "family", "liberty", "security", "faith", "business"]
FILLER = ["the", "we", "should", "about", "policy", "people", "country", "government", "it"]


def _planted(n_issues=16, per_side=12, seed=0, shuffle_labels=False):
    """Each issue has its own topic words; the side shows in words shared across issues,
    buried among topic and filler words (2 side words in about 14)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_issues):
        topic = [f"topic{i}w{k}" for k in range(6)]
        for side, words in (("left", LEFT), ("right", RIGHT)):
            for j in range(per_side):
                toks = list(rng.choice(topic, 5)) + list(rng.choice(FILLER, 7))
                toks += list(rng.choice(words, 2))
                rng.shuffle(toks)
                rows.append({"id": f"i{i}-{side}-{j}", "text": " ".join(toks), "label": side,
                             "issue": f"issue{i}"})
        for j in range(3):  # neutral rows are not used for training
            rows.append({"id": f"i{i}-n-{j}", "text": " ".join(rng.choice(topic, 6)),
                         "label": "neutral", "issue": f"issue{i}"})
    df = pl.DataFrame(rows)
    if shuffle_labels:  # the null: side labels permuted within issue
        lab = df["label"].to_numpy().copy()
        for i in range(n_issues):  # a fresh permutation per issue
            idx = np.flatnonzero((df["issue"] == f"issue{i}").to_numpy() & (lab != "neutral"))
            lab[idx] = lab[rng.permutation(idx)]
        df = df.with_columns(pl.Series("label", lab))
    return df


def test_recovers_planted_sides_on_unseen_issues_and_not_under_the_null():
    s = StanceSettings(n_boot=200)
    clf = train_stance_classifier(_planted(seed=0), s)
    assert clf.heldout_auc.lo > 0.9 and clf.heldout_auc.n == 16
    # Fresh issues (new topic words) never seen in training
    new = _planted(n_issues=6, seed=99).with_columns(
        pl.col("text").str.replace_all("topic", "novel"))
    new = new.filter(pl.col("label") != "neutral")
    score = clf.score(new["text"].to_list())
    assert np.all(np.abs(score) <= 1)
    right = (new["label"] == "right").to_numpy()
    assert score[right].mean() > 0.2 and score[~right].mean() < -0.2
    assert (score[right] > 0).mean() > 0.9 and (score[~right] < 0).mean() > 0.9
    # Neutral text (no side words) scores near the middle of the scale
    assert abs(clf.score(["the policy about the country"])[0]) < 0.3
    # Under the null (labels permuted within issue) the held-out AUC sits at chance: a
    # leak across folds (e.g. issues shared between train and test) would push it up
    nulls = [heldout_auc(_planted(seed=k, shuffle_labels=True), s).value for k in range(8)]
    assert abs(np.mean(nulls) - 0.5) < 0.04 and max(nulls) < 0.6


def test_json_round_trip_and_judge_interface(tmp_path):
    clf = train_stance_classifier(_planted(n_issues=6, seed=1), StanceSettings(n_boot=100))
    path = tmp_path / "stance.json"
    clf.save(path)
    back = StanceClassifier.load(path)
    texts = ["workers equality union policy", "freedom markets taxes", "", "unseen words"]
    np.testing.assert_allclose(back.score(texts), clf.score(texts), atol=1e-12)
    # The rebuilt transform equals scikit-learn's fitted pipeline
    from rlhf_audit.stance import _fit

    d = _planted(n_issues=6, seed=1).filter(pl.col("label") != "neutral")
    vec, sk = _fit(d["text"].to_list(), (d["label"] == "right").to_numpy().astype(int),
                   clf.settings)
    np.testing.assert_allclose(clf.decision(texts), sk.decision_function(vec.transform(texts)),
                               atol=1e-9)
    judge = make_judge(JudgeSettings(kind="stance_classifier", classifier_path=str(path)))
    rated = judge.rate(texts, None)
    assert rated.schema == pl.Schema(RESULT_SCHEMA)
    assert rated["judge_ok"].to_list() == [True, True, False, True]
    assert rated["judge_score"][0] < 0 < rated["judge_score"][1]
    np.testing.assert_allclose(rated["judge_rating"].drop_nulls().to_numpy(),
                               4 + 3 * rated["judge_score"].drop_nulls().to_numpy())


def test_bad_statements_are_named():
    with pytest.raises(ValueError, match="stmts.parquet: .*missing"):
        train_stance_classifier(pl.DataFrame({"text": ["a"], "label": ["left"]}),
                                source="stmts.parquet")
    with pytest.raises(ValueError, match="both left and right"):
        train_stance_classifier(_planted(n_issues=3).filter(pl.col("label") != "right"))
    with pytest.raises(ValueError, match="classifier_path"):
        make_judge(JudgeSettings(kind="stance_classifier"))
