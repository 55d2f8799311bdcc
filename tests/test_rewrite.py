"""Rewrites and their semantic similarity (SEAL robustness): the whole-transcript LM rewriter
with rejection and retry, the shared chat-completions client on a local stub server, the
embedder's own pooling, on a tiny encoder."""

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
import torch
from tiny import save_tiny_llama

from rlhf_audit.rewrite import (
    REWRITE_TEMPERATURE,
    check_rewrite,
    embed_texts,
    embedder_pooling,
    lm_rewrite_pairs,
    rewrite_similarity,
    rewrite_summary,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from rlhf_audit.lm.loader import load_causal_lm

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
    for pooling in ("mean", "cls", "max", "lasttoken"):
        e = embed_texts(model, tok, texts, batch_size=2, pooling=pooling)
        assert e.shape == (3, model.config.hidden_size)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, rtol=1e-5)
        one_by_one = np.stack([embed_texts(model, tok, [t], pooling=pooling)[0] for t in texts])
        np.testing.assert_allclose(e, one_by_one, atol=1e-5)  # padding does not leak


def test_pooling_modes_read_the_hidden_states_they_name(encoder):
    model, tok = encoder
    text = "a much longer text about the border wall"
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        h = model(**enc, output_hidden_states=True).hidden_states[-1][0].float()
    want = {"cls": h[0], "mean": h.mean(0), "max": h.max(0).values, "lasttoken": h[-1]}
    for mode, v in want.items():
        got = embed_texts(model, tok, [text], pooling=mode)[0]
        np.testing.assert_allclose(got, (v / v.norm()).numpy(), atol=1e-5)
    assert not np.allclose(embed_texts(model, tok, [text], pooling="cls"),
                           embed_texts(model, tok, [text], pooling="mean"), atol=1e-3)


