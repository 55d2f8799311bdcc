"""Steering hooks, vectors, prompts, generation and scoring (planted answers)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from rlhf_audit.lm.generation import generate
from rlhf_audit.steering import (
    SteeringSettings,
    SteeringVector,
    crossfit_directions,
    cut_at,
    decoder_layers,
    distinct_n,
    feature_vector,
    format_prompts,
    identity_terms,
    is_degenerate,
    layer_activations,
    mask_identity_terms,
    non_text_share,
    policy_feature_rows,
    prime_design,
    projection_score,
    random_feature_rows,
    random_vector,
    repeat_n,
    residual_token_norm,
    run_steering,
    score_judge,
    score_projection,
    signed_alphas,
    steer,
    steering_vector_set,
    sweep,
    typical_residual_norm,
    vector_family,
    vectors_from_table,
)

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "resources" / "prompts"

D = 32
PROMPTS = ["the tax", "we must cut the border wall policy now", "guns are a right ?"]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    return tiny_llama(tok, seed=1, n_layers=3, hidden=D), tok


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


def test_typical_norm_and_feature_vector_units():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, D)) * 3.0
    assert typical_residual_norm(X) == pytest.approx(np.median(np.linalg.norm(X, axis=1)))
    w = rng.standard_normal((3, D)) * np.array([[1.0], [10.0], [0.1]])
    # each feature weighs the same whatever its decoder norm
    units = w / np.linalg.norm(w, axis=1, keepdims=True)
    fv = feature_vector(w, 1.0)
    assert np.allclose(fv, units.sum(0) / np.linalg.norm(units.sum(0)), atol=1e-6)
    assert np.array_equal(random_vector(D, 1.0, 5), random_vector(D, 1.0, 5))
    assert not np.allclose(random_vector(D, 1.0, 5), random_vector(D, 1.0, 6))
    with pytest.raises(ValueError, match="d_model"):
        typical_residual_norm(np.zeros(4))


def _planted_sae(d=512, d_sae=2048, seed=0):
    """Decoder rows: 8 policy features along +-u (leaning = the sign) plus noise, the rest
    random; effect_lr carries the leaning's sign for the policy features."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    W = rng.standard_normal((d_sae, d)) / np.sqrt(d)
    lean = np.array([1, -1, 1, -1, -1, 1, 1, -1])
    feats = np.arange(8) * 37 + 5
    W[feats] = lean[:, None] * u * 0.8 + rng.standard_normal((8, d)) / np.sqrt(d) * 0.6
    eff = rng.standard_normal(d_sae) * 0.01
    eff[feats] = lean * np.linspace(2.0, 0.5, 8)
    table = pl.DataFrame({
        "feature": np.arange(d_sae), "selected": np.isin(np.arange(d_sae), feats),
        "effect_lr": eff, "leaning": np.sign(eff).astype(np.int8),
        "q_partisan_vs_neutral": rng.uniform(size=d_sae),  # other columns are ignored
    })
    return u, W, table, feats, lean


def test_policy_features_are_oriented_to_point_right():
    u, W, table, feats, lean = _planted_sae()
    rows, got, lg = policy_feature_rows(table, W, 4)
    assert got == list(feats[:4]) and lg == list(lean[:4])  # strongest |effect_lr| first
    assert np.allclose(np.linalg.norm(rows, axis=1), 1)
    assert (rows @ u > 0.5).all()  # every oriented row points right, left-leaning ones too
    unoriented = W[feats[:4]].sum(0)
    assert abs(unoriented @ u) / np.linalg.norm(unoriented) < 0.2  # signs cancel without it
    nulls = random_feature_rows(table, W, 4, 10, seed=1)
    assert len(nulls) == 10
    for r, f, sg in nulls:
        assert not set(f) & set(feats) and len(set(f)) == 4
        assert sg == list(np.sign(table["effect_lr"].to_numpy()[f]).astype(int))
        assert np.allclose(np.linalg.norm(r, axis=1), 1)
    with pytest.raises(ValueError, match="pf.parquet: .*leaning"):
        policy_feature_rows(table.drop("leaning"), W, 4, source="pf.parquet")
    strings = table.with_columns(pl.when(pl.col("leaning") > 0).then(pl.lit("right"))
                                 .otherwise(pl.lit("left")).alias("leaning"))
    with pytest.raises(ValueError, match="pf.parquet: .*int8, \\+1 right"):
        policy_feature_rows(strings, W, 4, source="pf.parquet")


