"""The diffing study's partisan direction lives where its decoders live: fitted on the paired
file's own statements (in the pair's reading context), and the steering scorer's on the
scorer's own reading of the statements. Planted directions, recovered."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rlhf_audit.diffing.inputs import context_direction, cosine
from rlhf_audit.diffing.paired import statement_means, write_paired


def _unit(v):
    return v / np.linalg.norm(v)


def _planted(tmp_path, *, d=512, n_st=480, a=1.5, seed=0, labels=None, name="p",
             row_group_rows=7):
    """Statements (alternating right/left, 12 issues with both sides) of 1-30 tokens, right
    ones longer on average, whose base vectors lean +/- a along u and instruct vectors along
    w (orthogonal to u), over a decaying noise spectrum (k^-1/2: the first dimension 16x
    the median), with an offset per issue shared by both sides (what an issue's wording
    adds)."""
    rng = np.random.default_rng(seed)
    u, w = _unit(rng.standard_normal(d)), rng.standard_normal(d)
    w = _unit(w - (w @ u) * u)
    side = np.where(np.arange(n_st) % 2 == 0, 1.0, -1.0)
    lengths = np.clip(rng.integers(1, 21, n_st) + (side > 0) * 10, 1, 30)
    st = np.repeat(np.arange(n_st), lengths)
    spec = np.sqrt(d / 8) * np.arange(1, d + 1) ** -0.5
    offsets = rng.standard_normal((12, d)) * spec * 0.5
    issue_of = (np.arange(n_st) // 2) % 12  # both sides in every issue

    def model(direction):
        return (rng.standard_normal((len(st), d)) * spec + offsets[issue_of[st]]
                + a * side[st][:, None] * direction)

    Xb, Xi = model(u), model(w)
    ids = [f"s{i:04d}" for i in st]
    if labels is None:
        labels = np.where(side[st] > 0, "right", "left").tolist()
    issues = [f"issue{i}" for i in issue_of[st]]
    path = tmp_path / f"{name}.parquet"
    write_paired(Xb, Xi, ids, path, labels=labels, issues=issues,
                 row_group_rows=row_group_rows)
    return path, Xb, Xi, ids, u, w, spec


def test_statement_means_are_each_statements_token_mean_across_row_groups(tmp_path):
    path, Xb, Xi, ids, *_ = _planted(tmp_path, d=8, n_st=30)
    frame, M = statement_means(path, "instruct")
    want = pl.DataFrame({"prompt_id": ids}).with_row_index().group_by(
        "prompt_id", maintain_order=True).agg(pl.col("index")).sort("prompt_id")
    assert frame["prompt_id"].to_list() == want["prompt_id"].to_list()
    for k, rows in enumerate(want["index"].to_list()):
        np.testing.assert_allclose(M[k], Xi[rows].mean(0), rtol=1e-5, atol=1e-6)
    assert frame["n_tokens"].to_list() == [len(r) for r in want["index"].to_list()]
    assert set(frame["label"]) == {"left", "right"} and frame["issue"].null_count() == 0
    with pytest.raises(ValueError, match="role"):
        statement_means(path, "reward")


def test_the_direction_weighs_statements_not_tokens(tmp_path):
    """Right statements are longer: a fit on token rows would weigh them up. The direction
    is the partisan estimator on one mean per statement (to rounding)."""
    from rlhf_audit.partisan import PartisanSettings, fit_direction

    path, Xb, _, ids, u, _, _ = _planted(tmp_path, row_group_rows=1000)
    got, _ = context_direction(path, "diffmean")
    frame = pl.DataFrame({"prompt_id": ids}).with_row_index().group_by(
        "prompt_id", maintain_order=True).agg(pl.col("index")).sort("prompt_id")
    M = np.stack([Xb[r].mean(0) for r in frame["index"].to_list()])
    y = np.arange(len(M)) % 2 == 0  # statement 0 is right, as planted
    want, _ = fit_direction(M, y, "diffmean", PartisanSettings(methods=("diffmean",)))
    on_tokens = _unit(Xb[np.isin(ids, frame["prompt_id"].to_numpy()[y])].mean(0)
                      - Xb[np.isin(ids, frame["prompt_id"].to_numpy()[~y])].mean(0))
    assert cosine(got, want) > 0.99999
    assert cosine(got, on_tokens) < cosine(got, want) - 1e-4  # the token-weighted fit differs


@pytest.mark.parametrize("method", ["diffmean", "logreg"])
def test_context_direction_recovers_each_models_planted_direction(tmp_path, method):
    """Under uneven noise the difference of means estimates the planted axis itself, and
    the logistic regression the discriminant (noise covariance)^-1 times it, as the
    partisan study's two estimators do: each is checked against its own target."""
    path, _, _, _, u, w, spec = _planted(tmp_path)
    target = {"diffmean": lambda v: v, "logreg": lambda v: v / spec**2}[method]
    got_b, info = context_direction(path, method)
    got_i, _ = context_direction(path, method, role="instruct")
    assert info["n_right"] == info["n_left"] == 240 and info["method"] == method
    assert abs(np.linalg.norm(got_b) - 1) < 1e-9
    # right-pointing, and each model's own planted direction, not the other's (measured on
    # seeds 0-3: diffmean 0.955-0.986 own, logreg 0.939-0.956, |cross| <= 0.054; logreg's
    # two targets are not orthogonal once reweighted, hence the relative check too)
    for got, own, other in ((got_b, u, w), (got_i, w, u)):
        assert cosine(got, target(own)) > 0.85
        assert cosine(got, target(own)) > abs(cosine(got, target(other))) + 0.5


