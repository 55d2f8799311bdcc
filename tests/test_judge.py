"""Judge reply parsing, the HF judge and the OpenAI-compatible endpoint's failure handling
(against a local http.server on 127.0.0.1)."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from rlhf_audit.judge import (
    RESULT_SCHEMA,
    HFJudge,
    JudgeSettings,
    OpenAIJudge,
    failure_rate,
    judge_prompt,
    make_judge,
    parse_rating,
    rating_to_score,
)
from rlhf_audit.lm import generation
from rlhf_audit.lm.generation import Generation


@pytest.mark.parametrize(
    "reply,want",
    [
        ("Rating: 6", 6.0),
        ("rating:2", 2.0),
        ("**Rating:** 1", 1.0),
        ("My rating is 7.", 7.0),
        ("Rating: 4.5", 4.5),
        ("5/7", 5.0),
        ("I'd give it 3 out of 7", 3.0),
        ("3", 3.0),
        ("  2\n", 2.0),
        ("It leans left. 2", 2.0),
        ("Rating: 6 (on the 1-7 scale)", 6.0),
    ],
)
def test_parse_valid_replies(reply, want):
    assert parse_rating(reply) == (want, None)


@pytest.mark.parametrize(
    "reply,reason",
    [
        ("", "empty"),
        (None, "empty"),
        ("I cannot rate political content.", "no rating"),
        ("seven", "no rating"),
        ("Rating: 9", "outside"),
        ("0", "outside"),
        ("somewhere between 2 and 5", "ambiguous"),
        ("Rating: 2. Actually, Rating: 6", "conflicting"),
        ("v2.0 of the model says nothing", "no rating"),
    ],
)
def test_parse_garbage_replies_fail_with_reason(reply, reason):
    val, err = parse_rating(reply)
    assert val is None and reason in err


def test_scale_mapping_and_prompt():
    assert [rating_to_score(r) for r in (1, 4, 7, 5.5)] == [-1.0, 0.0, 1.0, 0.5]
    p = judge_prompt("Cut taxes now.", "What about taxes?")
    assert "Cut taxes now." in p and "What about taxes?" in p and "Rating: N" in p
    assert "question the assistant" not in judge_prompt("x").lower()


# --------------------------------------------------------------------------- endpoint


class _Handler(BaseHTTPRequestHandler):
    """Replies according to a marker in the prompt; records every request."""

    def log_message(self, *a):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        srv = self.server
        marker = prompt.split("<<")[1].split(">>")[0]
        with srv.lock:
            srv.requests.append((self.path, dict(self.headers), body))
            srv.hits[marker] = hits = srv.hits.get(marker, 0) + 1
        if "<<SLOW>>" in prompt:
            time.sleep(1.0)
            return self._reply("Rating: 4")
        if "<<BADJSON>>" in prompt:
            return self._raw(200, b"this is not json")
        if "<<FLAKY>>" in prompt and hits == 1:
            return self._raw(503, b'{"error": "busy"}')
        if "<<DENIED>>" in prompt:
            return self._raw(401, b'{"error": "bad key"}')
        if "<<GARBAGE>>" in prompt:
            return self._reply("As an AI I cannot rate this.")
        if "<<RIGHT>>" in prompt:
            return self._reply("Rating: 7")
        return self._reply("Rating: 2")

    def _reply(self, text):
        self._raw(
            200,
            json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode(),
        )

    def _raw(self, code, payload):
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests, srv.hits, srv.lock = [], {}, threading.Lock()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _settings(srv, **kw):
    base = dict(
        kind="openai",
        base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1",
        api_model="judge-test",
        api_key_env="RLHF_AUDIT_TEST_KEY",
        timeout_s=0.4,
        max_retries=1,
        retry_backoff_s=0.01,
        concurrency=3,
    )
    return JudgeSettings(**{**base, **kw})


def test_endpoint_valid_garbage_timeout_and_errors(server, monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("RLHF_AUDIT_TEST_KEY", secret)
    judge = make_judge(_settings(server))
    assert isinstance(judge, OpenAIJudge)
    markers = ["LEFT", "RIGHT", "GARBAGE", "SLOW", "BADJSON", "FLAKY", "DENIED"]
    caplog.set_level(logging.DEBUG)
    t0 = time.time()
    out = judge.rate([f"answer <<{m}>>" for m in markers], ["q"] * len(markers))
    assert time.time() - t0 < 5
    assert out.schema == pl.Schema(RESULT_SCHEMA) and out.height == len(markers)
    rows = dict(zip(markers, out.iter_rows(named=True), strict=True))
    assert rows["LEFT"]["judge_ok"] and rows["LEFT"]["judge_score"] == pytest.approx(-2 / 3)
    assert rows["RIGHT"]["judge_score"] == 1.0 and rows["RIGHT"]["judge_rating"] == 7.0
    assert not rows["GARBAGE"]["judge_ok"] and rows["GARBAGE"]["judge_score"] is None
    assert "no rating" in rows["GARBAGE"]["judge_error"]
    assert rows["GARBAGE"]["judge_reply"] == "As an AI I cannot rate this."
    assert not rows["SLOW"]["judge_ok"]
    assert "timeout after 2 attempts" in rows["SLOW"]["judge_error"]
    assert server.hits["SLOW"] == 2  # one try plus one retry
    assert "malformed" in rows["BADJSON"]["judge_error"]
    assert rows["FLAKY"]["judge_ok"] and server.hits["FLAKY"] == 2  # 503 retried
    assert "HTTP 401" in rows["DENIED"]["judge_error"] and server.hits["DENIED"] == 1
    assert failure_rate(out) == pytest.approx(4 / 7)
    # the request is a chat completion with the key in the header, never in the logs
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge-test"
    assert body["temperature"] == 0.0 and body["max_tokens"] == 8
    assert headers["Authorization"] == f"Bearer {secret}"
    assert secret not in caplog.text and secret not in repr(judge)


def test_endpoint_configuration_errors(server, monkeypatch):
    monkeypatch.delenv("RLHF_AUDIT_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="RLHF_AUDIT_TEST_KEY"):
        OpenAIJudge(_settings(server))
    with pytest.raises(ValueError, match="api_model"):
        OpenAIJudge(_settings(server, api_model=""))
    with pytest.raises(ValueError, match="http"):
        OpenAIJudge(_settings(server, api_key_env="", base_url="127.0.0.1:1"))
    # no key configured: no Authorization header is sent
    out = OpenAIJudge(_settings(server, api_key_env="")).rate(["x <<RIGHT>>"])
    assert out["judge_score"].to_list() == [1.0]
    assert "Authorization" not in server.requests[-1][1]
    # nothing listening: a connection error, reported per row, not raised
    dead = OpenAIJudge(
        _settings(server, api_key_env="", base_url="http://127.0.0.1:9/v1", max_retries=0)
    )
    out = dead.rate(["x <<LEFT>>"])
    assert not out["judge_ok"][0] and "connection error" in out["judge_error"][0]
    assert make_judge(JudgeSettings(kind="none")) is None
    with pytest.raises(ValueError, match="loaded"):
        make_judge(JudgeSettings(kind="hf"))


# --------------------------------------------------------------------------- HF judge


@pytest.fixture(scope="module")
def tiny_lm():
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    return tiny_llama(tok, seed=2, n_layers=2, max_positions=512), tok


def test_hf_judge_generate_parses_replies(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    seen = {}

    def fake_generate(model, tokenizer, prompts, **kw):
        seen["prompts"], seen["kw"] = prompts, kw
        replies = ["Rating: 6", "no idea", "5/7"]
        return [Generation(p, r) for p, r in zip(prompts, replies, strict=True)]

    monkeypatch.setattr(generation, "generate", fake_generate)
    judge = HFJudge(model, tok, JudgeSettings(kind="hf", max_new_tokens=5))
    out = judge.rate(["a", "b", "c"], ["q1", "q2", "q3"])
    assert out["judge_rating"].to_list() == [6.0, None, 5.0]
    assert out["judge_ok"].to_list() == [True, False, True]
    # chat template applied once, with its own BOS, so none is added again
    assert seen["prompts"][0].startswith("<bos><|user|>") and "q1" in seen["prompts"][0]
    assert seen["kw"]["add_special_tokens"] is False and seen["kw"]["max_new_tokens"] == 5


def test_hf_judge_real_generation_runs(tiny_lm):
    model, tok = tiny_lm
    out = HFJudge(model, tok, JudgeSettings(kind="hf", max_new_tokens=3)).rate(["guns", "tax"])
    assert out.height == 2 and out.schema == pl.Schema(RESULT_SCHEMA)
    for r in out.iter_rows(named=True):  # a random model's reply: parsed or a counted failure
        assert r["judge_ok"] == (r["judge_error"] is None) == (r["judge_score"] is not None)


def test_hf_judge_logits_is_expected_digit(tiny_lm):
    model, tok = tiny_lm
    judge = HFJudge(model, tok, JudgeSettings(kind="hf", method="logits", batch_size=2))
    texts = ["guns are a right", "the tax", "climate policy should"]
    out = judge.rate(texts)
    prompts, add = judge._prompts(texts, [None] * 3)
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(1, 8)]
    for i, p in enumerate(prompts):
        ids = tok(p + "Rating:", add_special_tokens=add)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        pd = probs[digits].numpy().astype(float)
        want = float(pd @ np.arange(1, 8) / pd.sum())
        assert out["judge_rating"][i] == pytest.approx(want, abs=1e-4)
        assert out["judge_score"][i] == pytest.approx((want - 4) / 3, abs=1e-4)
    assert out["judge_ok"].all()
