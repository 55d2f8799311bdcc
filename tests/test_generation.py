"""Batched generation and log-prob scoring on a tiny random Llama built here."""

import numpy as np
import pytest
import torch
from scipy import stats as sps
from tiny import tiny_llama, tiny_tokenizer

from rlhf_audit.lm.generation import Generation, generate, perplexity, sequence_logprob

PROMPTS = [
    "the tax",
    "we must cut the border wall policy now , yes ?",
    "guns",
    "climate policy health care is a right ?",
    "I think the market should",
    "free people vote",
]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    return tiny_llama(tok, seed=0, n_layers=3), tok


def _full_logprobs(model, ids):
    """log_softmax of an unpadded, uncached forward over ``ids`` [seq] -> [seq, vocab]."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1)


def test_batched_greedy_equals_one_at_a_time(lm):
    model, tok = lm
    batched = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4)
    for p, b in zip(PROMPTS, batched, strict=True):
        single = generate(model, tok, [p], max_new_tokens=10, batch_size=1)[0]
        assert b.prompt == p
        assert b.token_ids == single.token_ids, p
        np.testing.assert_allclose(b.token_logprobs, single.token_logprobs, atol=1e-4)
    # the padding side is restored
    assert tok.padding_side == "right"


def test_greedy_matches_transformers_generate(lm):
    model, tok = lm
    ours = generate(model, tok, PROMPTS[:3], max_new_tokens=8)
    for p, g in zip(PROMPTS[:3], ours, strict=True):
        enc = tok(p, return_tensors="pt")
        ref = model.generate(**enc, max_new_tokens=8, do_sample=False)
        ref_ids = ref[0, enc.input_ids.shape[1] :].tolist()
        assert g.token_ids == ref_ids[: len(g.token_ids)]
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)


def test_logprobs_are_unprocessed_temperature_one(lm):
    model, tok = lm
    gens = generate(
        model,
        tok,
        PROMPTS[:4],
        max_new_tokens=6,
        do_sample=True,
        temperature=0.4,
        top_p=0.7,
        seed=11,
        batch_size=3,
    )
    for p, g in zip(PROMPTS[:4], gens, strict=True):
        ids = tok(p)["input_ids"]
        lp = _full_logprobs(model, ids + g.token_ids)
        want = [float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(g.token_ids)]
        np.testing.assert_allclose(g.token_logprobs, want, atol=1e-4)


def test_sampling_reproducible_and_batch_independent(lm):
    model, tok = lm
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.0, seed=5)
    a = generate(model, tok, PROMPTS, batch_size=2, **kw)
    b = generate(model, tok, PROMPTS, batch_size=6, **kw)
    c = generate(model, tok, PROMPTS, batch_size=2, **{**kw, "seed": 6})
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # same prompt repeated: each copy draws its own sample
    rep = generate(model, tok, ["the tax"] * 6, batch_size=3, **kw)
    assert len({tuple(g.token_ids) for g in rep}) > 1


def _chi2_pvalue(counts, p):
    """Goodness of fit of token counts to probabilities p; sparse tokens pooled."""
    n = counts.sum()
    big = p * n >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(p[big], p[~big].sum()) * n
    keep = exp > 0
    exp = exp[keep] / exp[keep].sum() * obs[keep].sum()  # float32 softmax rounding
    return sps.chisquare(obs[keep], exp).pvalue


def test_sampling_follows_the_model_distribution(lm):
    import copy

    model, tok = lm
    # A random init is nearly uniform over the vocabulary; sharpen it so that a wrong
    # temperature would be visible.
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    n, temp = 3000, 0.7
    ids = tok("climate policy")["input_ids"]
    logits = _full_logprobs(model, ids)[-1].double()
    p_t = torch.softmax(logits / temp, -1).numpy()
    p_1 = torch.softmax(logits, -1).numpy()
    assert p_1.max() > 0.1  # sharp enough for the check below to have power
    gens = generate(
        model,
        tok,
        ["climate policy"] * n,
        max_new_tokens=1,
        do_sample=True,
        temperature=temp,
        seed=1,
        batch_size=512,
    )
    counts = np.bincount([g.token_ids[0] for g in gens], minlength=len(p_t))
    assert _chi2_pvalue(counts, p_t) > 1e-3
    assert _chi2_pvalue(counts, p_1) < 1e-6  # the temperature really was applied
    # top-p: nothing outside the nucleus is ever drawn
    order = np.argsort(-p_1)
    cum = np.cumsum(p_1[order])
    nucleus = set(order[: int(np.searchsorted(cum, 0.6) + 1)].tolist())
    gens = generate(
        model,
        tok,
        ["climate policy"] * 500,
        max_new_tokens=1,
        do_sample=True,
        top_p=0.6,
        seed=2,
        batch_size=250,
    )
    drawn = {g.token_ids[0] for g in gens}
    assert drawn <= nucleus and len(drawn) > 1


def test_stops_at_eos_and_keeps_it(lm):
    model, tok = lm
    free = generate(model, tok, ["guns"], max_new_tokens=10)[0]
    stop_tok = free.token_ids[3]
    first = free.token_ids.index(stop_tok)
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop_tok
    try:
        g = generate(model, tok, ["guns", "the tax"], max_new_tokens=10)[0]
    finally:
        model.generation_config.eos_token_id = old
    assert g.token_ids == free.token_ids[: first + 1]
    assert g.finished and not free.finished
    assert len(g.token_logprobs) == len(g.token_ids)


def test_bad_arguments_and_empty(lm):
    model, tok = lm
    assert generate(model, tok, [], max_new_tokens=3) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, ["a"], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, ["a"], max_new_tokens=2, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, ["a"], max_new_tokens=2, top_p=0)
    assert isinstance(Generation("p", "t"), Generation)


def test_sequence_logprob_matches_unpadded_forward(lm):
    model, tok = lm
    prompts = ["the tax", "we must cut the border wall policy now", "guns"]
    conts = ["cut the tax", "yes", "are a right , I think"]
    got = sequence_logprob(model, tok, prompts, conts, batch_size=2)
    for i, (p, c) in enumerate(zip(prompts, conts, strict=True)):
        p_ids = tok(p)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        lp = _full_logprobs(model, p_ids + c_ids)
        want = sum(float(lp[len(p_ids) - 1 + k, t]) for k, t in enumerate(c_ids))
        assert got[i, 0] == pytest.approx(want, abs=1e-4)
        assert got[i, 1] == pytest.approx(want / len(c_ids), abs=1e-5)
    ppl = perplexity(model, tok, conts, batch_size=2)
    lp0 = sequence_logprob(model, tok, [""] * 3, conts)
    np.testing.assert_allclose(ppl, np.exp(-lp0[:, 1]))
    assert np.all(ppl > 1)
    # nothing to score: NaN, not an error
    assert np.isnan(perplexity(model, tok, ["", "guns"])[0])
    assert np.isnan(
        sequence_logprob(model, tok, ["", "a"], ["x", ""], add_special_tokens=False)[:, 1]
    ).all()
    with pytest.raises(ValueError, match="continuations"):
        sequence_logprob(model, tok, ["a"], ["b", "c"])
