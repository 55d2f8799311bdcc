"""Tests of the SEAL study (rlhf_audit.reward.*, re-exported as rlhf_audit.seal): scoring, ties,
agreement/regimes/resistance, VIF check and imprint OLS, angle, robustness, planted RMs.

Analyses are checked against planted answers; stochastic ones over many seeds.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from tiny import tiny_llama

from rlhf_audit import seal
from rlhf_audit.seal import SealSettings

torch.set_num_threads(1)

SIDES = ("chosen", "rejected")


# --------------------------------------------------------------------------- helpers


def make_pairs(n, rng, feats=("helpful", "harmless", "sentiment"), r=None, labels=None):
    """A pairs table; rewards standard normal unless given, labels random unless given."""
    d = {"pair_id": [f"p{i:05d}" for i in range(n)]}
    for c in seal.REWARD_COLUMNS:
        d[c] = rng.normal(size=n) if r is None else r[c]
    for s in SIDES:
        for f in feats:
            if labels is not None:
                d[f"{s}_{f}"] = labels[f"{s}_{f}"]
            elif f == "sentiment":
                d[f"{s}_{f}"] = rng.integers(-1, 2, n)
            else:
                d[f"{s}_{f}"] = rng.integers(0, 2, n)
    df = pl.DataFrame(d)
    return df.with_columns([pl.col(f"{s}_{f}").cast(pl.Int8) for s in SIDES for f in feats])


def settings_for(feats, **kw):
    return SealSettings(features=tuple(feats), target_features=(), spoiler_features=(),
                        gamma_features=("harmless", "helpful"), **kw)


# --------------------------------------------------------------------------- transcripts


def test_split_transcript_at_last_assistant_keeps_marker_like_seal():
    t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: Assistant: is a word\n\nAssistant: yes it is"
    prefix, last = seal.split_transcript(t)
    assert last == "Assistant: yes it is"
    assert prefix + last == t
    assert seal.split_transcript(t, keep_marker=False)[1] == "yes it is"


def test_split_transcript_without_assistant_names_the_row():
    with pytest.raises(seal.TranscriptError, match="row 17.*no 'Assistant:' turn"):
        seal.split_transcript("\n\nHuman: only a question", row=17)


# --------------------------------------------------------------------------- scoring

WORDS = ("human assistant : the a cat dog sat on mat how are you i am fine thanks what is "
         "weather like today it rains sun shines please tell me story once upon time there "
         "was king who loved music").split()


def _word_tokenizer(kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "deberta":
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    else:  # Llama-style: BOS only, pair concatenated
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A", pair="[CLS] $A $B:1", special_tokens=[("[CLS]", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", unk_token="[UNK]")
    if kind == "deberta":
        tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tok, len(vocab)


def _tiny_rm(kind, tmp_path):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    torch.manual_seed(0)
    tok, v = _word_tokenizer(kind)
    if kind == "deberta":
        cfg = DebertaV2Config(vocab_size=v, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64,
                              max_position_embeddings=128, type_vocab_size=2,
                              relative_attention=True, position_buckets=16,
                              pos_att_type=["p2c", "c2p"], num_labels=1, pad_token_id=0,
                              pooler_hidden_size=32, initializer_range=0.5)
        model = DebertaV2ForSequenceClassification(cfg)
    else:
        model = tiny_llama(seed=0, n_layers=2, max_positions=2048, head="reward", vocab_size=v,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           initializer_range=0.5)
    d = tmp_path / kind
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return AutoModelForSequenceClassification.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def _texts(rng, n):
    prefixes, responses = [], []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        turns = []
        for _ in range(k):
            turns.append("\n\nhuman : " + " ".join(rng.choice(WORDS[3:], rng.integers(1, 12))))
            turns.append("\n\nassistant : " + " ".join(rng.choice(WORDS[3:], rng.integers(1, 9))))
        prefixes.append("".join(turns) + "\n\nhuman : " + " ".join(rng.choice(WORDS[3:], 3)))
        responses.append("assistant : " + " ".join(rng.choice(WORDS[3:], rng.integers(1, 15))))
    return prefixes, responses


@pytest.mark.parametrize("kind", ["deberta", "llama"])
def test_batched_scores_equal_one_at_a_time(kind, tmp_path):
    model, tok = _tiny_rm(kind, tmp_path)
    rng = np.random.default_rng(1)
    prefixes, responses = _texts(rng, 13)
    batched = seal.score_texts(model, tok, prefixes, responses, batch_size=5, max_length=128)
    single = np.array([seal.score_texts(model, tok, [p], [r], batch_size=1, max_length=128)[0]
                       for p, r in zip(prefixes, responses, strict=True)])
    assert batched.shape == (13,)
    assert np.std(single) > 1e-4  # distinct scores, so equality is not vacuous
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    # One-at-a-time through plain HF (the tokenizer's own pair encoding) agrees too.
    with torch.no_grad():
        ref = [model(**tok(p, r, return_tensors="pt")).logits[0, 0].item()
               for p, r in zip(prefixes[:3], responses[:3], strict=True)]
    np.testing.assert_allclose(single[:3], ref, rtol=1e-4, atol=1e-5)


def test_truncation_cuts_the_start_of_the_prefix(tmp_path):
    model, tok = _tiny_rm("deberta", tmp_path)
    prefix = " ".join(WORDS[3:] * 3)  # 1 token per word
    response = "assistant : i am fine thanks"
    n_resp = len(response.split())
    max_length = 20
    keep = max_length - 3 - n_resp  # [CLS] A [SEP] B [SEP]
    tail = " ".join(prefix.split()[-keep:])
    cut = seal.score_texts(model, tok, [prefix], [response], max_length=max_length)
    ref = seal.score_texts(model, tok, [tail], [response], max_length=512)
    head = seal.score_texts(model, tok, [" ".join(prefix.split()[:keep])], [response])
    np.testing.assert_allclose(cut, ref, rtol=1e-5, atol=1e-6)
    assert abs(cut[0] - head[0]) > 1e-6  # the start, not the end, was dropped


def test_score_pairs_names_the_bad_pair(tmp_path):
    model, tok = _tiny_rm("llama", tmp_path)
    pairs = pl.DataFrame({"pair_id": ["a", "b"],
                          "chosen": ["human : hi assistant : hello", "human : hi"],
                          "rejected": ["human : hi assistant : no", "human : x assistant : y"]})
    with pytest.raises(seal.TranscriptError, match="pair_id 'b' \\(chosen\\)"):
        seal.score_pairs(model, tok, pairs, seal.ScoringSettings(marker="assistant :"))


# --------------------------------------------------------------------------- OLS


def test_ols_clustered_matches_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    n_pairs, k = 300, 6
    X = rng.integers(0, 2, (2 * n_pairs, k)).astype(float)
    X[:, -1] = rng.integers(-1, 2, 2 * n_pairs)
    groups = np.tile(np.arange(n_pairs), 2)
    y = X @ rng.normal(size=k) + rng.normal(size=n_pairs)[groups] + rng.normal(size=2 * n_pairs)
    names = [f"x{j}" for j in range(k)]
    ours = seal.ols_clustered(X, y, names, groups, bonferroni=False)
    ref = sm.OLS(y, sm.add_constant(X)).fit(cov_type="cluster", cov_kwds={"groups": groups},
                                            use_t=True)
    np.testing.assert_allclose(ours["coef"].to_numpy(), ref.params, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours["se"].to_numpy(), ref.bse, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours["p"].to_numpy(), ref.pvalues, rtol=0, atol=1e-8)
    ci = ref.conf_int()
    np.testing.assert_allclose(ours["lo"].to_numpy(), ci[:, 0], atol=1e-8)
    # No groups = every row its own cluster = HC1.
    hc1 = sm.OLS(y, sm.add_constant(X)).fit(cov_type="HC1")
    np.testing.assert_allclose(seal.ols_clustered(X, y, names)["se"].to_numpy(), hc1.bse,
                               atol=1e-8)
    # Bonferroni: p times the number of non-intercept terms, capped at 1.
    b = seal.ols_clustered(X, y, names, groups)
    np.testing.assert_allclose(b["p_bonferroni"].to_numpy()[1:],
                               np.minimum(1, ref.pvalues[1:] * k), atol=1e-12)


def test_ols_drops_constant_and_collinear_columns_and_matches_the_reduced_fit():
    import statsmodels.api as sm

    rng = np.random.default_rng(4)
    n = 200
    a, b = rng.normal(size=n), rng.normal(size=n)
    X = np.column_stack([a, np.ones(n) * 3, b, a + 2 * b])
    y = 1 + 2 * a - b + rng.normal(size=n)
    t = seal.ols_clustered(X, y, ["a", "const3", "b", "a_plus_2b"])
    assert t.filter(pl.col("dropped"))["term"].to_list() == ["const3", "a_plus_2b"]
    ref = sm.OLS(y, sm.add_constant(np.column_stack([a, b]))).fit(cov_type="HC1")
    kept = t.filter(~pl.col("dropped"))
    np.testing.assert_allclose(kept["coef"].to_numpy(), ref.params, atol=1e-8)
    np.testing.assert_allclose(kept["se"].to_numpy(), ref.bse, atol=1e-8)


def _imprint_data(seed, n_pairs=150):
    """Rewards with planted feature weights, a pair-level effect and within-pair-correlated
    labels (so ignoring the pairing gives too-narrow intervals)."""
    rng = np.random.default_rng(seed)
    feats = ("helpful", "harmless", "eloquent", "sentiment")
    w_pre = np.array([0.5, 1.0, 0.0, 0.3])
    w_post = np.array([1.5, 2.0, -0.4, 0.0])
    labels = {}
    for f in feats:
        if f == "sentiment":
            c = rng.integers(-1, 2, n_pairs)
            r = np.where(rng.random(n_pairs) < 0.8, c, rng.integers(-1, 2, n_pairs))
        else:
            c = rng.integers(0, 2, n_pairs)
            r = np.where(rng.random(n_pairs) < 0.8, c, 1 - c)
        labels[f"chosen_{f}"], labels[f"rejected_{f}"] = c, r
    Xc = np.column_stack([labels[f"chosen_{f}"] for f in feats]).astype(float)
    Xr = np.column_stack([labels[f"rejected_{f}"] for f in feats]).astype(float)
    u_pre, u_post = rng.normal(0, 1.0, n_pairs), rng.normal(0, 1.0, n_pairs)
    r = {"r_pre_chosen": Xc @ w_pre + u_pre + rng.normal(0, 0.4, n_pairs),
         "r_pre_rejected": Xr @ w_pre + u_pre + rng.normal(0, 0.4, n_pairs),
         "r_post_chosen": Xc @ w_post + u_post + rng.normal(0, 0.4, n_pairs),
         "r_post_rejected": Xr @ w_post + u_post + rng.normal(0, 0.4, n_pairs)}
    pairs = make_pairs(n_pairs, rng, feats, r=r, labels=labels)
    truth = {"post": dict(zip(feats, w_post, strict=True)),
             "pre": dict(zip(feats, w_pre, strict=True)),
             "shift": dict(zip(feats, w_post - w_pre, strict=True))}
    return pairs, feats, truth


def test_imprint_intervals_cover_planted_weights_about_95_percent():
    hits, naive_hits, total = 0, 0, 0
    for seed in range(150):
        pairs, feats, truth = _imprint_data(seed)
        imp = seal.feature_imprint(pairs, settings_for(feats))
        for row in imp.filter(pl.col("term") != "intercept").iter_rows(named=True):
            hits += row["lo"] <= truth[row["outcome"]][row["term"]] <= row["hi"]
            total += 1
        # The same regression ignoring the pairing (HC1), for contrast.
        X = np.vstack([pairs.select([f"{s}_{f}" for f in feats]).to_numpy() for s in SIDES])
        y = np.concatenate([pairs[f"r_post_{s}"].to_numpy() for s in SIDES])
        naive = seal.ols_clustered(X, y, feats).filter(pl.col("term") != "intercept")
        naive_hits += sum(r["lo"] <= truth["post"][r["term"]] <= r["hi"]
                          for r in naive.iter_rows(named=True))
    coverage = hits / total
    assert 0.925 <= coverage <= 0.975, coverage
    assert naive_hits / (150 * len(feats)) < 0.9  # clustering matters in this design


def test_imprint_leaves_out_pairs_with_missing_labels_and_counts_them():
    pairs, feats, _ = _imprint_data(0)
    pairs = pairs.with_columns(pl.when(pl.col("pair_id").is_in(["p00003", "p00007"]))
                               .then(None).otherwise(pl.col("chosen_helpful"))
                               .alias("chosen_helpful"))
    imp = seal.feature_imprint(pairs, settings_for(feats))
    assert imp["n_pairs_excluded"].unique().to_list() == [2]
    assert imp["n_clusters"].unique().to_list() == [pairs.height - 2]
    assert imp["n_obs"].unique().to_list() == [2 * (pairs.height - 2)]


# --------------------------------------------------------------------------- agreement, regimes


def test_planted_agreement_rate_is_recovered_within_its_interval():
    p_pre, p_post, n = 0.57, 0.74, 400
    hits = {"agreement_pre": 0, "agreement_post": 0}
    ests = []
    for seed in range(120):
        rng = np.random.default_rng(seed)
        r = {}
        for rm, p in (("pre", p_pre), ("post", p_post)):
            agree = rng.random(n) < p
            base = rng.normal(size=n)
            gap = rng.exponential(1.0, n) + 1e-6
            r[f"r_{rm}_chosen"] = base + np.where(agree, gap, -gap)
            r[f"r_{rm}_rejected"] = base
        e = seal.agreement(make_pairs(n, rng, r=r), settings_for(("helpful", "harmless"),
                                                                 n_boot=300, seed=seed))
        hits["agreement_pre"] += e["agreement_pre"].covers(p_pre)
        hits["agreement_post"] += e["agreement_post"].covers(p_post)
        ests.append(e["agreement_post"].value)
    for k, h in hits.items():
        assert 0.88 <= h / 120 <= 0.99, (k, h)
    assert abs(np.mean(ests) - p_post) < 3 * math.sqrt(p_post * (1 - p_post) / n / 120)


def test_exact_ties_are_neither_agreement_nor_disagreement_and_are_counted():
    rng = np.random.default_rng(0)
    n, n_tie_post, n_tie_pre = 1000, 37, 11
    base = rng.normal(size=n)
    agree = rng.random(n) < 0.7
    gap = rng.uniform(0.1, 1, n)
    r = {"r_post_rejected": base, "r_post_chosen": base + np.where(agree, gap, -gap),
         "r_pre_rejected": base, "r_pre_chosen": base + gap}
    r["r_post_chosen"][:n_tie_post] = base[:n_tie_post]  # exact ties
    r["r_pre_chosen"][-n_tie_pre:] = base[-n_tie_pre:]
    pairs = make_pairs(n, rng, r=r)
    st = settings_for(("helpful", "harmless"), n_boot=100)
    assert seal.tie_counts(pairs) == {"pre": n_tie_pre, "post": n_tie_post}
    e = seal.agreement(pairs, st)
    want = agree[n_tie_post:].mean()
    assert e["agreement_post"].value == pytest.approx(want)
    assert e["agreement_post"].n == n - n_tie_post
    assert e["agreement_pre"].value == 1.0 and e["agreement_pre"].n == n - n_tie_pre
    res = seal.alignment_resistance(pairs, st)
    assert res.filter(pl.col("stratum") == "all")["resistance"].item() == pytest.approx(1 - want)
    reg = seal.alignment_regimes(pairs, st)
    assert reg["n_tied"].unique().to_list() == [n_tie_post + n_tie_pre]
    assert reg["count"].sum() == n - n_tie_post - n_tie_pre
    h = seal.headline(pairs, st)
    assert h["n_ties_post"].value == n_tie_post and h["n_ties_pre"].value == n_tie_pre
    assert h["n_ties_post"].n == n
    # All tied: agreement is undefined, not 0.
    flat = make_pairs(4, rng, r={c: np.zeros(4) for c in seal.REWARD_COLUMNS})
    a = seal.agreement(flat, st)["agreement_post"]
    assert math.isnan(a.value) and "undefined" in a.method


def test_reward_models_score_in_float32_whatever_dtype_auto_says(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from rlhf_audit.lm import loader as models

    _tiny_rm("deberta", tmp_path)
    d = tmp_path / "deberta"
    # dtype: auto on a GPU means bf16; the scoring loader must not follow it.
    monkeypatch.setattr(models, "resolve_dtype", lambda dtype, dev: (
        torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)))
    lm_like, _ = models.load_reward_model({"path": str(d)}, device="cpu", dtype="auto")
    assert next(lm_like.parameters()).dtype == torch.bfloat16
    model, tok = seal.load_scoring_model({"path": str(d)}, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    rng = np.random.default_rng(5)
    prefixes, responses = _texts(rng, 12)
    pairs = pl.DataFrame({"pair_id": [f"q{i}" for i in range(6)],
                          "chosen": [p + r for p, r in zip(prefixes[0::2], responses[0::2],
                                                           strict=True)],
                          "rejected": [p + r for p, r in zip(prefixes[1::2], responses[1::2],
                                                             strict=True)]})
    st = seal.ScoringSettings(marker="assistant :")
    got = seal.score_pairs(model, tok, pairs, st)
    ref = AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32)
    want = seal.score_pairs(ref, tok, pairs, st)
    np.testing.assert_allclose(got["r_chosen"].to_numpy(), want["r_chosen"].to_numpy(),
                               rtol=1e-6, atol=1e-6)
    # bf16 scoring would quantise the rewards: the gap the float32 path avoids.
    bf = seal.score_pairs(lm_like, tok, pairs, seal.ScoringSettings(marker="assistant :",
                                                                    dtype="bfloat16"))
    assert np.abs(bf["r_chosen"].to_numpy() - want["r_chosen"].to_numpy()).max() > 1e-3
    # A model handed over in bf16 is cast to float32 before scoring.
    seal.score_pairs(lm_like, tok, pairs, st)
    assert next(lm_like.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        seal.ensure_scoring_dtype(model, "int8")


def test_no_truncation_by_default_and_cut_texts_are_counted(tmp_path):
    model, tok = _tiny_rm("deberta", tmp_path)
    rng = np.random.default_rng(2)
    prefixes, responses = _texts(rng, 10)
    pairs = pl.DataFrame({"pair_id": [f"q{i}" for i in range(5)],
                          "chosen": [p + r for p, r in zip(prefixes[0::2], responses[0::2],
                                                           strict=True)],
                          "rejected": [p + r for p, r in zip(prefixes[1::2], responses[1::2],
                                                             strict=True)]})
    full = seal.score_pairs(model, tok, pairs, seal.ScoringSettings(marker="assistant :"))
    assert not full["truncated_chosen"].any() and not full["truncated_rejected"].any()
    lengths = np.concatenate([full["n_tokens_chosen"].to_numpy(),
                              full["n_tokens_rejected"].to_numpy()])
    limit = int(np.median(lengths))
    cut = seal.score_pairs(model, tok, pairs, seal.ScoringSettings(marker="assistant :",
                                                                   max_length=limit))
    summ = seal.truncation_summary(cut)
    assert summ == {"n_texts": 10, "n_truncated": int((lengths > limit).sum()),
                    "max_tokens": int(lengths.max())}
    assert summ["n_truncated"] > 0
    assert seal.truncation_summary(full)["n_truncated"] == 0


def test_regime_shares_recovered_from_planted_transition_matrix():
    p_pre = 0.57
    p_post_given = {1: 0.85, 0: 0.60}  # P(aligned post | aligned pre / misaligned pre)
    truth = {"stayed_aligned": p_pre * 0.85, "reversed": p_pre * 0.15,
             "got_aligned": (1 - p_pre) * 0.60, "resisted": (1 - p_pre) * 0.40}
    n, n_seeds = 600, 60
    hits, total, sums = 0, 0, dict.fromkeys(truth, 0.0)
    for seed in range(n_seeds):
        rng = np.random.default_rng(100 + seed)
        pre = (rng.random(n) < p_pre).astype(int)
        post = (rng.random(n) < np.where(pre == 1, p_post_given[1], p_post_given[0])).astype(int)
        r = {}
        for rm, a in (("pre", pre), ("post", post)):
            base = rng.normal(size=n)
            r[f"r_{rm}_rejected"] = base
            r[f"r_{rm}_chosen"] = base + np.where(a == 1, 1, -1) * rng.uniform(0.1, 2, n)
        reg = seal.alignment_regimes(make_pairs(n, rng, r=r),
                                     settings_for(("helpful", "harmless"), n_boot=300, seed=seed))
        assert reg["count"].sum() == n
        assert abs(reg["share"].sum() - 1) < 1e-12
        for row in reg.iter_rows(named=True):
            hits += row["lo"] <= truth[row["regime"]] <= row["hi"]
            total += 1
            sums[row["regime"]] += row["share"] / n_seeds
    assert 0.9 <= hits / total <= 0.99, hits / total
    for k, v in truth.items():
        sd_mean = math.sqrt(v * (1 - v) / n / n_seeds)
        assert abs(sums[k] - v) < 4 * sd_mean, (k, sums[k], v)


def test_regime_labels_on_hand_cases():
    r = {"r_pre_chosen": np.array([1, 0, 0, 1.0]), "r_pre_rejected": np.array([0, 1, 1, 0.0]),
         "r_post_chosen": np.array([1, 1, 0, 0.0]), "r_post_rejected": np.array([0, 0, 1, 1.0])}
    pairs = make_pairs(4, np.random.default_rng(0), r=r)
    assert seal.regime_labels(pairs).tolist() == ["stayed_aligned", "got_aligned", "resisted",
                                                  "reversed"]


# --------------------------------------------------------------------------- gamma, resistance

ORDER = [(1, 1), (1, 0), (0, 1), (0, 0)]  # (harmless, helpful), best first


def test_gamma_on_all_16_label_combinations():
    combos = [(c, r) for c in ORDER for r in ORDER]
    labels = {f"{s}_{f}": np.array([(c if s == "chosen" else r)[j] for c, r in combos])
              for s in SIDES for j, f in enumerate(("harmless", "helpful"))}
    r = {c: np.zeros(16) for c in seal.REWARD_COLUMNS}
    pairs = make_pairs(16, np.random.default_rng(0), ("harmless", "helpful"), r=r, labels=labels)
    gamma = seal.labeller_preference(pairs, ("harmless", "helpful"))
    for (c, rj), g in zip(combos, gamma, strict=True):
        ic, ir = ORDER.index(c), ORDER.index(rj)  # lower index = ranked higher
        want = "chosen_better" if ic < ir else "rejected_better" if ic > ir else "indifferent"
        assert g == want, (c, rj, g)
    assert sorted(set(gamma.tolist())) == ["chosen_better", "indifferent", "rejected_better"]


def test_gamma_missing_labels_give_none_and_are_reported():
    labels = {"chosen_harmless": [1, None], "chosen_helpful": [1, 1],
              "rejected_harmless": [0, 0], "rejected_helpful": [0, 0]}
    r = {c: np.array([1.0, 0.0]) if "chosen" in c else np.array([0.0, 1.0])
         for c in seal.REWARD_COLUMNS}
    pairs = make_pairs(2, np.random.default_rng(0), ("harmless", "helpful"), r=r, labels=labels)
    assert seal.labeller_preference(pairs).tolist() == ["chosen_better", None]
    res = seal.alignment_resistance(pairs, settings_for(("harmless", "helpful"), n_boot=50))
    assert res.filter(pl.col("stratum") == "labels_missing")["n_pairs"].item() == 1
    assert res.filter(pl.col("stratum") == "all")["resistance"].item() == 0.5


def test_resistance_per_gamma_stratum_recovers_planted_rates():
    rng = np.random.default_rng(7)
    n = 3000
    ci = rng.integers(0, 4, n)
    ri = rng.integers(0, 4, n)
    gamma = np.where(ci < ri, "chosen_better", np.where(ci > ri, "rejected_better", "indifferent"))
    planted = {"chosen_better": 0.15, "rejected_better": 0.55, "indifferent": 0.30}
    wrong = rng.random(n) < np.vectorize(planted.get)(gamma)
    labels = {}
    for s, idx in (("chosen", ci), ("rejected", ri)):
        labels[f"{s}_harmless"] = np.array([ORDER[i][0] for i in idx])
        labels[f"{s}_helpful"] = np.array([ORDER[i][1] for i in idx])
    base = rng.normal(size=n)
    r = {"r_pre_chosen": rng.normal(size=n), "r_pre_rejected": rng.normal(size=n),
         "r_post_rejected": base, "r_post_chosen": base + np.where(wrong, -1, 1) * 0.5}
    pairs = make_pairs(n, rng, ("harmless", "helpful"), r=r, labels=labels)
    res = seal.alignment_resistance(pairs, settings_for(("harmless", "helpful"), n_boot=400))
    for row in res.filter(pl.col("stratum").is_in(list(planted))).iter_rows(named=True):
        assert row["n_pairs"] == int((gamma == row["stratum"]).sum())
        assert row["resistance"] == pytest.approx(wrong[gamma == row["stratum"]].mean())
        assert row["lo"] - 0.02 <= planted[row["stratum"]] <= row["hi"] + 0.02
    assert res.filter(pl.col("stratum") == "all")["resistance"].item() == pytest.approx(
        wrong.mean())


# --------------------------------------------------------------------------- angle


@pytest.mark.parametrize("u,v,want", [
    ((1, 0), (0, 1), 90.0),      # counter-clockwise quarter turn
    ((0, 1), (1, 0), -90.0),     # clockwise
    ((1, 0), (1, 1), 45.0),
    ((1, 0), (1, -1), -45.0),
    ((2, 1), (4, 2), 0.0),       # same direction, different length
    ((1, 1), (-1, -1), 180.0),   # opposite: +180, never -180
    ((1, 0), (-1, -0.0), 180.0),
    ((-1, 0), (0, -1), 90.0),
    ((3, -1), (1, 3), 90.0),     # u . v = 0, u x v = 10 > 0
])
def test_shift_angle_sign_convention(u, v, want):
    got = seal.reward_shift_angle([u[0]], [u[1]], [v[0]], [v[1]])[0]
    assert got == pytest.approx(want, abs=1e-12)


def test_shift_angle_zero_vector_is_nan_and_positive_means_toward_rejected():
    assert np.isnan(seal.reward_shift_angle([0], [0], [1], [0])[0])
    # Chosen above rejected before (agreement); after, rejected above chosen: CCW, positive.
    assert seal.reward_shift_angle([2], [1], [1], [2])[0] > 0


def test_shift_angle_regression_recovers_planted_feature_effect():
    rng = np.random.default_rng(11)
    n = 2000
    feats = ("helpful", "harmless")
    pairs = make_pairs(n, rng, feats)
    theta = 10 + 25 * pairs["chosen_helpful"].to_numpy() + rng.normal(0, 5, n)
    rad = np.radians(theta)
    # u at a random angle; v = u rotated by theta (any lengths).
    phi = rng.uniform(-np.pi, np.pi, n)
    pairs = pairs.with_columns(pl.Series("r_pre_chosen", np.cos(phi)),
                               pl.Series("r_pre_rejected", np.sin(phi)),
                               pl.Series("r_post_chosen", 2 * np.cos(phi + rad)),
                               pl.Series("r_post_rejected", 2 * np.sin(phi + rad)))
    t = seal.shift_angle_regression(pairs, settings_for(feats))
    row = t.filter(pl.col("term") == "chosen_helpful").row(0, named=True)
    assert row["lo"] <= 25 <= row["hi"] and row["significant"]
    other = t.filter(pl.col("term") == "rejected_harmless").row(0, named=True)
    assert other["lo_bonferroni"] <= 0 <= other["hi_bonferroni"]


# --------------------------------------------------------------------------- robustness


B_CHOSEN, B_REJECTED, P_RIGHT_BEFORE = 0.12, -0.10, 0.75


def _robustness_data(seed, n=800, base_rate=0.3):
    """Planted signed flip effects, SEAL's design.

    The post RM gets a pair right before rewriting with probability
    P_RIGHT_BEFORE; for those, P(wrong after) = base_rate + B_CHOSEN * d_c +
    B_REJECTED * d_r, where d = original - rewritten sentiment label of that
    side. Rejected-harmless labels flip with no effect; chosen-helpful never
    flips. So over all pairs the slopes are P_RIGHT_BEFORE * B, and among the
    pairs right before they are B."""
    rng = np.random.default_rng(seed)
    feats = ("harmless", "helpful", "sentiment")
    right = rng.random(n) < P_RIGHT_BEFORE
    gap = rng.uniform(0.5, 2, n)
    r = {"r_pre_chosen": rng.normal(1, 0.5, n), "r_pre_rejected": rng.normal(0, 0.5, n),
         "r_post_chosen": np.where(right, gap, -gap), "r_post_rejected": np.zeros(n)}
    orig = make_pairs(n, rng, feats, r=r)

    def moved(labels):
        step = rng.choice([-1, 0, 1], n, p=[0.15, 0.7, 0.15])
        return np.clip(labels + step, -1, 1)

    sc, sr = orig["chosen_sentiment"].to_numpy(), orig["rejected_sentiment"].to_numpy()
    new_c, new_r = moved(sc), moved(sr)
    d_c, d_r = sc - new_c, sr - new_r
    p_wrong = base_rate + B_CHOSEN * d_c + B_REJECTED * d_r
    assert (p_wrong > 0).all() and (p_wrong < 1).all()
    became = right & (rng.random(n) < p_wrong)
    flip_h = rng.random(n) < 0.2
    new_harm = np.where(flip_h, 1 - orig["rejected_harmless"].to_numpy(),
                        orig["rejected_harmless"].to_numpy())
    rew = orig.with_columns(
        pl.Series("chosen_sentiment", new_c).cast(pl.Int8),
        pl.Series("rejected_sentiment", new_r).cast(pl.Int8),
        pl.Series("rejected_harmless", new_harm).cast(pl.Int8),
        pl.Series("r_post_chosen", np.where(became, -orig["r_post_chosen"].to_numpy(),
                                            orig["r_post_chosen"].to_numpy())))
    return orig, rew, feats


@pytest.mark.parametrize("population,scale", [("all", P_RIGHT_BEFORE), ("correct_before", 1.0)])
def test_flip_lpm_recovers_planted_signed_effects(population, scale):
    want = {"flip_chosen_sentiment": B_CHOSEN * scale,
            "flip_rejected_sentiment": B_REJECTED * scale, "flip_rejected_harmless": 0.0}
    hits = dict.fromkeys(want, 0)
    coefs = {k: [] for k in want}
    n_seeds = 60
    for seed in range(n_seeds):
        orig, rew, feats = _robustness_data(seed)
        t = seal.robustness_flip_regression(orig, rew, settings_for(
            feats, robustness_population=population))
        for k, w in want.items():
            row = t.filter(pl.col("term") == k).row(0, named=True)
            hits[k] += row["lo"] <= w <= row["hi"]
            coefs[k].append(row["coef"])
        # flips that never happen are reported as dropped, not silently removed
        assert t.filter(pl.col("term") == "flip_chosen_helpful")["dropped"].item()
        assert t["population"][0] == population and t["encoding"][0] == "signed"
        n_rows = t["n_obs"][0]
        if population == "all":
            assert n_rows == orig.height
        else:
            assert n_rows == int((orig["r_post_chosen"] > 0).sum())
    for k, w in want.items():
        assert 0.88 <= hits[k] / n_seeds <= 1.0, (k, hits[k])
        assert abs(np.mean(coefs[k]) - w) < 4 * np.std(coefs[k]) / math.sqrt(n_seeds), k


def test_unsigned_flips_lose_the_direction_signed_flips_keep():
    orig, rew, feats = _robustness_data(0, n=6000)
    signed = seal.robustness_flip_regression(orig, rew, settings_for(feats))
    unsigned = seal.robustness_flip_regression(orig, rew, settings_for(
        feats, flip_encoding="unsigned"))
    s = signed.filter(pl.col("term") == "flip_chosen_sentiment").row(0, named=True)
    u = unsigned.filter(pl.col("term") == "flip_chosen_sentiment").row(0, named=True)
    assert s["significant"] and abs(s["coef"] - B_CHOSEN * P_RIGHT_BEFORE) < 0.03
    # Up and down moves are equally likely here, so an indicator of "changed" sees no effect.
    assert u["lo"] <= 0 <= u["hi"]
    f = seal.flip_indicators(orig, rew, feats, "signed")
    d = (orig["chosen_sentiment"].cast(pl.Int16) - rew["chosen_sentiment"].cast(pl.Int16))
    assert f["flip_chosen_sentiment"].to_list() == d.cast(pl.Float64).to_list()
    with pytest.raises(ValueError, match="flip_encoding"):
        SealSettings(flip_encoding="abs")


def test_robustness_summary_values():
    orig, rew, feats = _robustness_data(1, n=500)
    sub = rew.head(200)
    emb = np.random.default_rng(0).normal(size=(400, 8))
    sim = seal.semantic_similarity(emb, emb + 0.1)
    simdf = pl.DataFrame({"pair_id": sub["pair_id"], "sim_chosen": sim[:200],
                          "sim_rejected": sim[200:]})
    e = seal.robustness_summary(orig, sub, settings_for(feats, n_boot=200), simdf)
    o = orig.head(200)
    a_o = (o["r_post_chosen"] > o["r_post_rejected"]).to_numpy().mean()
    a_r = (sub["r_post_chosen"] > sub["r_post_rejected"]).to_numpy().mean()
    assert e["agreement_post_original"].value == pytest.approx(a_o)
    assert e["agreement_post_rewritten"].value == pytest.approx(a_r)
    assert e["agreement_post_drop"].value == pytest.approx(a_o - a_r)
    x = np.concatenate([o["r_post_chosen"], o["r_post_rejected"]])
    y = np.concatenate([sub["r_post_chosen"], sub["r_post_rejected"]])
    assert e["rewrite_reward_r"].value == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert e["rewrite_similarity"].value == pytest.approx(sim.mean())
    assert e["rewrite_reward_r"].n == 200
    # Undefined correlations are reported as undefined with the reason, never as 0.
    flat = sub.with_columns(pl.lit(1.5).alias("r_post_chosen"), pl.lit(1.5).alias(
        "r_post_rejected"))
    u = seal.robustness_summary(orig, flat, settings_for(feats, n_boot=50))["rewrite_reward_r"]
    assert math.isnan(u.value) and math.isnan(u.lo) and "constant" in u.method
    assert "only 2 values" in seal.correlation_estimate([1, 2], [2, 3]).method
    cos = seal.semantic_similarity(np.array([[1.0, 0], [1, 1]]), np.array([[0.0, 2], [2, 2]]))
    np.testing.assert_allclose(cos, [0.0, 1.0])


def test_rewritten_pairs_must_exist_in_original():
    orig, rew, _ = _robustness_data(0, n=20)
    bad = rew.with_columns(pl.Series("pair_id", ["zz"] + rew["pair_id"].to_list()[1:]))
    with pytest.raises(ValueError, match="'zz'.*not in the original"):
        seal.robustness_summary(orig, bad)


def test_select_rewrite_pairs_is_reproducible_and_order_free():
    ids = [f"p{i}" for i in range(1000)]
    a = seal.select_rewrite_pairs(ids, 0.01, seed=3)
    b = seal.select_rewrite_pairs(list(reversed(ids)), 0.01, seed=3)
    assert a == b and len(a) == 10 and len(set(a)) == 10
    assert seal.select_rewrite_pairs(ids, 0.01, seed=4) != a
    assert len(seal.select_rewrite_pairs(ids[:5], 0.01)) == 1


# --------------------------------------------------------------------------- headline, inputs


def test_headline_keys_are_documented_and_complete(tmp_path):
    pairs, feats, _ = _imprint_data(0, n_pairs=120)
    st = SealSettings(features=feats, target_features=("helpful", "harmless"),
                      spoiler_features=("eloquent", "sentiment"), n_boot=100)
    rew_pairs = pairs.head(30).with_columns(pl.col("r_post_chosen") * 0.9)
    sim = pl.DataFrame({"pair_id": rew_pairs["pair_id"], "sim_chosen": np.full(30, 0.95),
                        "sim_rejected": np.full(30, 0.97)})
    trunc = {"pre": {"n_texts": 240, "n_truncated": 3, "max_tokens": 900},
             "post": {"n_texts": 240, "n_truncated": 0, "max_tokens": 900}}
    h = seal.headline(pairs, st, rewritten=rew_pairs, similarity=sim, truncation=trunc)
    assert h["n_truncated_pre"].value == 3 and h["n_truncated_pre"].n == 240
    assert h["agreement_post_rewrite_original"].n == 30
    documented = seal.headline_keys(st.regressors)
    assert set(h) == set(documented)
    assert all(isinstance(e, seal.Estimate) and e.n > 0 for e in h.values())
    assert h["rewrite_similarity"].value == pytest.approx(0.96)
    assert h["alignment_resistance"].value == pytest.approx(1 - h["agreement_post"].value)
    table = seal.estimates_table(h, documented)
    assert table.height == len(h) and table["description"].null_count() == 0
    # Figures: PNG and PDF written.
    imp = seal.feature_imprint(pairs, st)
    seal.plot_imprint(imp, tmp_path / "imprint.png")
    seal.plot_regimes(seal.alignment_regimes(pairs, st), tmp_path / "regimes.png")
    seal.plot_robustness(seal.robustness_summary(pairs, rew_pairs, st), tmp_path / "rob.png")
    for name in ("imprint", "regimes", "rob"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / f"{name}.pdf").exists()


def test_bad_inputs_name_the_pair_and_the_fix():
    rng = np.random.default_rng(0)
    pairs = make_pairs(5, rng).with_columns(
        pl.when(pl.col("pair_id") == "p00002").then(float("nan"))
        .otherwise(pl.col("r_post_chosen")).alias("r_post_chosen"))
    with pytest.raises(ValueError, match="r_post_chosen.*'p00002'"):
        seal.agreement(pairs)
    pre = pl.DataFrame({"pair_id": ["a", "b"], "r_chosen": [1.0, 2], "r_rejected": [0.0, 1]})
    post = pl.DataFrame({"pair_id": ["a", "c"], "r_chosen": [1.0, 2], "r_rejected": [0.0, 1]})
    with pytest.raises(ValueError, match=r"only in pre scores: \['b'\].*only in post scores: "
                                         r"\['c'\]"):
        seal.assemble_pairs(pre, post)
    with pytest.raises(ValueError, match="not in features"):
        SealSettings(features=("helpful",), target_features=("harmless",))
    with pytest.raises(ValueError, match="robustness_population"):
        SealSettings(robustness_population="some")


def test_assemble_pairs_joins_scores_and_labels():
    pre = pl.DataFrame({"pair_id": ["a", "b"], "r_chosen": [1.0, 2], "r_rejected": [0.0, 1]})
    post = pl.DataFrame({"pair_id": ["b", "a"], "r_chosen": [5.0, 6], "r_rejected": [3.0, 4]})
    lab = pl.DataFrame({"pair_id": ["a", "b"], "chosen_helpful": [1, 0],
                        "rejected_helpful": [0, 0]})
    out = seal.assemble_pairs(pre, post, lab)
    assert out.columns == ["pair_id", "r_pre_chosen", "r_pre_rejected", "r_post_chosen",
                           "r_post_rejected", "chosen_helpful", "rejected_helpful"]
    assert out.row(0) == ("a", 1.0, 0.0, 6.0, 4.0, 1, 0)


# --------------------------------------------------------------------------- collinearity


def test_variance_inflation_matches_statsmodels():
    from statsmodels.stats.outliers_influence import variance_inflation_factor

    rng = np.random.default_rng(9)
    n = 2000
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    c = np.where(rng.random(n) < 0.9, a, rng.integers(0, 2, n))
    X = np.column_stack([a, b, c, rng.integers(-1, 2, n)]).astype(float)
    ref = [variance_inflation_factor(np.column_stack([np.ones(n), X]), j + 1) for j in range(4)]
    np.testing.assert_allclose(seal.variance_inflation(X), ref, rtol=1e-8)
    v = seal.variance_inflation(np.column_stack([a, b, a + b, np.ones(n)]).astype(float))
    assert np.isinf(v[:3]).all() and np.isnan(v[3])


def _collinear_data(seed, n_pairs=400):
    """helpful and harmless are each coherent with 4% of labels flipped, so coherent has the
    largest VIF (about 14; helpful and harmless about 6, 3.5 once coherent is gone);
    anthropomorphic and sentiment are independent. Planted weights: coherent 0, so
    dropping it leaves the others' imprints unbiased."""
    rng = np.random.default_rng(seed)
    feats = ("helpful", "harmless", "coherent", "anthropomorphic", "sentiment")
    w = {"helpful": 1.2, "harmless": 0.8, "coherent": 0.0, "anthropomorphic": -0.5,
         "sentiment": 0.3}
    labels = {}
    for s in SIDES:
        coh = rng.integers(0, 2, n_pairs)
        h = np.where(rng.random(n_pairs) < 0.96, coh, 1 - coh)
        m = np.where(rng.random(n_pairs) < 0.96, coh, 1 - coh)
        labels |= {f"{s}_helpful": h, f"{s}_harmless": m, f"{s}_coherent": coh,
                   f"{s}_anthropomorphic": rng.integers(0, 2, n_pairs),
                   f"{s}_sentiment": rng.integers(-1, 2, n_pairs)}
    u = rng.normal(0, 1, n_pairs)
    r = {}
    for s in SIDES:
        x = sum(w[f] * labels[f"{s}_{f}"] for f in feats)
        r[f"r_post_{s}"] = x + u + rng.normal(0, 0.5, n_pairs)
        r[f"r_pre_{s}"] = 0.5 * x + u + rng.normal(0, 0.5, n_pairs)
    return make_pairs(n_pairs, rng, feats, r=r, labels=labels), feats, w


