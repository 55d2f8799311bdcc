"""The one chat-completions client (rlhf_audit.lm.endpoint) against the labelling tests'
stub server on 127.0.0.1: what is retried, recorded per prompt or raised, and that the
judge, the labeller and the rewriter share it."""

from __future__ import annotations

import json
import logging

import pytest
from test_labelling import VALID, _Server

from rlhf_audit.lm import endpoint as E


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("TEST_LABELLER_KEY", "sekrit-123")
    made = []

    def make(behaviours):
        made.append(_Server(behaviours))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _client(url, **kw):
    base = {"base_url": url, "model": "m", "api_key_env": "TEST_LABELLER_KEY", "timeout_s": 0.3,
            "max_retries": 2, "backoff_s": 0.01, "concurrency": 1, "json_mode": False}
    return E.ChatCompletionsClient(E.EndpointSettings(**{**base, **kw}))


def test_one_client_behind_judge_labeller_and_rewriter():
    from rlhf_audit import judge, labelling
    from rlhf_audit.lm import complete

    assert judge.EndpointError is labelling.EndpointError is E.EndpointError
    assert labelling.AuthenticationError is E.AuthenticationError
    assert labelling.ChatCompletionsClient is E.ChatCompletionsClient
    assert labelling.NoReply is E.NoReply and labelling.EndpointSettings is E.EndpointSettings
    assert labelling.complete_from_config is complete.complete_from_config
    assert issubclass(E.AuthenticationError, E.EndpointError)


def test_reply_request_shape_and_key_stays_secret(stub, caplog):
    srv = stub(["valid"])
    client = _client(srv.url, temperature=0.1, max_tokens=17)
    with caplog.at_level(logging.DEBUG):
        out = client(["label this", "and this"])
    assert [json.loads(r) for r in out] == [VALID, VALID]
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sekrit-123"
    assert body == {"model": "m", "messages": [{"role": "user", "content": "label this"}],
                    "temperature": 0.1, "max_tokens": 17}  # json_mode off: no response_format
    assert "sekrit" not in repr(client) and "sekrit" not in json.dumps(client.identity)
    assert "sekrit" not in caplog.text


def test_transient_failures_are_retried_then_reported_with_their_cause(stub):
    srv = stub(["503", "garbage", "valid"])
    assert json.loads(_client(srv.url).request("x")) == VALID and len(srv.requests) == 3
    srv = stub(["garbage"])
    nr = _client(srv.url).request("x")
    assert isinstance(nr, E.NoReply) and nr.kind == "transient" and nr.tries == 3
    assert nr.cause.startswith("malformed response") and "no reply after 3 tries" in nr.detail
    assert len(srv.requests) == 3
    srv = stub(["sleep"])  # answers after 0.6 s; the client waits 0.3 s
    nr = _client(srv.url, max_retries=1).request("x")
    assert (nr.kind, nr.cause, nr.tries) == ("transient", "timeout", 2)
    nr = _client("http://127.0.0.1:9/v1", max_retries=0).request("x")  # nothing listens
    assert nr.kind == "transient" and nr.cause.startswith("connection error")


def test_4xx_is_recorded_per_prompt_never_retried_and_bounded(stub):
    srv = stub(["valid", "400", "valid"])
    out = _client(srv.url)(["a", "b", "c"])
    assert isinstance(out[1], E.NoReply) and out[1].kind == "http_4xx"
    assert out[1].detail.startswith("HTTP 400") and out[1].tries == 1
    assert json.loads(out[2]) == VALID and len(srv.requests) == 3
    # A success resets the count of refusals in a row.
    srv = stub(["404", "404", "valid", "404", "404", "valid"])
    out = _client(srv.url, max_consecutive_refusals=3)(list("abcdef"))
    assert [isinstance(r, E.NoReply) for r in out] == [True, True, False, True, True, False]
    srv = stub(["404"])
    with pytest.raises(E.EndpointError, match="refused 3 requests in a row.*HTTP 404"):
        _client(srv.url, max_consecutive_refusals=3)(list("abcdefgh"))
    assert len(srv.requests) == 3


def test_auth_errors_stop_at_once_or_are_recorded(stub, monkeypatch):
    for code in ("401", "403"):
        srv = stub([code])
        client = _client(srv.url)
        with pytest.raises(E.AuthenticationError, match=f"HTTP {code}.*TEST_LABELLER_KEY"):
            client(list("abcd"))
        assert len(srv.requests) == 1
        later = client.request("e")  # the client stays stopped
        assert isinstance(later, E.NoReply) and "not sent" in later.detail
        assert len(srv.requests) == 1
    srv = stub(["401", "valid"])
    out = _client(srv.url, auth_errors="record")(["a", "b"])
    assert out[0].kind == "http_4xx" and out[0].detail.startswith("HTTP 401")
    assert json.loads(out[1]) == VALID


def test_configuration_errors_before_any_request(monkeypatch):
    monkeypatch.delenv("TEST_LABELLER_KEY", raising=False)
    with pytest.raises(E.EndpointConfigError, match="TEST_LABELLER_KEY is not set"):
        _client("http://127.0.0.1:9/v1")
    for kw, match in (({"base_url": "127.0.0.1:9/v1"}, "http://"), ({"model": ""}, "model"),
                      ({"auth_errors": "ignore"}, "auth_errors")):
        with pytest.raises(E.EndpointConfigError, match=match) as err:
            _client(**{"url": "http://127.0.0.1:9/v1", "api_key_env": None, **kw})
        # both kinds of caller catch it: the judge's ValueError and the labeller's EndpointError
        assert isinstance(err.value, ValueError) and isinstance(err.value, E.EndpointError)