def test_context_direction_is_none_without_both_sides(tmp_path):
    n_st = 40
    _, _, _, ids, *_ = _planted(tmp_path, d=16, n_st=n_st)  # the ids, relabelled below
    labels = ["right" if int(i[1:]) % 2 else "neutral" for i in ids]
    path, *_ = _planted(tmp_path, d=16, n_st=n_st, labels=labels, name="q")
    got, info = context_direction(path, "diffmean")
    assert got is None and info["n_left"] == 0 and info["n_right"] == n_st // 2
    assert cosine(None, np.ones(3)) is None
    with pytest.raises(ValueError, match="dims"):
        cosine(np.ones(3), np.ones(4))


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from tiny import save_tiny_llama

    from rlhf_audit.lm.loader import load_causal_lm

    model_dir = save_tiny_llama(tmp_path_factory.mktemp("scorer") / "m", seed=0, n_layers=2,
                                hidden=32)
    return load_causal_lm({"path": str(model_dir)}, device="cpu", dtype="float32")


RIGHT_W, LEFT_W = "tax cut market guns".split(), "climate health care rights".split()


def _statements(n=60, n_issues=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lab = "right" if i % 2 else "left"
        rows.append({"id": f"p{i}", "label": lab, "issue": f"issue{i % n_issues}",
                     "text": " ".join(rng.choice(RIGHT_W if lab == "right" else LEFT_W, 6))})
    rows += [{"id": "n0", "label": "neutral", "issue": "issue0", "text": "vote vote policy"}]
    return pl.DataFrame(rows)


def test_the_scorer_reads_its_own_direction_off_the_statements(scorer):
    """Right statements share words of one set, left ones of another: directions fitted on
    the scorer's own reading put a text of right words above one of left words, for every
    question issue, a new one included."""
    from rlhf_audit.diffing.behaviour import scorer_directions
    from rlhf_audit.steering.activations import layer_activations
    from rlhf_audit.steering.settings import SteeringSettings

    model, tok = scorer
    prompts = _statements()
    s = SteeringSettings(layer=1)
    dirs = scorer_directions(scorer, prompts, ["issue0", "issue5", "new_issue"], 1,
                             settings=s, n_folds=3)
    assert set(dirs) == {"issue0", "issue5", "new_issue"}
    probe = layer_activations(model, tok, ["guns market tax cut tax", "care climate health"],
                              1, s.score_pooling, 2).astype(np.float64)
    for u, c in dirs.values():
        proj = (probe - c) @ _unit(u)
        assert proj[0] > 0 > proj[1]
    one_left = pl.concat([prompts.filter(pl.col("label") != "left"),
                          prompts.filter(pl.col("label") == "left").head(1)])
    assert scorer_directions(scorer, one_left, ["issue0"], 1, settings=s) is None
    with pytest.raises(ValueError, match="'issue'"):
        scorer_directions(scorer, prompts.drop("issue"), ["issue0"], 1, settings=s)


def test_a_questions_direction_never_reads_its_own_issues_statements(scorer):
    """Cross-fitting: rewriting every statement of a question's issue (its words, its
    sides) leaves that question's direction exactly as it was, and moves the others'."""
    from rlhf_audit.diffing.behaviour import scorer_directions
    from rlhf_audit.steering.settings import SteeringSettings

    s = SteeringSettings(layer=1)
    prompts = _statements()
    asked = [f"issue{i}" for i in range(6)]
    before = scorer_directions(scorer, prompts, asked, 1, settings=s, n_folds=3, seed=4)
    flipped = prompts.with_columns(
        pl.when(pl.col("issue") == "issue2").then(pl.lit("policy vote border wall"))
        .otherwise(pl.col("text")).alias("text"),
        pl.when(pl.col("issue") == "issue2").then(
            pl.col("label").replace({"left": "right", "right": "left"}))
        .otherwise(pl.col("label")).alias("label"))
    after = scorer_directions(scorer, flipped, asked, 1, settings=s, n_folds=3, seed=4)
    np.testing.assert_array_equal(before["issue2"][0], after["issue2"][0])
    np.testing.assert_array_equal(before["issue2"][1], after["issue2"][1])
    moved = [i for i in asked if not np.array_equal(before[i][0], after[i][0])]
    assert len(moved) == 4  # the two other folds' issues read issue2's statements


def test_statements_without_an_issue_are_their_own_clusters(scorer):
    """A diffing corpus may leave issue empty (each such statement its own cluster, as the
    pairing's split does): the scorer still cross-fits, every null-issue statement in
    some fold, and gives finite directions."""
    from rlhf_audit.diffing.behaviour import scorer_directions
    from rlhf_audit.steering.settings import SteeringSettings

    prompts = _statements().with_columns(
        pl.when(pl.col("id").is_in(["p1", "p2", "p3", "p4"])).then(None)
        .otherwise(pl.col("issue")).alias("issue"))
    dirs = scorer_directions(scorer, prompts, ["issue0", "issue1"], 1,
                             settings=SteeringSettings(layer=1), n_folds=3)
    assert set(dirs) == {"issue0", "issue1"}
    assert all(np.isfinite(u).all() and np.linalg.norm(u) > 0 for u, _ in dirs.values())