def test_vector_set_same_norm_nulls_and_cosines():
    u, W, table, feats, _ = _planted_sae()
    inst = u + np.random.default_rng(3).standard_normal(len(u)) * 0.05
    t = steering_vector_set(2, 7.5, u * 3, direction_instruct=inst, policy_features=table,
                            w_dec=W, n_features=4, n_random_directions=10,
                            n_random_feature_sets=10, seed=0)
    names = t["vector"].to_list()
    assert names[:2] == ["direction", "direction_instruct"] and "feature" in names
    assert sum(vector_family(n) == "random_direction" for n in names) == 10
    assert sum(vector_family(n) == "random_features" for n in names) == 10
    vecs = vectors_from_table(t)
    for layer, v in vecs.values():
        assert layer == 2 and v.dtype == np.float32
        assert np.linalg.norm(v) == pytest.approx(7.5, rel=1e-5)
    cos = dict(zip(names, t["cos_partisan"].to_list(), strict=True))
    assert cos["direction"] == pytest.approx(1.0)
    assert cos["feature"] > 0.8  # the oriented policy features point along the direction
    rand = [c for n, c in cos.items() if vector_family(n) == "random_direction"]
    assert max(abs(c) for c in rand) < 0.25  # d = 512: random directions are near-orthogonal
    assert t.filter(pl.col("vector") == "feature")["features"][0].to_list() == list(feats[:4])
    # no policy feature selected: no feature vector and no feature null
    none = steering_vector_set(2, 1.0, u, policy_features=table.with_columns(
        pl.lit(False).alias("selected")), w_dec=W)
    assert set(map(vector_family, none["vector"].to_list())) == {"direction",
                                                                 "random_direction"}


