"""Steering hooks, vectors, scoring and the claim-4/5 statistics (planted answers)."""

import numpy as np
import polars as pl
import pytest
import torch
from tiny import tiny_tokenizer

from rlhf_audit.generation import generate
from rlhf_audit.steering import (
    HEADLINE_KEYS,
    SteeringSettings,
    SteeringVector,
    build_vectors,
    decoder_layers,
    degeneration_table,
    disconnect_gap,
    disconnect_ratio,
    distinct_n,
    dose_response,
    dose_slopes,
    feature_vector,
    format_prompts,
    headline,
    identity_prime_generations,
    layer_activations,
    plot_degeneration,
    plot_steering,
    prime_effect,
    prime_effects,
    prime_means,
    projection_score,
    random_vector,
    repeat_n,
    score_generations,
    signed_alphas,
    steer,
    sweep,
    typical_residual_norm,
)

D = 32
PROMPTS = ["the tax", "we must cut the border wall policy now", "guns are a right ?"]


@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def _hidden(model, tok, prompts):
    with tok_left(tok):
        enc = tok(prompts, return_tensors="pt", padding=True)
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        out = model(**enc, position_ids=pos, output_hidden_states=True)
    return out.hidden_states, enc.attention_mask


class tok_left:
    def __init__(self, tok):
        self.tok = tok

    def __enter__(self):
        self.old = self.tok.padding_side
        self.tok.padding_side = "left"

    def __exit__(self, *a):
        self.tok.padding_side = self.old


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_hook_adds_exactly_alpha_v_at_the_layer_output(lm, positions):
    model, tok = lm
    v = np.random.default_rng(0).standard_normal(D).astype(np.float32)
    alpha, layer = 0.7, 1
    h0, mask = _hidden(model, tok, PROMPTS)
    with steer(model, SteeringVector(layer, v, alpha, positions)):
        h1, _ = _hidden(model, tok, PROMPTS)
    # hidden_states[L + 1] is the output of block L; blocks before it are untouched
    for k in range(layer + 1):
        torch.testing.assert_close(h1[k], h0[k], rtol=0, atol=0)
    diff = (h1[layer + 1] - h0[layer + 1]).numpy()
    want = np.zeros_like(diff)
    if positions == "all":
        want[:] = alpha * v
    else:
        want[:, -1, :] = alpha * v
    np.testing.assert_allclose(diff, want, atol=1e-5)
    # and the change propagates to later blocks
    real = mask.bool()
    assert not torch.allclose(h1[layer + 2][real], h0[layer + 2][real])


def test_hook_is_removed_even_on_error(lm):
    model, tok = lm
    blocks = decoder_layers(model)
    # transformers installs its own output-recording hooks; count ours relative to them
    before = [len(b._forward_hooks) for b in blocks]
    v = np.ones(D, np.float32)
    with pytest.raises(RuntimeError, match="boom"), steer(model, SteeringVector(0, v, 1.0)):
        assert len(blocks[0]._forward_hooks) == before[0] + 1
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="out of range"), steer(model, SteeringVector(7, v, 1.0)):
        pass
    with pytest.raises(ValueError, match="dims"), steer(model, SteeringVector(0, v[:5], 1.0)):
        pass
    assert [len(b._forward_hooks) for b in blocks] == before
    with pytest.raises(ValueError, match="positions"):
        SteeringVector(0, v, 1.0, "prompt")