def test_vif_check_drops_the_collinear_feature_and_names_it():
    pairs, feats, w = _collinear_data(0)
    st = SealSettings(features=feats, target_features=("helpful", "harmless", "coherent"),
                      spoiler_features=("sentiment", "anthropomorphic"), vif_threshold=5.0,
                      exclude_from_regression=("anthropomorphic",), n_boot=100)
    vif = seal.collinearity_check(pairs, st)
    row = {r["feature"]: r for r in vif.iter_rows(named=True)}
    assert row["coherent"]["dropped"] and row["coherent"]["reason"] == "vif_above_threshold"
    assert row["coherent"]["vif_initial"] > 5 and row["coherent"]["drop_step"] == 1
    assert row["anthropomorphic"]["reason"] == "excluded_by_config"
    for f in ("helpful", "harmless", "sentiment"):
        assert not row[f]["dropped"] and row[f]["vif_final"] < 5, f
    assert vif.filter(pl.col("dropped"))["feature"].sort().to_list() == [
        "anthropomorphic", "coherent"]
    # Without a threshold nothing is dropped but the VIFs are still reported.
    keep_all = seal.collinearity_check(pairs, SealSettings(
        features=feats, target_features=(), spoiler_features=(), vif_threshold=None))
    assert not keep_all["dropped"].any() and keep_all["vif_initial"].max() > 5
    imp = seal.feature_imprint(pairs, st, vif)
    post = {r["term"]: r for r in imp.filter(pl.col("outcome") == "post").iter_rows(named=True)}
    assert post["coherent"]["dropped"] and post["coherent"]["coef"] is None
    assert "anthropomorphic" not in post  # excluded by config: no row at all
    h = seal.headline(pairs, st, imprint=imp, vif=vif)
    assert math.isnan(h["imprint_post_coherent"].value)
    assert "collinearity check" in h["imprint_post_coherent"].method
    b = h["imprint_post_helpful_bonferroni"]
    n95 = h["imprint_post_helpful"]
    assert b.value == n95.value and b.lo < n95.lo and b.hi > n95.hi


