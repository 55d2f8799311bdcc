"""Spliced-in loss of an SAE (rlhf_audit.sae.scan.spliced_loss, run_scan) on a tiny Llama."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from sae_planted import hand_sae
from tiny import save_tiny_llama

from rlhf_audit import sae as S
from rlhf_audit.extract import ExtractSettings, extract_shard, tokenize_prompts
from rlhf_audit.lm.loader import load_causal_lm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TEXTS = ["we must cut the tax", "the border wall is policy", "guns rights vote yes",
         "I think health care should be free", "the market is free"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    path = save_tiny_llama(tmp_path_factory.mktemp("m") / "llama", n_layers=3, hidden=32)
    model, tok = load_causal_lm({"path": str(path)}, device="cpu", dtype="float32")
    return path, model, tok


def prompts():
    return pl.DataFrame({"id": [f"p{i}" for i in range(len(TEXTS))], "text": TEXTS})


def content_of(tok, chat: bool) -> pl.DataFrame:
    """The statement's own tokens: without BOS, role markers and generation prompt."""
    toks = tokenize_prompts(tok, TEXTS, ExtractSettings(chat_template=chat, positions=("token",)))
    rows = []
    for i, t in enumerate(toks):
        lo, hi = (2, len(t) - 2) if chat else (1, len(t))  # <bos><|user|> ... <eos><|assistant|>
        rows += [{"prompt_id": f"p{i}", "token_index": j, "token_id": int(t[j])}
                 for j in range(lo, hi)]
    return pl.DataFrame(rows)


def exact_sae(d: int, layer: int = 1):
    """relu(x) - relu(-x) = x: a 2d-feature SAE that reconstructs its input exactly."""
    W = np.concatenate([np.eye(d), -np.eye(d)], axis=1).astype(np.float32)
    return hand_sae(W, threshold=0.0, hook=f"blocks.{layer}.hook_resid_post")


def test_exact_sae_costs_nothing_and_a_lossy_one_costs_something(tiny):
    _, model, tok = tiny
    content = content_of(tok, chat=True)
    kw = {"chat_template": True, "batch_size": 2}
    exact = S.spliced_loss(model, tok, exact_sae(32), prompts(), content, 1, **kw)
    assert exact.columns == list(S.SPLICE_SCHEMA)
    n_content = content.group_by("prompt_id").len().sort("prompt_id")["len"].to_list()
    assert exact["n_kl_tokens"].to_list() == n_content
    assert exact["n_ce_tokens"].to_list() == [n - 1 for n in n_content]  # next token content
    assert float(exact["kl_sum"].abs().max()) < 1e-6
    np.testing.assert_allclose(exact["ce_spliced_sum"], exact["ce_clean_sum"], atol=1e-4)
    # positive half only: negative coordinates are lost
    lossy = hand_sae(np.eye(32, dtype=np.float32), threshold=0.0,
                     hook="blocks.1.hook_resid_post")
    out = S.spliced_loss(model, tok, lossy, prompts(), content, 1, **kw)
    np.testing.assert_allclose(out["ce_clean_sum"], exact["ce_clean_sum"], rtol=1e-5)
    assert (out["kl_sum"] > 1e-4).all()
    assert float((out["ce_spliced_sum"] - out["ce_clean_sum"]).abs().sum()) > 1e-3


def test_template_tokens_are_not_spliced(tiny):
    # Splicing a lossy SAE at the content tokens only changes nothing before the first
    # content token; a manual splice at exactly those positions gives the same KL.
    _, model, tok = tiny
    content = content_of(tok, chat=True)
    lossy = hand_sae(np.eye(32, dtype=np.float32), threshold=0.0,
                     hook="blocks.1.hook_resid_post")
    got = S.spliced_loss(model, tok, lossy, prompts().head(1),
                         content.filter(pl.col("prompt_id") == "p0"), 1, chat_template=True)
    toks = tokenize_prompts(tok, TEXTS[:1], ExtractSettings(chat_template=True,
                                                            positions=("token",)))[0]
    pos = torch.as_tensor(
        content.filter(pl.col("prompt_id") == "p0")["token_index"].to_numpy().copy())
    ids = torch.as_tensor(toks.astype(np.int64))[None]

    def hook(module, args, output):
        h = (output[0] if isinstance(output, tuple) else output).clone()
        with torch.no_grad():
            h[0, pos] = lossy.decode(lossy.encode(h[0, pos]))
        return (h, *output[1:]) if isinstance(output, tuple) else h

    with torch.no_grad():
        clean = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        handle = model.model.layers[1].register_forward_hook(hook)
        try:
            spl = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        finally:
            handle.remove()
    kl = (clean.exp() * (clean - spl)).sum(-1)
    assert float(kl[: pos.min()].abs().max()) < 1e-6  # template prefix untouched
    assert got["kl_sum"][0] == pytest.approx(float(kl[pos].sum()), rel=1e-4)


def test_mismatched_tokens_are_refused(tiny):
    _, model, tok = tiny
    content = content_of(tok, chat=True)
    with pytest.raises(ValueError, match="p0.*another tokenizer or chat-template"):
        S.spliced_loss(model, tok, exact_sae(32), prompts(), content, 1, chat_template=False)
    with pytest.raises(ValueError, match="not in the prompts table"):
        S.spliced_loss(model, tok, exact_sae(32), prompts().head(2), content, 1,
                       chat_template=True)


def test_scan_job_reads_shards_and_splices_on_the_resolved_device(tiny, tmp_path):
    path, model, tok = tiny
    df = prompts().with_columns(
        pl.Series("label", ["left", "right", "neutral", "left", "right"]),
        pl.lit("taxes").alias("issue"))
    settings = ExtractSettings(layers=[1], positions=("token",), token_layers=[1],
                               dtype="float32", chat_template=True, max_length=64)
    shard = tmp_path / "shard-00000.parquet"
    extract_shard(model, tok, df, settings, shard)
    df.write_parquet(tmp_path / "prompts.parquet")
    exact_sae(32).save_model(tmp_path / "sae")
    scan = S.run_scan({"path": str(tmp_path / "sae")}, 1, [str(shard)], device="auto",
                      model_spec={"path": str(path)}, dtype="float32",
                      prompts_path=str(tmp_path / "prompts.parquet"), chat_template=True,
                      max_length=64)
    assert scan.splice is not None and scan.splice.height == len(TEXTS)
    assert float(scan.splice["kl_sum"].abs().max()) < 1e-5
    assert scan.prompts["issue"].to_list() == ["taxes"] * len(TEXTS)
    assert scan.reconstruction()["fve"][0] == pytest.approx(1.0, abs=1e-6)
    S.write_scan(scan, tmp_path / "scan")
    back = S.read_scan(tmp_path / "scan")
    assert back.splice.equals(scan.splice)