def test_alpha_zero_reproduces_unsteered_generation(lm):
    model, tok = lm
    v = random_vector(D, 5.0, seed=3)
    for kw in ({"do_sample": False}, {"do_sample": True, "seed": 4}):
        plain = generate(model, tok, PROMPTS, max_new_tokens=8, **kw)
        zero = generate(
            model, tok, PROMPTS, max_new_tokens=8, steering=SteeringVector(1, v, 0.0), **kw
        )
        assert [g.token_ids for g in zero] == [g.token_ids for g in plain]
        strong = generate(
            model, tok, PROMPTS, max_new_tokens=8, steering=SteeringVector(1, v, 4.0), **kw
        )
        assert [g.token_ids for g in strong] != [g.token_ids for g in plain]


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_cached_steered_generation_matches_uncached_reference(lm, positions):
    """The KV-cached loop steers the same positions as a full recomputation would."""
    model, tok = lm
    # |alpha v| = 0.1, about the size of this model's residual stream (~0.14): it moves the
    # logits without swamping them, so steering the wrong positions would show
    v = random_vector(D, 0.1, seed=8)
    layer, alpha, n_new = 1, 1.0, 6
    got = generate(
        model,
        tok,
        PROMPTS,
        max_new_tokens=n_new,
        steering=SteeringVector(layer, v, alpha, positions),
    )
    other = "generated" if positions == "all" else "all"
    wrong = generate(
        model, tok, PROMPTS, max_new_tokens=n_new, steering=SteeringVector(layer, v, alpha, other)
    )
    delta = torch.tensor(alpha * v)
    block = decoder_layers(model)[layer]
    for p, g, w in zip(PROMPTS, got, wrong, strict=True):
        ids = tok(p)["input_ids"]
        n_prompt = len(ids)

        def hook(mod, args, out, n_prompt=n_prompt):
            out = out.clone()
            start = 0 if positions == "all" else n_prompt - 1
            out[:, start:, :] += delta
            return out

        lps = []
        h = block.register_forward_hook(hook)
        try:
            for _ in range(n_new):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                nxt = int(logits.argmax())
                lps.append(float(torch.log_softmax(logits, -1)[nxt]))
                ids = ids + [nxt]
        finally:
            h.remove()
        assert g.token_ids == ids[n_prompt : n_prompt + len(g.token_ids)]
        np.testing.assert_allclose(g.token_logprobs, lps[: len(g.token_ids)], atol=1e-5)
        # power: the other position mode gives measurably different log-probs
        if w.token_ids[:1] == g.token_ids[:1]:
            assert abs(w.token_logprobs[0] - g.token_logprobs[0]) > 1e-3


def test_vectors_have_the_typical_norm():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, D)) * 3.0
    norm = typical_residual_norm(X)
    assert norm == pytest.approx(np.median(np.linalg.norm(X, axis=1)))
    direction = rng.standard_normal(D)
    w = rng.standard_normal((3, D)) * np.array([[1.0], [10.0], [0.1]])
    vecs = build_vectors(2, direction, norm, w_dec_rows=w, seed=1)
    assert set(vecs) == {"direction", "feature", "random"}
    for layer, v in vecs.values():
        assert layer == 2 and v.shape == (D,) and v.dtype == np.float32
        assert np.linalg.norm(v) == pytest.approx(norm, rel=1e-5)
    assert np.allclose(
        vecs["direction"][1] / norm, direction / np.linalg.norm(direction), atol=1e-6
    )
    # each feature weighs the same whatever its decoder norm
    units = w / np.linalg.norm(w, axis=1, keepdims=True)
    fv = feature_vector(w, 1.0)
    assert np.allclose(fv, units.sum(0) / np.linalg.norm(units.sum(0)), atol=1e-6)
    assert np.array_equal(random_vector(D, 1.0, 5), random_vector(D, 1.0, 5))
    assert not np.allclose(random_vector(D, 1.0, 5), random_vector(D, 1.0, 6))
    with pytest.raises(ValueError, match="d_model"):
        typical_residual_norm(np.zeros(4))


def test_signed_alphas_cover_both_signs():
    assert signed_alphas([0.5, 2, -0.5]) == [-2.0, -0.5, 0.0, 0.5, 2.0]
    with pytest.raises(ValueError):
        signed_alphas([float("nan")])