def test_imprint_after_vif_drop_and_target_spoiler_contrast_cover_planted_values():
    hits = dict.fromkeys(["helpful", "harmless", "sentiment", "contrast"], 0)
    n_seeds = 80
    for seed in range(n_seeds):
        pairs, feats, w = _collinear_data(seed, n_pairs=300)
        st = SealSettings(features=feats, target_features=("helpful", "harmless", "coherent"),
                          spoiler_features=("sentiment", "anthropomorphic"), vif_threshold=7.0)
        imp = seal.feature_imprint(pairs, st)
        post = {r["term"]: r for r in imp.filter(pl.col("outcome") == "post")
                .iter_rows(named=True)}
        # Over these seeds coherent's VIF is >= 8.9 and, without it, the others' <= 5.4.
        assert post["coherent"]["dropped"] and not post["helpful"]["dropped"]
        for f in ("helpful", "harmless", "sentiment"):
            hits[f] += post[f]["lo"] <= w[f] <= post[f]["hi"]
        # Targets still estimated: helpful, harmless; spoilers: sentiment, anthropomorphic.
        c = (w["helpful"] + w["harmless"]) / 2 - (w["sentiment"] + w["anthropomorphic"]) / 2
        row = post[seal.CONTRAST_TERM]
        assert row["role"] == "contrast"
        hits["contrast"] += row["lo"] <= c <= row["hi"]
    for k, h in hits.items():
        assert 0.88 <= h / n_seeds <= 1.0, (k, h)


