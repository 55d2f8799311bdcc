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


def _planted(tmp_path, *, d=96, n_st=240, per=5, a=1.5, seed=0, labels=None, name="p"):
    """Statements (per tokens each, alternating right/left, 12 issues) whose base vectors
    lean +/- a along u and whose instruct vectors lean along w (orthogonal to u), over an
    uneven noise spectrum (noise 4x larger in the first dimension than in the last)."""
    rng = np.random.default_rng(seed)
    u, w = _unit(rng.standard_normal(d)), rng.standard_normal(d)
    w = _unit(w - (w @ u) * u)
    side = np.where(np.arange(n_st) % 2 == 0, 1.0, -1.0)
    tok_side = np.repeat(side, per)
    spec = np.linspace(2.0, 0.5, d)
    Xb = rng.standard_normal((n_st * per, d)) * spec + a * tok_side[:, None] * u
    Xi = rng.standard_normal((n_st * per, d)) * spec + a * tok_side[:, None] * w
    ids = [f"s{i:04d}" for i in np.repeat(np.arange(n_st), per)]
    if labels is None:
        labels = np.where(tok_side > 0, "right", "left").tolist()
    issues = [f"issue{i % 12}" for i in np.repeat(np.arange(n_st), per)]
    path = tmp_path / f"{name}.parquet"
    write_paired(Xb, Xi, ids, path, labels=labels, issues=issues, row_group_rows=7)
    return path, Xb, Xi, ids, u, w, spec


def test_statement_means_are_each_statements_token_mean_across_row_groups(tmp_path):
    path, Xb, Xi, ids, *_ = _planted(tmp_path, d=8, n_st=30, per=3)
    frame, M = statement_means(path, "instruct")
    want = pl.DataFrame({"prompt_id": ids}).with_row_index().group_by(
        "prompt_id", maintain_order=True).agg(pl.col("index")).sort("prompt_id")
    assert frame["prompt_id"].to_list() == want["prompt_id"].to_list()
    for k, rows in enumerate(want["index"].to_list()):
        np.testing.assert_allclose(M[k], Xi[rows].mean(0), rtol=1e-5, atol=1e-6)
    assert frame["n_tokens"].to_list() == [3] * 30
    assert set(frame["label"]) == {"left", "right"} and frame["issue"].null_count() == 0
    with pytest.raises(ValueError, match="role"):
        statement_means(path, "reward")


@pytest.mark.parametrize("method", ["diffmean", "logreg"])
def test_context_direction_recovers_each_models_planted_direction(tmp_path, method):
    """Under uneven noise the difference of means estimates the planted axis itself, and
    the logistic regression the discriminant (noise covariance)^-1 times it, as the
    partisan study's two estimators do: each is checked against its own target."""
    path, _, _, _, u, w, spec = _planted(tmp_path, n_st=480)
    target = {"diffmean": lambda v: v, "logreg": lambda v: v / spec**2}[method]
    got_b, info = context_direction(path, method)
    got_i, _ = context_direction(path, method, role="instruct")
    assert info["n_right"] == info["n_left"] == 240 and info["method"] == method
    assert abs(np.linalg.norm(got_b) - 1) < 1e-9
    # right-pointing, and each model's own planted direction, not the other's (measured on
    # seeds 0-3: diffmean 0.985-0.991 own, |cross| <= 0.03; logreg 0.88-0.96 own, cross
    # -0.31 to 0.12, its two targets being no longer orthogonal once reweighted)
    for got, own, other in ((got_b, u, w), (got_i, w, u)):
        assert cosine(got, target(own)) > 0.85
        assert cosine(got, target(own)) > abs(cosine(got, target(other))) + 0.5


def test_context_direction_is_none_without_both_sides(tmp_path):
    n_st, per = 40, 2
    labels = ["right" if i % 2 else "neutral" for i in np.repeat(np.arange(n_st), per)]
    path, *_ = _planted(tmp_path, n_st=n_st, per=per, labels=labels)
    got, info = context_direction(path, "diffmean")
    assert got is None and info["n_left"] == 0 and info["n_right"] == n_st // 2
    assert cosine(None, np.ones(3)) is None
    with pytest.raises(ValueError, match="dims"):
        cosine(np.ones(3), np.ones(4))


def test_the_scorer_reads_its_own_direction_off_the_statements(tmp_path):
    """A tiny model whose right statements share words of one set and left ones of
    another: directions fitted on the scorer's own reading, cross-fitted over issues, put
    a held-out text of right words above one of left words, for every question issue."""
    from tiny import save_tiny_llama

    from rlhf_audit.diffing.behaviour import scorer_directions
    from rlhf_audit.lm.loader import load_causal_lm
    from rlhf_audit.steering.activations import layer_activations
    from rlhf_audit.steering.settings import SteeringSettings

    model_dir = save_tiny_llama(tmp_path / "m", seed=0, n_layers=2, hidden=32)
    model, tok = load_causal_lm({"path": str(model_dir)}, device="cpu", dtype="float32")
    rng = np.random.default_rng(0)
    right_w, left_w = "tax cut market guns".split(), "climate health care rights".split()
    rows = []
    for i in range(60):
        lab = "right" if i % 2 else "left"
        rows.append({"id": f"p{i}", "label": lab, "issue": f"issue{i % 6}",
                     "text": " ".join(rng.choice(right_w if lab == "right" else left_w, 6))})
    rows += [{"id": "n0", "label": "neutral", "issue": "issue0", "text": "vote vote policy"}]
    prompts = pl.DataFrame(rows)
    s = SteeringSettings(layer=1, projection_folds=3)
    dirs = scorer_directions((model, tok), prompts, ["issue0", "issue5", "new_issue"], 1,
                             settings=s)
    assert set(dirs) == {"issue0", "issue5", "new_issue"}
    probe = layer_activations(model, tok, ["guns market tax cut tax", "care climate health"],
                              1, s.score_pooling, 2).astype(np.float64)
    for u, c in dirs.values():
        proj = (probe - c) @ _unit(u)
        assert proj[0] > 0 > proj[1]
    assert scorer_directions((model, tok), prompts.filter(pl.col("label") != "left"),
                             ["issue0"], 1, settings=s) is None
    with pytest.raises(ValueError, match="'issue'"):
        scorer_directions((model, tok), prompts.drop("issue"), ["issue0"], 1, settings=s)
