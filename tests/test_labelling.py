"""Tests of rlhf_audit.labelling: ground-truth tables, reply validation, the LM labeller with
a fake model, and the chat-completions client against a local HTTP server."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import polars as pl
import pytest

from rlhf_audit import labelling as L

FEATS = ("refusal", "helpful", "harmless", "sentiment")
VALID = {"refusal": False, "helpful": True, "harmless": True, "sentiment": -1}
TRANSCRIPT = "\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour, water and yeast."


# --------------------------------------------------------------------------- reply validation


def test_parse_accepts_plain_fenced_and_wordy_json():
    want = {"refusal": 0, "helpful": 1, "harmless": 1, "sentiment": -1}
    assert L.parse_label_reply(json.dumps(VALID), FEATS) == want
    assert L.parse_label_reply("```json\n" + json.dumps(VALID) + "\n```", FEATS) == want
    assert L.parse_label_reply("Here you go: " + json.dumps(VALID) + " Done.", FEATS) == want
    numeric = {"refusal": 0, "helpful": 1, "harmless": 1.0, "sentiment": "negative"}
    assert L.parse_label_reply(json.dumps(numeric), FEATS) == want


@pytest.mark.parametrize("reply,why", [
    (None, "no reply"),
    ("I think it is helpful.", "no JSON object"),
    ('{"refusal": false, "helpful": tru', "no JSON object"),
    ('{"refusal": false, "helpful": true,}', "does not parse"),
    (json.dumps({k: v for k, v in VALID.items() if k != "harmless"}),
     r"missing keys \['harmless'\]"),
    (json.dumps({**VALID, "topics": ["food"]}), r"unexpected keys \['topics'\]"),
    (json.dumps({**VALID, "helpful": 2}), "'helpful' must be true/false or 0/1"),
    (json.dumps({**VALID, "helpful": "yes"}), "'helpful' must be"),
    (json.dumps({**VALID, "sentiment": 2}), "'sentiment' must be -1, 0 or 1"),
    (json.dumps({**VALID, "sentiment": 0.5}), "'sentiment' must be"),
    (json.dumps({**VALID, "sentiment": True}), "'sentiment' must be"),
    ("[1, 2]", "no JSON object"),
])
def test_parse_rejects_invalid_replies_with_a_reason(reply, why):
    with pytest.raises(ValueError, match=why):
        L.parse_label_reply(reply, FEATS)


def test_prompt_lists_every_feature_and_cuts_long_transcripts_from_the_start():
    p = L.build_label_prompt(TRANSCRIPT, L.DEFAULT_FEATURES)
    for f in L.DEFAULT_FEATURES:
        assert f'"{f}"' in p
    assert "Mix flour, water and yeast." in p
    assert "-1 = negative" in p and "FINAL Assistant turn" in p
    long = "\n\nHuman: " + "old words " * 2000 + "\n\nAssistant: the final answer"
    p2 = L.build_label_prompt(long, FEATS, max_chars=300)
    assert "[...]" in p2 and "the final answer" in p2 and len(p2) < 2000
    custom = L.build_label_prompt(TRANSCRIPT, ("funny",), (), {"funny": "the reply is a joke"})
    assert '"funny": true if the reply is a joke' in custom


# --------------------------------------------------------------------------- LM labeller


class FakeModel:
    """A ``complete`` callable answering from a script of replies per text."""

    def __init__(self, script):
        self.script = script  # text marker -> list of replies, one per ask
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(prompts)
        out = []
        for p in prompts:
            key = next(k for k in self.script if k in p)
            replies = self.script[key]
            out.append(replies.pop(0) if len(replies) > 1 else replies[0])
        return out


def items():
    return [L.LabelItem("p1", "chosen", "\n\nHuman: A?\n\nAssistant: alpha"),
            L.LabelItem("p1", "rejected", "\n\nHuman: A?\n\nAssistant: beta"),
            L.LabelItem("p2", "chosen", "\n\nHuman: B?\n\nAssistant: gamma")]


def test_lm_labeller_retries_invalid_replies_with_the_reason_and_keeps_failures():
    fake = FakeModel({
        "alpha": [json.dumps(VALID)],
        "beta": ["sorry, no JSON here", json.dumps({**VALID, "sentiment": 1})],
        "gamma": ['{"refusal": 3}'],  # never valid
    })
    lab = L.LMLabeller(fake, FEATS, settings=L.LMLabellerSettings(max_attempts=3,
                                                                  max_missing_share=0.5))
    out = lab.label(items())
    assert out.height == 3 and out["pair_id"].to_list() == ["p1", "p1", "p2"]
    assert out["label_ok"].to_list() == [True, True, False]
    assert out["attempts"].to_list() == [1, 2, 3]
    assert out.row(1, named=True)["sentiment"] == 1
    bad = out.row(2, named=True)
    assert all(bad[f] is None for f in FEATS) and "missing keys" in bad["error"]
    # Only invalid texts are re-asked, and the re-ask says what was wrong.
    assert [len(c) for c in fake.calls] == [3, 2, 1]
    assert "no JSON object" in fake.calls[1][0] and "could not be used" in fake.calls[1][0]
    assert L.missing_summary(out) == {"n_texts": 3, "n_missing": 1, "n_pairs_with_missing": 1,
                                      "n_invalid_reply": 1, "n_transient": 0, "n_http_4xx": 0,
                                      "n_from_cache": 0}
    fails = L.failures_table(out)
    assert fails.to_dicts() == [{"pair_id": "p2", "side": "chosen", "attempts": 3,
                                 "error_kind": "invalid_reply", "error": bad["error"]}]
    wide = L.labels_wide(out, FEATS)
    assert wide.columns[:2] == ["pair_id", "chosen_refusal"]
    assert wide.filter(pl.col("pair_id") == "p2")["rejected_helpful"].item() is None


def test_lm_labeller_raises_when_too_many_texts_stay_unlabelled():
    fake = FakeModel({"alpha": ["x"], "beta": ["x"], "gamma": [json.dumps(VALID)]})
    lab = L.LMLabeller(fake, FEATS, settings=L.LMLabellerSettings(max_attempts=2,
                                                                  max_missing_share=0.5))
    with pytest.raises(L.LabellingError, match="2 of 3 texts"):
        lab.label(items())


def test_lm_labeller_rejects_a_backend_that_loses_replies():
    lab = L.LMLabeller(lambda prompts: prompts[:-1], FEATS)
    with pytest.raises(L.LabellingError, match="2 replies for 3 prompts"):
        lab.label(items())


def test_hf_complete_applies_the_chat_template_and_decodes_greedily():
    seen = {}

    def fake_generate(model, tokenizer, prompts, **kw):
        seen.update(kw, prompts=prompts)
        return [SimpleNamespace(text=json.dumps(VALID)) for _ in prompts]

    tok = SimpleNamespace(chat_template="x", apply_chat_template=lambda msgs, tokenize,
                          add_generation_prompt: f"<user>{msgs[0]['content']}</user><bot>")
    complete = L.hf_complete(object(), tok, generate=fake_generate, max_new_tokens=77)
    lab = L.LMLabeller(complete, FEATS)
    out = lab.label(items()[:2])
    assert out["label_ok"].all()
    assert seen["prompts"][0].startswith("<user>") and seen["prompts"][0].endswith("<bot>")
    assert seen["do_sample"] is False and seen["max_new_tokens"] == 77
    assert seen["add_special_tokens"] is False


# --------------------------------------------------------------------------- endpoint client


class _Server:
    """A chat-completions stand-in on 127.0.0.1 that plays a queue of behaviours."""

    def __init__(self, behaviours, key="sekrit-123", max_requests=500):
        self.behaviours = list(behaviours)
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, dict(self.headers), body))
                    if len(outer.requests) > max_requests:  # a runaway client: fail the test
                        return self._send(418, b'{"error": "too many requests in a test"}')
                    b = outer.behaviours.pop(0) if len(outer.behaviours) > 1 else \
                        outer.behaviours[0]
                if self.headers.get("Authorization") != f"Bearer {key}":
                    return self._send(401, b'{"error": "bad key"}')
                if b == "sleep":
                    time.sleep(0.6)
                    b = "valid"
                if b.isdigit():  # an HTTP status to answer with
                    return self._send(int(b), b'{"error": "refused"}')
                if b == "garbage":
                    return self._send(200, b"<html>not json</html>")
                content = json.dumps(VALID) if b == "valid" else "no labels, sorry"
                msg = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                self._send(200, json.dumps(msg).encode())

            def _send(self, code, data):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory(monkeypatch):
    monkeypatch.setenv("TEST_LABELLER_KEY", "sekrit-123")
    made = []

    def make(behaviours):
        s = _Server(behaviours)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _client(url, **kw):
    base = {"base_url": url, "model": "fake-labeller", "api_key_env": "TEST_LABELLER_KEY",
            "timeout_s": 0.3, "max_retries": 2, "backoff_s": 0.01, "concurrency": 1}
    return L.ChatCompletionsClient(L.EndpointSettings(**{**base, **kw}))


def test_endpoint_valid_reply_and_request_shape(server_factory):
    srv = server_factory(["valid"])
    replies = _client(srv.url)(["label this"])
    assert json.loads(replies[0]) == VALID
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sekrit-123"
    assert body["model"] == "fake-labeller" and body["temperature"] == 0.0
    assert body["messages"] == [{"role": "user", "content": "label this"}]
    assert body["response_format"] == {"type": "json_object"}


def test_endpoint_retries_garbage_500_and_timeouts(server_factory):
    srv = server_factory(["garbage", "500", "valid"])
    assert json.loads(_client(srv.url)(["x"])[0]) == VALID
    assert len(srv.requests) == 3
    srv2 = server_factory(["sleep", "valid"])
    assert json.loads(_client(srv2.url)(["x"])[0]) == VALID
    # Had the client waited out the sleep, the first request would have answered and no
    # second one would have been made.
    assert len(srv2.requests) == 2


def test_endpoint_that_stays_broken_gives_missing_labels_not_dropped_rows(server_factory, caplog):
    srv = server_factory(["garbage"])
    lab = L.LMLabeller(_client(srv.url), FEATS,
                       settings=L.LMLabellerSettings(max_attempts=2, max_missing_share=1.0))
    with caplog.at_level(logging.WARNING):
        out = lab.label(items()[:2])
    assert out.height == 2 and not out["label_ok"].any()
    assert out["error_kind"].to_list() == ["transient"] * 2
    assert all("no reply after 3 tries" in e for e in out["error"].to_list())
    assert len(srv.requests) == 2 * 2 * 3  # texts x labeller attempts x (1 + retries)
    assert "sekrit" not in caplog.text


def test_endpoint_invalid_content_is_retried_by_the_labeller(server_factory):
    srv = server_factory(["prose", "valid"])
    lab = L.LMLabeller(_client(srv.url), FEATS)
    out = lab.label(items()[:1])
    assert out["label_ok"].item() and out["attempts"].item() == 2


def test_endpoint_bad_key_fails_at_once_without_leaking_it(server_factory, monkeypatch, caplog):
    srv = server_factory(["valid"])
    monkeypatch.setenv("TEST_LABELLER_KEY", "wrong-key-999")
    with caplog.at_level(logging.DEBUG), pytest.raises(L.EndpointError) as err:
        _client(srv.url)(["x"])
    assert "HTTP 401" in str(err.value) and "TEST_LABELLER_KEY" in str(err.value)
    assert "wrong-key-999" not in str(err.value) and "wrong-key-999" not in caplog.text
    assert len(srv.requests) == 1
    monkeypatch.delenv("TEST_LABELLER_KEY")
    with pytest.raises(L.EndpointError, match="TEST_LABELLER_KEY is not set"):
        _client(srv.url)


def test_endpoint_concurrent_requests_keep_order(server_factory):
    srv = server_factory(["valid"])
    replies = _client(srv.url, concurrency=4)([f"prompt {i}" for i in range(8)])
    assert len(replies) == 8 and all(json.loads(r) == VALID for r in replies)
    assert sorted(b["messages"][0]["content"] for _, _, b in srv.requests) == \
        sorted(f"prompt {i}" for i in range(8))


# --------------------------------------------------------------------------- ground truth


def _rows():
    return [{"pair_id": "p1", "side": "chosen", "refusal": 0, "helpful": True, "harmless": 1,
             "sentiment": 1},
            {"pair_id": "p1", "side": "rejected", "refusal": 1, "helpful": 0, "harmless": False,
             "sentiment": "neutral"},
            {"pair_id": 2, "side": "chosen", "refusal": 0, "helpful": 1, "harmless": 1,
             "sentiment": -1},
            {"pair_id": 2, "side": "rejected", "refusal": 0, "helpful": 0, "harmless": 0,
             "sentiment": 0}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_labels_jsonl_and_parquet(tmp_path):
    out = L.load_labels(_write_jsonl(tmp_path / "l.jsonl", _rows()), FEATS)
    assert out.columns == ["pair_id", "side", *FEATS, "label_ok", "attempts", "error",
                           "error_kind", "from_cache"]
    assert out["helpful"].to_list() == [1, 0, 1, 0]
    assert out["sentiment"].to_list() == [1, 0, -1, 0]
    assert out["pair_id"].to_list() == ["p1", "p1", "2", "2"]
    out.select("pair_id", "side", *FEATS).write_parquet(tmp_path / "l.parquet")
    assert L.load_labels(tmp_path / "l.parquet", FEATS).equals(out)
    tl = L.TableLabeller.from_file(tmp_path / "l.parquet", FEATS)
    got = tl.label([L.LabelItem("2", "rejected", "ignored"), L.LabelItem("p1", "chosen", "")])
    assert got["side"].to_list() == ["rejected", "chosen"] and got["refusal"].to_list() == [0, 0]
    with pytest.raises(L.LabelsError, match=r"l.parquet: no labels for pair_id='p9'"):
        tl.label([L.LabelItem("p9", "chosen", "")])


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r[1].update(side="loser"), r"l.jsonl:2 \(pair_id 'p1'\): key 'side' is 'loser'"),
    (lambda r: r[2].update(helpful=2), r"l.jsonl:3 .*key 'helpful' must be true/false or 0/1"),
    (lambda r: r[3].update(sentiment=5), r"l.jsonl:4 .*key 'sentiment' must be -1, 0 or 1"),
    (lambda r: r[0].pop("harmless"), r"l.jsonl:1: missing key\(s\) \['harmless'\]"),
    (lambda r: r.append(dict(r[0])), r"l.jsonl:5: duplicate key pair_id='p1' side='chosen' "
                                     r"\(first at line 1\)"),
    (lambda r: r[0].update(pair_id=""), r"l.jsonl:1: key 'pair_id' is empty"),
])
def test_bad_label_files_name_file_line_and_key(tmp_path, mutate, match):
    rows = _rows()
    mutate(rows)
    with pytest.raises(L.LabelsError, match=match):
        L.load_labels(_write_jsonl(tmp_path / "l.jsonl", rows), FEATS)


def test_bad_label_tables_and_files(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text(json.dumps(_rows()[0]) + "\n{not json\n")
    with pytest.raises(L.LabelsError, match="l.jsonl:2: not valid JSON"):
        L.load_labels(p, FEATS)
    df = pl.DataFrame(_rows()[:2]).drop("sentiment")
    with pytest.raises(L.LabelsError, match=r"missing column\(s\) \['sentiment'\]"):
        L.validate_labels(df, FEATS, source="organism labels")
    with pytest.raises(L.LabelsError, match="not found"):
        L.load_labels(tmp_path / "nope.parquet", FEATS)
    with pytest.raises(ValueError, match="snake_case"):
        L.validate_labels(df, ("Helpful Score",))


def test_pair_items_and_label_pairs_cover_both_sides():
    pairs = pl.DataFrame({"pair_id": ["a", "b"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"]})
    its = L.pair_items(pairs)
    assert [(i.pair_id, i.side, i.text) for i in its] == [
        ("a", "chosen", "c1"), ("a", "rejected", "r1"), ("b", "chosen", "c2"),
        ("b", "rejected", "r2")]
    out = L.label_pairs(L.LMLabeller(lambda ps: [json.dumps(VALID)] * len(ps), FEATS), pairs)
    assert out.height == 4 and out["label_ok"].all()


def test_complete_from_config_builds_each_backend(monkeypatch):
    from rlhf_audit.labelling import ChatCompletionsClient, complete_from_config

    monkeypatch.setenv("NO_SUCH_KEY_VAR", "sk-test")
    client = complete_from_config({"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                   "model": "m", "api_key_env": "NO_SUCH_KEY_VAR",
                                   "timeout_s": 1, "max_retries": 0, "max_new_tokens": 8})
    assert isinstance(client, ChatCompletionsClient)
    assert client.settings.model == "m" and client.settings.max_tokens == 8
    with pytest.raises(ValueError, match="needs the spec"):
        complete_from_config({"kind": "hf", "model": "x"})


# --------------------------------------------------------------------------- scale: errors


def _many_items(n, tag="t"):
    return [L.LabelItem(f"{tag}{i}", "chosen", f"\n\nHuman: q{i}?\n\nAssistant: {tag} answer {i}")
            for i in range(n)]


def test_endpoint_auth_error_stops_at_once_with_a_clear_message(server_factory, monkeypatch):
    for concurrency in (1, 4):
        srv = server_factory(["401"])
        lab = L.LMLabeller(_client(srv.url, concurrency=concurrency), FEATS,
                           settings=L.LMLabellerSettings(max_attempts=3, batch_size=16))
        with pytest.raises(L.AuthenticationError, match="HTTP 401.*TEST_LABELLER_KEY.*Stopped"):
            lab.label(_many_items(40))
        # No retry and nothing queued after the refusal (at most the requests in flight).
        assert 1 <= len(srv.requests) <= concurrency
    srv = server_factory(["403"])
    with pytest.raises(L.AuthenticationError, match="HTTP 403"):
        _client(srv.url)(["x"])
    assert len(srv.requests) == 1


def test_endpoint_4xx_is_recorded_per_text_and_not_reasked(server_factory):
    # Text 2 is refused (HTTP 400, e.g. too long), the others answer.
    srv = server_factory(["valid", "400", "valid"])
    lab = L.LMLabeller(_client(srv.url), FEATS,
                       settings=L.LMLabellerSettings(max_attempts=3, max_missing_share=0.5))
    out = lab.label(_many_items(3))
    assert out["label_ok"].to_list() == [True, False, True]
    row = out.row(1, named=True)
    assert row["error_kind"] == "http_4xx" and "HTTP 400" in row["error"] and row["attempts"] == 1
    assert len(srv.requests) == 3  # a 400 is neither retried by the client nor re-asked
    assert L.missing_summary(out)["n_http_4xx"] == 1
    assert L.failures_table(out)["error_kind"].to_list() == ["http_4xx"]


def test_endpoint_that_refuses_everything_stops_after_a_bounded_number(server_factory):
    srv = server_factory(["404"])
    client = _client(srv.url, max_consecutive_refusals=5)
    lab = L.LMLabeller(client, FEATS, settings=L.LMLabellerSettings(max_missing_share=1.0))
    with pytest.raises(L.EndpointError, match="refused 5 requests in a row.*HTTP 404"):
        lab.label(_many_items(50))
    assert len(srv.requests) == 5


# --------------------------------------------------------------------------- scale: cache


class CountingModel:
    """Valid labels for every prompt; counts the texts it is asked about; can fail after k."""

    identity = {"kind": "fake", "model": "counting-v1"}

    def __init__(self, fail_after=None):
        self.asked: list[str] = []
        self.fail_after = fail_after

    def __call__(self, prompts):
        out = []
        for p in prompts:
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise KeyboardInterrupt("job killed")
            self.asked.append(p)
            out.append(json.dumps(VALID))
        return out


def test_label_cache_resumes_an_interrupted_run_and_labels_only_the_rest(tmp_path):
    cache = L.LabelCache(tmp_path / "labels.sqlite")
    its = _many_items(40)
    st = L.LMLabellerSettings(batch_size=4, checkpoint_every=8)
    first = CountingModel(fail_after=21)
    with pytest.raises(KeyboardInterrupt):
        L.LMLabeller(first, FEATS, settings=st, cache=cache).label(its)
    assert len(cache) == 16  # two whole checkpoints of 8 survived the interrupt
    second = CountingModel()
    out = L.LMLabeller(second, FEATS, settings=st, cache=cache).label(its)
    assert len(second.asked) == 40 - 16 and out["label_ok"].all()
    assert out["from_cache"].sum() == 16 and out["pair_id"].to_list() == [i.pair_id for i in its]
    assert not any("t3 answer 3" in p for p in second.asked)  # cached texts are not re-sent
    # An enlarged run asks only for the new texts; another pair id with the same text is a hit.
    third = CountingModel()
    more = its + _many_items(10, tag="u") + [L.LabelItem("other", "rejected", its[0].text)]
    out = L.LMLabeller(third, FEATS, settings=L.LMLabellerSettings(max_attempts=1),
                       cache=cache).label(more)
    assert len(third.asked) == 10 and out.height == 51 and out["label_ok"].all()
    assert out.row(50, named=True)["from_cache"]


def test_label_cache_key_is_text_spec_and_prompt_version_only(tmp_path, monkeypatch):
    cache = L.LabelCache(tmp_path / "labels.sqlite")
    its = _many_items(6)
    L.LMLabeller(CountingModel(), FEATS, cache=cache).label(its)
    # Settings that do not change the question (batching, retries) still hit the cache.
    again = CountingModel()
    L.LMLabeller(again, FEATS, settings=L.LMLabellerSettings(batch_size=2, max_attempts=5),
                 cache=cache).label(its)
    assert again.asked == []
    # A new prompt version, another model or other features relabel everything.
    monkeypatch.setattr(L, "PROMPT_VERSION", "2")
    v2 = CountingModel()
    L.LMLabeller(v2, FEATS, cache=cache).label(its)
    assert len(v2.asked) == 6
    monkeypatch.setattr(L, "PROMPT_VERSION", "1")
    other = CountingModel()
    L.LMLabeller(other, FEATS, cache=cache, backend_identity={"kind": "fake", "model": "v2"}
                 ).label(its)
    assert len(other.asked) == 6
    fewer = CountingModel()
    out = L.LMLabeller(lambda ps: [json.dumps({k: VALID[k] for k in FEATS[:3]})] * len(ps),
                       FEATS[:3], cache=cache, backend_identity=CountingModel.identity).label(its)
    assert out["label_ok"].all() and fewer.asked == []
    with pytest.raises(ValueError, match="identity"):
        L.LMLabeller(lambda ps: ps, FEATS, cache=cache)


def test_client_identity_pins_the_model_not_the_key_or_timeouts(monkeypatch):
    monkeypatch.setenv("K1", "secret-a")
    a = L.ChatCompletionsClient(L.EndpointSettings(api_key_env="K1", timeout_s=5))
    b = L.ChatCompletionsClient(L.EndpointSettings(api_key_env="K1", timeout_s=50,
                                                   max_retries=9))
    assert a.identity == b.identity and "secret-a" not in json.dumps(a.identity)
    assert a.identity["model"] == "gpt-4-turbo-2024-04-09"