def test_schema_defaults_of_the_analysis_keys_build_valid_settings():
    from pathlib import Path

    from rlhf_audit.config import load_schema

    root = Path(__file__).resolve().parents[1]
    props = load_schema(root / "workflow/schemas/config.schema.yaml")["properties"]["reward"][
        "properties"]
    keys = ("features", "target_features", "spoiler_features", "exclude_from_regression",
            "gamma_features", "vif_threshold", "robustness_rm", "robustness_population",
            "flip_encoding", "n_boot", "seed")
    for k in keys:
        assert props[k]["description"] and "default" in props[k], k
    st = SealSettings(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in ((k, props[k]["default"]) for k in keys)})
    assert st.robustness_population == "all" and st.flip_encoding == "signed"
    assert props["score_dtype"]["default"] == "float32" and props["max_length"]["default"] is None
    assert seal.ScoringSettings().dtype == "float32" and seal.ScoringSettings().max_length is None


def test_each_reward_rule_imports_only_what_it_runs():
    from pathlib import Path

    from rlhf_audit.codehash import local_closure

    root = Path(__file__).resolve().parents[1]

    def closure(script):
        return {p.relative_to(root / "src/rlhf_audit").as_posix()
                for p in local_closure(root / "scripts" / script) if "src" in p.parts}

    score = closure("score_rewards.py")
    assert "reward/score.py" in score
    # An analysis, labelling or figure edit must not rerun GPU scoring.
    assert not score & {"reward/analysis.py", "reward/figures.py", "labelling.py", "plotting.py",
                        "seal.py", "rewrite.py"}, score
    assert not closure("plot_rewards.py") & {"reward/score.py", "reward/analysis.py"}
    assert not closure("rewrite_pairs.py") & {"reward/score.py", "reward/analysis.py", "seal.py"}
    assert not closure("label_texts.py") & {"reward/score.py", "reward/analysis.py", "seal.py",
                                            "rewrite.py"}


