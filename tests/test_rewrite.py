"""Rewrites and their semantic similarity (SEAL robustness), on a tiny encoder."""

import numpy as np
import polars as pl
import pytest
from tiny import save_tiny_llama

from rlhf_audit.rewrite import embed_texts, lm_rewrite_pairs, rewrite_similarity


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from rlhf_audit.models import load_causal_lm

    d = save_tiny_llama(tmp_path_factory.mktemp("enc") / "m")
    return load_causal_lm({"path": str(d)}, device="cpu")


PAIRS = pl.DataFrame({
    "pair_id": ["p1", "p2"],
    "chosen": ["\n\nHuman: tax ?\n\nAssistant: I think we should cut taxes .",
               "\n\nHuman: guns ?\n\nAssistant: rights matter ."],
    "rejected": ["\n\nHuman: tax ?\n\nAssistant: no .",
                 "\n\nHuman: guns ?\n\nAssistant: vote yes !"],
})


def test_embeddings_are_unit_norm_and_order_preserved(encoder):
    model, tok = encoder
    texts = ["the tax", "a much longer text about the border wall and climate policy", "no"]
    e = embed_texts(model, tok, texts, batch_size=2)
    assert e.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, rtol=1e-5)
    one_by_one = np.stack([embed_texts(model, tok, [t])[0] for t in texts])
    np.testing.assert_allclose(e, one_by_one, atol=1e-5)  # padding does not leak


def test_identical_rewrites_have_similarity_one(encoder):
    model, tok = encoder
    sim = rewrite_similarity(model, tok, PAIRS, PAIRS)
    np.testing.assert_allclose(sim.select("sim_chosen", "sim_rejected").to_numpy(), 1, rtol=1e-5)


def test_lm_rewriter_keeps_prefix_and_counts_failures():
    def fake(prompts):
        # reword the first pair, fail on one side of the second
        return ["Cutting taxes is what I favour .", "No .", "Rights matter a lot .", None]

    rewritten, failures = lm_rewrite_pairs(fake, PAIRS)
    assert rewritten["pair_id"].to_list() == ["p1"]
    assert rewritten["chosen"][0] == "\n\nHuman: tax ?\n\nAssistant: Cutting taxes is what I favour ."
    assert failures.to_dicts() == [{"pair_id": "p2", "side": "rejected", "reason": "no reply"}]