def test_sweep_and_identity_primes_tables(lm):
    model, tok = lm
    st = SteeringSettings(max_new_tokens=5, samples=2, do_sample=True, seed=3)
    v = random_vector(D, 2.0, seed=2)
    qs = {"tax": "the tax should", "guns": "guns are"}
    df = sweep(
        model,
        tok,
        qs,
        {"direction": (1, v), "random": (1, -v)},
        [1.0],
        settings=st,
        model_name="base",
    )
    assert df.height == 2 * 3 * 2 * 2  # vectors x alphas(-1,0,1) x questions x samples
    assert set(df["alpha"].to_list()) == {-1.0, 0.0, 1.0}
    zero = df.filter(pl.col("alpha") == 0).sort(["vector", "question_id", "sample"])
    assert (
        zero.filter(pl.col("vector") == "direction")["text"].to_list()
        == zero.filter(pl.col("vector") == "random")["text"].to_list()
    )
    # the rows are the generations generate() gives for that vector and alpha
    prompts, _ = format_prompts(tok, ["the tax should", "the tax should"], chat=False)
    direct = generate(
        model,
        tok,
        prompts,
        max_new_tokens=5,
        do_sample=True,
        seed=3,
        steering=SteeringVector(1, v, 1.0),
        batch_size=st.batch_size,
    )
    row = df.filter(
        pl.col("vector") == "direction", pl.col("alpha") == 1.0, pl.col("question_id") == "tax"
    ).sort("sample")
    assert row["text"].to_list() == [g.text for g in direct]

    pr = identity_prime_generations(model, tok, qs, settings=st, model_name="instruct", chat=True)
    assert pr.height == 3 * 2 * 2
    assert set(pr["condition"].to_list()) == {"none", "left", "right"}
    chat_prompts, add = format_prompts(tok, ["hi"], chat=True)
    assert chat_prompts[0].startswith("<bos><|user|>hi") and add is False


def test_projection_score_reads_the_layer_mean_activation(lm):
    model, tok = lm
    texts = ["the tax cut", "we must raise taxes on the market", "", "guns"]
    layer = 1
    acts = layer_activations(model, tok, texts, layer, "mean", batch_size=3)
    for i, t in enumerate(texts):
        ids = tok(t)["input_ids"]
        if len(ids) == 1:  # BOS only
            assert np.isnan(acts[i]).all()
            continue
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(acts[i], hs[layer + 1][0, 1:].mean(0).numpy(), atol=1e-5)
    last = layer_activations(model, tok, texts[:2], layer, "last")
    with torch.no_grad():
        hs = model(
            input_ids=torch.tensor([tok(texts[1])["input_ids"]]), output_hidden_states=True
        ).hidden_states
    np.testing.assert_allclose(last[1], hs[layer + 1][0, -1].numpy(), atol=1e-5)
    # planted direction: the k-th axis, scaled, with a centre
    direction = np.zeros(D)
    direction[5] = 4.0
    center = np.full(D, 0.25)
    s = projection_score(model, tok, texts, direction, layer, center=center)
    np.testing.assert_allclose(s[[0, 1, 3]], acts[[0, 1, 3], 5] - 0.25, atol=1e-5)
    assert np.isnan(s[2])
    with pytest.raises(ValueError, match="dims"):
        projection_score(model, tok, texts, np.ones(3), layer)


def test_degeneration_measures():
    assert distinct_n("a b c d", 2) == 1.0
    assert distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)
    assert np.isnan(distinct_n("a", 2))
    assert repeat_n("a b c d e", 4) == 0.0
    assert repeat_n("x y z w x y z w", 4) == pytest.approx(1 / 5)


class _StubJudge:
    def rate(self, texts, questions=None):
        ok = [len(t) % 2 == 0 for t in texts]
        return pl.DataFrame(
            {
                "judge_score": [0.5 if o else None for o in ok],
                "judge_ok": ok,
                "judge_error": [None if o else "garbage" for o in ok],
            },
            schema={"judge_score": pl.Float64, "judge_ok": pl.Boolean, "judge_error": pl.String},
        )


def test_score_generations_adds_all_scores(lm):
    model, tok = lm
    df = pl.DataFrame(
        {"text": ["the tax cut", "no no no no no no", "guns"], "question": ["q", "q", "q"]}
    )
    direction = np.random.default_rng(1).standard_normal(D)
    out = score_generations(df, model, tok, direction, 1, judge=_StubJudge())
    for col in (
        "projection",
        "judge",
        "judge_ok",
        "judge_error",
        "perplexity",
        "distinct_2",
        "repeat_4",
    ):
        assert col in out.columns
    assert out["judge_ok"].to_list() == [False, False, True]  # odd lengths 11, 17 fail
    assert out["judge"].to_list() == [None, None, 0.5]
    assert out["distinct_2"][1] == pytest.approx(1 / 5)
    none = score_generations(df, model, tok, direction, 1, judge=None)
    assert none["judge"].null_count() == 3


# ----------------------------------------------------------------- planted statistics