# --------------------------------------------------------------------------- planted reward models


class _BagRM(torch.nn.Module):
    """A reward model whose logit is the sum of per-token weights: the imprint of a feature
    word is its weight, exactly, and identical texts tie exactly."""

    def __init__(self, weights):
        super().__init__()
        from types import SimpleNamespace

        self.w = torch.nn.Parameter(torch.as_tensor(weights, dtype=torch.float32))
        self.config = SimpleNamespace(pad_token_id=0)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=(self.w[input_ids] * attention_mask).sum(1, keepdim=True))


def _planted_run(seed):
    tok, v = _word_tokenizer("deberta")
    vocab = tok.get_vocab()
    feature_words = {"helpful": "thanks", "harmless": "sun", "eloquent": "music"}
    filler = [w for w in WORDS[3:] if w not in feature_words.values()]
    rng = np.random.default_rng(seed)
    planted = {"post": {"helpful": 1.5, "harmless": 1.0, "eloquent": -0.5},
               "pre": {"helpful": 0.5, "harmless": 0.2, "eloquent": 0.0}}
    models = {}
    for rm, w in planted.items():
        weights = rng.normal(0, 0.3, v)
        weights[:4] = 0  # specials
        for f, word in feature_words.items():
            weights[vocab[word]] = w[f]
        models[rm] = _BagRM(weights)
    n, n_same = 400, 23
    rows, labels = [], []
    for i in range(n):
        prompt = "\n\nhuman : " + " ".join(rng.choice(filler, 4)) + "\n\n"
        sides = {}
        for side in SIDES:
            has = {f: int(rng.random() < 0.5) for f in feature_words}
            words = list(rng.choice(filler, int(rng.integers(2, 8))))
            words += [feature_words[f] for f, h in has.items() if h]
            rng.shuffle(words)
            sides[side] = (prompt + "assistant : " + " ".join(words), has)
        if i < n_same:  # the same reply twice: an exact tie for both reward models
            sides["rejected"] = sides["chosen"]
        rows.append({"pair_id": f"q{i:04d}", "chosen": sides["chosen"][0],
                     "rejected": sides["rejected"][0]})
        for side in SIDES:
            labels.append({"pair_id": f"q{i:04d}", "side": side, **sides[side][1]})
    pairs = pl.DataFrame(rows)
    st = seal.ScoringSettings(marker="assistant :", batch_size=64)
    scores = {rm: seal.score_pairs(m, tok, pairs, st) for rm, m in models.items()}
    from rlhf_audit.labelling import labels_wide, validate_labels

    feats = tuple(feature_words)
    lab = labels_wide(validate_labels(pl.DataFrame(labels), feats, ()), feats)
    table = seal.assemble_pairs(scores["pre"], scores["post"], lab)
    settings = SealSettings(features=feats, target_features=("helpful", "harmless"),
                            spoiler_features=("eloquent",), n_boot=200)
    h = seal.headline(table, settings, truncation={rm: seal.truncation_summary(s)
                                                   for rm, s in scores.items()})
    return h, planted, feats, n, n_same


def test_planted_reward_models_imprints_and_ties_are_recovered_end_to_end():
    """Text -> tokenizer -> two planted reward models -> pairs table -> headline, over seeds."""
    hits, total, est = 0, 0, {}
    n_seeds = 12
    for seed in range(n_seeds):
        h, planted, feats, n, n_same = _planted_run(seed)
        assert h["n_ties_pre"].value == n_same and h["n_ties_post"].value == n_same
        assert h["agreement_post"].n == n - n_same and h["n_truncated_post"].value == 0
        truth = {f"imprint_post_{f}": planted["post"][f] for f in feats} | {
            f"imprint_shift_{f}": planted["post"][f] - planted["pre"][f] for f in feats} | {
            "imprint_post_target_minus_spoiler": (1.5 + 1.0) / 2 + 0.5}
        for k, w in truth.items():
            e = h[k]
            hits += e.lo <= w <= e.hi
            total += 1
            est.setdefault(k, []).append(e.value)
    assert hits / total >= 0.88, hits / total
    for k, vals in est.items():
        assert abs(np.mean(vals) - truth[k]) < 4 * np.std(vals) / math.sqrt(n_seeds) + 1e-9, k