def test_residual_token_norm_is_the_base_median_over_content_tokens(lm):
    model, tok = lm
    texts = ["the tax cut", "we must raise taxes on the market", "guns"]
    norms = []
    for t in texts:
        ids = tok(t)["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        norms += hs[2][0, 1:].norm(dim=-1).tolist()  # block 1 output, BOS left out
    assert residual_token_norm(model, tok, texts, 1, batch_size=2) == pytest.approx(
        float(np.median(norms)), rel=1e-5)


def test_signed_alphas_cover_both_signs():
    assert signed_alphas([0.5, 2, -0.5]) == [-2.0, -0.5, 0.0, 0.5, 2.0]
    with pytest.raises(ValueError):
        signed_alphas([float("nan")])


def _shipped_design(n_questions=None):
    qs = pl.read_ndjson(PROMPTS_DIR / "policy_questions.jsonl")
    if n_questions:
        qs = qs.head(n_questions)
    return qs, prime_design(qs, pl.read_ndjson(PROMPTS_DIR / "identity_primes.jsonl"),
                            pl.read_ndjson(PROMPTS_DIR / "neutral_personas.jsonl"))


def test_prime_design_uses_every_wording_and_a_persona_control():
    qs, design = _shipped_design()
    primes = pl.read_ndjson(PROMPTS_DIR / "identity_primes.jsonl")
    lr = design.filter(pl.col("condition").is_in(["left", "right"]))
    assert lr.height == primes.height  # every row of the file
    assert sorted(lr["message"].to_list()) == sorted(primes["text"].to_list())
    assert lr["wording"].n_unique() == 4 and lr["prime"].n_unique() == 8
    for cond, n in design.group_by("condition").len().iter_rows():
        assert n == qs.height, cond
    pers = design.filter(pl.col("condition") == "persona")
    assert pers["prime"].n_unique() == 4
    # a persona sentence carries none of the words that tell the sides apart
    terms = identity_terms(design)
    assert {"democrat", "republican", "progressive", "conservative"} <= set(terms)
    assert "lifelong" not in terms and "i" not in terms
    for p in pers["prime"].unique().to_list():
        assert mask_identity_terms([p], terms) == [p]
    with pytest.raises(ValueError, match="needs a left and a right prime"):
        prime_design(qs, primes.filter(pl.col("identity") == "left"),
                     pl.read_ndjson(PROMPTS_DIR / "neutral_personas.jsonl"))


def test_mask_identity_terms():
    terms = ["conservative", "democrat", "right"]
    got = mask_identity_terms(["As a Conservative, I back Democrats; the right-wing Rightly"],
                              terms)
    assert got == ["As a someone, I back someone; the someone-wing Rightly"]


def test_sweep_and_identity_primes_tables(lm):
    model, tok = lm
    st = SteeringSettings(max_new_tokens=5, samples=2, do_sample=True, seed=3, alphas=(1.0,))
    v = random_vector(D, 2.0, seed=2)
    qs = {"tax": "the tax should", "guns": "guns are"}
    df = sweep(model, tok, qs, {"direction": (1, v), "random_direction_00": (1, -v)}, [1.0],
               settings=st, model_name="base", chat=True)
    assert df.height == 2 * 3 * 2 * 2  # vectors x alphas(-1,0,1) x questions x samples
    assert set(df["alpha"].to_list()) == {-1.0, 0.0, 1.0}
    zero = df.filter(pl.col("alpha") == 0).sort(["vector", "question_id", "sample"])
    assert (zero.filter(pl.col("vector") == "direction")["text"].to_list()
            == zero.filter(pl.col("vector") == "random_direction_00")["text"].to_list())
    # the rows are the generations generate() gives for that vector and alpha
    prompts, add = format_prompts(tok, ["the tax should", "the tax should"], chat=True)
    direct = generate(model, tok, prompts, max_new_tokens=5, do_sample=True, seed=3,
                      steering=SteeringVector(1, v, 1.0), batch_size=st.batch_size,
                      add_special_tokens=add)
    row = df.filter(pl.col("vector") == "direction", pl.col("alpha") == 1.0,
                    pl.col("question_id") == "tax").sort("sample")
    assert row["text"].to_list() == [g.text for g in direct]

    questions = pl.DataFrame({"id": ["tax", "guns"], "issue": ["taxes", "gun_policy"],
                              "question": ["the tax should", "guns are"]})
    primes = pl.DataFrame({
        "id": ["tax-left-p0", "tax-right-p0", "guns-left-p1", "guns-right-p1"],
        "question_id": ["tax", "tax", "guns", "guns"],
        "identity": ["left", "right", "left", "right"],
        "text": ["I vote left. the tax should", "I vote right. the tax should",
                 "As a liberal, guns are", "As a conservative, guns are"]})
    design = prime_design(questions, primes, pl.DataFrame({"id": ["a", "b"],
                                                           "text": ["I fish.", "I sing."]}))
    gens, pr = run_steering(model, tok, questions, {"direction": (1, v)}, design,
                            settings=st, model_name="instruct", chat=True)
    assert gens["issue"].to_list() == ["taxes" if q == "tax" else "gun_policy"
                                       for q in gens["question_id"].to_list()]
    assert pr.height == 4 * 2 * 2  # conditions x questions x samples
    assert set(pr["condition"].to_list()) == {"none", "left", "right", "persona"}
    assert set(pr.filter(pl.col("condition") == "persona")["prime"].to_list()) == {
        "I fish.", "I sing."}
    chat_prompts, add = format_prompts(tok, ["hi"], chat=True)
    assert chat_prompts[0].startswith("<bos><|user|>hi") and add is False


def test_plain_continuations_are_cut_at_the_next_question():
    assert cut_at("Taxes should fall.\nQuestion: what next?\nAnswer: x", "\nQuestion:") == (
        "Taxes should fall.")
    assert cut_at("no stop here", "\nQuestion:") == "no stop here"
    assert cut_at("a\nQuestion: b", "") == "a\nQuestion: b"


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
    assert non_text_share("ok !! 12 fine") == pytest.approx(0.5)
    assert is_degenerate("") and is_degenerate("!! ?? ## ok", 0.5)
    assert is_degenerate("a b c d a b c d a b c d a b c d", 0.5)
    assert not is_degenerate("Taxes should be lower for small firms.", 0.5)


def test_crossfit_directions_never_see_the_questions_issues():
    rng = np.random.default_rng(0)
    issues = [f"i{k}" for k in range(10)]
    rows, X = [], []
    u = np.zeros(16)
    u[0] = 1.0
    for i in issues:
        offset = rng.standard_normal(16) * 5  # issue-specific offset
        for lab, sgn in (("left", -1), ("right", 1)):
            for _ in range(4):
                rows.append({"label": lab, "issue": i})
                X.append(offset + sgn * u + rng.standard_normal(16) * 0.1)
    meta, X = pl.DataFrame(rows), np.array(X)
    dirs = crossfit_directions(meta, X, issues[:6], n_folds=3, seed=0)
    assert set(dirs) == set(issues[:6])
    lab, iss = meta["label"].to_numpy(), meta["issue"].to_numpy()
    for i, (d, _) in dirs.items():
        assert d @ u / np.linalg.norm(d) > 0.9
        # moving the question's own issue's statements leaves its direction alone
        X2 = X.copy()
        X2[(iss == i) & (lab == "right")] += 100.0
        d2, _ = crossfit_directions(meta, X2, issues[:6], n_folds=3, seed=0)[i]
        np.testing.assert_allclose(d2, d)
    # the folds come from the statements, not the questions: asking fewer questions, or
    # more, gives every question the same direction
    few = crossfit_directions(meta, X, issues[:2], n_folds=3, seed=0)
    every = crossfit_directions(meta, X, issues, n_folds=3, seed=0)
    assert set(few) == set(issues[:2]) and set(every) == set(issues)
    for i in issues[:2]:
        np.testing.assert_array_equal(few[i][0], dirs[i][0])
        np.testing.assert_array_equal(every[i][0], dirs[i][0])
    # 10 issues in 3 folds: each direction leaves out one fold of 3 or 4 issues
    sizes = {}
    for i, (d, _) in every.items():
        sizes.setdefault(d.tobytes(), []).append(i)
    assert sorted(len(v) for v in sizes.values()) == [3, 3, 4]
    for members in sizes.values():
        tr = ~np.isin(iss, members)
        want = X[tr & (lab == "right")].mean(0) - X[tr & (lab == "left")].mean(0)
        np.testing.assert_allclose(every[members[0]][0], want)


class _KeywordJudge:
    """Scores +1 per right word and -1 per left word (a judge a prime echo could fool)."""

    RIGHT, LEFT = ("conservative", "republican"), ("progressive", "democrat")

    def rate(self, texts, questions=None):
        def score(t):
            w = t.lower()
            return float(sum(w.count(k) for k in self.RIGHT) - sum(w.count(k) for k in self.LEFT))
        ok = [bool(t.strip()) for t in texts]
        return pl.DataFrame({
            "judge_score": [score(t) if o else None for t, o in zip(texts, ok, strict=True)],
            "judge_ok": ok, "judge_reply": ["kw"] * len(texts),
            "judge_error": [None if o else "empty" for o in ok]})


def test_score_judge_and_projection_keep_every_row(lm):
    model, tok = lm
    df = pl.DataFrame({"text": ["the tax cut", "", "As a Republican guns"],
                       "question": ["q"] * 3, "issue": ["a", "b", "a"]})
    out = score_judge(df, _KeywordJudge(), terms=["republican"])
    assert out.columns == ["judge", "judge_ok", "judge_error", "judge_reply"]
    assert out["judge_ok"].to_list() == [True, False, True]
    assert out["judge"].to_list() == [0.0, None, 0.0]  # the echo is masked
    assert score_judge(df, None)["judge_error"].to_list() == ["no judge configured"] * 3
    u = np.zeros(D)
    u[3] = 2.0
    dirs = {"a": (u, np.zeros(D)), "b": (-u, np.full(D, 0.5))}
    proj = score_projection(df, model, tok, dirs, 1)
    acts = layer_activations(model, tok, mask_identity_terms(df["text"].to_list(),
                                                             ["republican"]), 1)
    np.testing.assert_allclose(proj["projection"].to_numpy()[[0, 2]], acts[[0, 2], 3],
                               atol=1e-5)
    assert np.isnan(proj["projection"][1])
    with pytest.raises(ValueError, match="no projection direction"):
        score_projection(df, model, tok, {"a": dirs["a"]}, 1)