SLOPES = {
    ("base", "direction"): 0.40,
    ("instruct", "direction"): 0.30,
    ("base", "feature"): 0.50,
    ("instruct", "feature"): 0.00,
    ("base", "random"): 0.0,
    ("instruct", "random"): 0.0,
}
ALPHAS = [-2.0, -1.0, 0.0, 1.0, 2.0]


def _synthetic_scores(seed, n_q=40, noise=0.3, samples=2):
    """Score table with planted slopes, a random intercept per question and noise."""
    rng = np.random.default_rng(seed)
    icpt = {f"q{i}": rng.normal(0, 0.5) for i in range(n_q)}
    rows = []
    for (m, v), b in SLOPES.items():
        for q, c in icpt.items():
            for a in ALPHAS:
                for s in range(samples):
                    rows.append(
                        {
                            "model": m,
                            "vector": v,
                            "alpha": a,
                            "question_id": q,
                            "sample": s,
                            "projection": c + b * a + rng.normal(0, noise),
                        }
                    )
    return pl.DataFrame(rows)


def _synthetic_primes(seed, n_q=60, effect=(("base", 0.2), ("instruct", 0.8))):
    rng = np.random.default_rng(seed)
    rows = []
    for m, e in effect:
        for i in range(n_q):
            c = rng.normal(0, 0.3)
            for cond, shift in (("none", 0.0), ("left", -e / 2), ("right", e / 2)):
                rows.append(
                    {
                        "model": m,
                        "condition": cond,
                        "question_id": f"q{i}",
                        "sample": 0,
                        "projection": c + shift + rng.normal(0, 1.0),
                    }
                )
    return pl.DataFrame(rows)


def test_slopes_and_disconnect_recover_planted_values():
    df = _synthetic_scores(0)
    sl = dose_slopes(df, n_boot=300)
    for r in sl.iter_rows(named=True):
        true = SLOPES[(r["model"], r["vector"])]
        # SE of the slope is about 0.011 here; coverage is checked over many datasets below
        assert r["slope"] == pytest.approx(true, abs=0.05)
        assert r["lo"] < r["slope"] < r["hi"] and r["hi"] - r["lo"] < 0.1 and r["n"] == 40
    ratio_dir = disconnect_ratio(df, "base", "instruct", "direction", n_boot=300)
    ratio_feat = disconnect_ratio(df, "base", "instruct", "feature", n_boot=300)
    assert ratio_dir.value == pytest.approx(0.75, abs=0.1) and ratio_dir.covers(0.75)
    assert ratio_feat.value == pytest.approx(0.0, abs=0.1) and ratio_feat.covers(0.0)
    gap = disconnect_gap(df, "base", "instruct", n_boot=300)
    assert gap.covers(0.75) and gap.lo > 0
    dr = dose_response(df, n_boot=200)
    assert dr.height == 6 * len(ALPHAS)
    cell = dr.filter(pl.col("model") == "base", pl.col("vector") == "feature")
    assert np.all(np.diff(cell.sort("alpha")["mean"].to_numpy()) > 0)


def test_disconnect_interval_coverage_over_many_datasets():
    """The 95% intervals of slope and ratio cover the planted values about 95% of the time."""
    cover_slope, cover_ratio, n_rep = 0, 0, 40
    for seed in range(n_rep):
        df = _synthetic_scores(100 + seed, n_q=25, noise=0.6, samples=1)
        g = df.filter(pl.col("model") == "instruct", pl.col("vector") == "direction")
        from rlhf_audit.steering import slope_estimate

        est = slope_estimate(
            g["alpha"].to_numpy(),
            g["projection"].to_numpy(),
            g["question_id"].to_numpy(),
            n_boot=300,
            seed=seed,
        )
        cover_slope += est.covers(0.30)
        cover_ratio += disconnect_ratio(
            df, "base", "instruct", "direction", n_boot=300, seed=seed
        ).covers(0.75)
    assert cover_slope >= 0.8 * n_rep
    assert cover_ratio >= 0.8 * n_rep