def test_embedder_pooling_follows_the_sentence_transformers_config(tmp_path):
    d = tmp_path / "st"
    (d / "1_Pooling").mkdir(parents=True)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling/config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192}))
    mode, max_len, source = embedder_pooling({"path": str(d)})
    assert (mode, max_len) == ("cls", 8192) and "1_Pooling" in source
    (d / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert embedder_pooling({"path": str(d)})[0] == "mean"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert embedder_pooling({"path": str(plain)})[:2] == ("mean", None)
    assert embedder_pooling({"path": str(tmp_path / "bge-m3-local")})[0] == "cls"
    (d / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode": "weightedmean"}))
    with pytest.raises(ValueError, match="weightedmean.*not supported"):
        embedder_pooling({"path": str(d)})


def test_similarity_is_computed_on_whole_transcripts(encoder):
    model, tok = encoder
    sim = rewrite_similarity(model, tok, PAIRS, PAIRS)
    np.testing.assert_allclose(sim.select("sim_chosen", "sim_rejected").to_numpy(), 1, rtol=1e-5)
    assert not sim["cut_chosen"].any()
    # Rewording only the Human turn changes the similarity: the whole transcript is read.
    other = PAIRS.with_columns(pl.col("chosen").str.replace("tax \\?", "money matters ?"))
    s2 = rewrite_similarity(model, tok, PAIRS, other)
    assert s2["sim_chosen"][0] < 0.9999 and s2["sim_chosen"][1] == pytest.approx(1, abs=1e-5)


def test_lm_rewriter_rewrites_whole_transcripts_rejects_unchanged_and_counts_failures():
    seen = []
    script = {  # per text: one reply per ask
        "cut taxes": ["Human: tax ?\n\nAssistant: I think we should cut taxes .",  # unchanged
                      "Human: taxes ?\n\nAssistant: Cutting taxes is what I favour ."],
        "Assistant: no .": ["Human: taxes ?\n\nAssistant: Nope ."],
        "rights matter": ["Sure! Here is the rewrite: rights are important ."],  # roles lost
        "vote yes": ["Human: firearms ?\n\nAssistant: say yes !"],
    }

    def fake(prompts):
        seen.append(prompts)
        out = []
        for p in prompts:
            key = next(k for k in script if k in p)
            replies = script[key]
            out.append(replies.pop(0) if len(replies) > 1 else replies[0])
        return out

    rewritten, rej = lm_rewrite_pairs(fake, PAIRS, max_attempts=2)
    # the whole transcript is in the prompt, not only the last turn
    assert "Human: tax ?" in seen[0][0] and "Assistant: I think we should cut taxes" in seen[0][0]
    assert [len(c) for c in seen] == [4, 2]  # only rejected texts are asked again
    assert rewritten["pair_id"].to_list() == ["p1"]
    assert rewritten["chosen"][0] == ("\n\nHuman: taxes ?\n\nAssistant: Cutting taxes is what I "
                                      "favour .")
    assert rej.select("pair_id", "side", "attempt", "reason", "final").rows() == [
        ("p1", "chosen", 1, "unchanged", False), ("p2", "chosen", 1, "roles_changed", False),
        ("p2", "chosen", 2, "roles_changed", True)]
    summ = rewrite_summary(rej, 2, rewritten.height)
    assert summ["n_rejected_unchanged"] == 1 and summ["n_failed_texts"] == 1
    assert summ["n_rewritten"] == 1


def test_check_rewrite_reasons():
    orig = "\n\nHuman: a ?\n\nAssistant: b .\n\nHuman: c ?\n\nAssistant: d ."
    assert check_rewrite(orig, None) == "no_reply"
    assert check_rewrite(orig, "  Human: a ?\n Assistant: b . Human: c ? Assistant: d .") == \
        "unchanged"
    assert check_rewrite(orig, "Human: x ?\n\nAssistant: y .") == "turns_changed"
    assert check_rewrite(orig, "User: x ?\n\nAssistant: y .") == "roles_changed"
    assert check_rewrite(orig, "Human: x ?\n\nAssistant: y .\n\nHuman: z ?\n\nAssistant: w .") \
        is None


class _Stub:
    """Chat-completions stand-in on 127.0.0.1: first the unchanged text, then a rewrite."""

    def __init__(self, replies, max_requests=20):
        self.replies, self.bodies = list(replies), []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                if len(outer.bodies) > max_requests:
                    code, data = 418, b"{}"
                else:
                    text = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                    code, data = 200, json.dumps({"choices": [{"message": {
                        "content": text}}]}).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_rewriter_goes_through_the_labelling_client_at_temperature_0_1(monkeypatch):
    from rlhf_audit.labelling import complete_from_config

    monkeypatch.setenv("TEST_REWRITE_KEY", "k")
    one = PAIRS.head(1).select("pair_id", "chosen").with_columns(
        pl.col("chosen").alias("rejected"))
    srv = _Stub(["Human: tax ?\n\nAssistant: I think we should cut taxes .",
                 "Human: taxes ?\n\nAssistant: Lower taxes, I say ."])
    try:
        complete = complete_from_config(
            {"kind": "openai", "base_url": srv.url, "model": "m", "api_key_env":
             "TEST_REWRITE_KEY", "max_retries": 0, "max_new_tokens": 512},
            json_mode=False, temperature=REWRITE_TEMPERATURE)
        complete.settings = dataclasses.replace(complete.settings, concurrency=1)  # order
        rewritten, rej = lm_rewrite_pairs(complete, one, max_attempts=3)
    finally:
        srv.close()
    assert rewritten.height == 1 and "Lower taxes" in rewritten["chosen"][0]
    assert all(b["temperature"] == 0.1 and "response_format" not in b for b in srv.bodies)
    # chosen got the unchanged reply first and was asked again; rejected was rewritten at once
    assert rej.select("side", "reason").rows() == [("chosen", "unchanged")]
    assert len(srv.bodies) == 3