def test_identity_prime_effect_recovers_planted_shift():
    """Right-minus-left effect and Cohen's d: unbiased and ~95% covered over many datasets."""
    sd = np.sqrt(0.3**2 + 1.0**2)  # question intercept + row noise
    n_rep = 40
    for model, e in (("base", 0.2), ("instruct", 0.8)):
        effs, ds, cov_e, cov_d = [], [], 0, 0
        for seed in range(n_rep):
            eff, d = prime_effect(_synthetic_primes(seed), model, n_boot=200, seed=seed)
            effs.append(eff.value)
            ds.append(d.value)
            cov_e += eff.covers(e)
            cov_d += d.covers(e / sd)
            assert eff.n == 60
        # SE of the mean over datasets is about 0.18 / sqrt(40) = 0.03
        assert np.mean(effs) == pytest.approx(e, abs=0.1)
        assert np.mean(ds) == pytest.approx(e / sd, abs=0.1)
        assert cov_e >= 0.8 * n_rep and cov_d >= 0.8 * n_rep
    pr = _synthetic_primes(0)
    tab = prime_effects(pr, n_boot=200)
    assert set(tab["model"].to_list()) == {"base", "instruct"}
    assert tab.filter(pl.col("model") == "instruct")["d_lo"][0] > 0
    with pytest.raises(ValueError, match="left- or right-primed"):
        prime_effect(pr.filter(pl.col("condition") != "left"), "base")


def test_headline_keys_and_figures(tmp_path):
    df = _synthetic_scores(1, n_q=20).with_columns(
        pl.col("projection").alias("judge"),
        pl.lit(True).alias("judge_ok"),
        pl.lit(None, pl.String).alias("judge_error"),
        pl.lit(10.0).alias("perplexity"),
        pl.lit(0.9).alias("distinct_2"),
        pl.lit(0.0).alias("repeat_4"),
        pl.lit(True).alias("finished"),
    )
    df = df.with_columns(
        pl.when(pl.col("question_id") == "q3").then(False).otherwise(True).alias("judge_ok")
    )
    df = df.with_columns(pl.when(pl.col("judge_ok")).then(pl.col("judge")).alias("judge"))
    pr = _synthetic_primes(1, n_q=20).with_columns(
        pl.col("projection").alias("judge"),
        pl.lit(True).alias("judge_ok"),
        pl.lit(None, pl.String).alias("judge_error"),
    )
    h = headline(df, pr, "base", "instruct", n_boot=100)
    assert set(h) <= set(HEADLINE_KEYS)
    for key in (
        "steering_slope_base_feature_projection",
        "disconnect_ratio_feature_judge",
        "disconnect_gap_projection",
        "prime_cohens_d_instruct_judge",
        "prime_effect_base_projection",
        "judge_failure_rate",
    ):
        assert key in h, key
    assert h["steering_slope_base_feature_projection"].covers(0.5)
    n_fail = df.filter(~pl.col("judge_ok")).height
    assert h["judge_failure_rate"].value == pytest.approx(n_fail / (df.height + pr.height))
    dr = dose_response(df, n_boot=100)
    pm = prime_means(pr, n_boot=100)
    plot_steering(dr, pm, tmp_path / "steer.png")
    plot_degeneration(degeneration_table(df), tmp_path / "degen.png")
    for name in ("steer.png", "steer.pdf", "degen.png", "degen.pdf"):
        assert (tmp_path / name).stat().st_size > 1000


def test_tables_of_a_score_with_no_valid_rows_keep_their_columns():
    """A judge that failed on every text must not break the per-scorer tables."""
    import polars as pl

    from rlhf_audit.steering import dose_response, dose_slopes, prime_effects, prime_means

    steer = pl.DataFrame({"model": ["base"] * 2, "vector": ["direction"] * 2,
                          "alpha": [0.0, 1.0], "question_id": ["q1", "q2"],
                          "projection": [0.1, 0.5], "judge": [None, None],
                          "judge_ok": [False, False]},
                         schema_overrides={"judge": pl.Float64})
    primes = steer.rename({"vector": "condition"}).with_columns(
        pl.Series("condition", ["left", "right"]))
    for fn, table in ((dose_response, steer), (dose_slopes, steer), (prime_means, primes),
                      (prime_effects, primes)):
        empty = fn(table, "judge", n_boot=100)
        assert empty.height == 0 and empty.width > 0
        assert pl.concat([fn(table, "projection", n_boot=100), empty]).columns == empty.columns
