"""The one client of the project for OpenAI-compatible ``/chat/completions`` endpoints
(OpenAI, vLLM, llama.cpp server, ...), stdlib ``urllib`` only.

The partisanship judge (:mod:`rlhf_audit.judge`), the LM labeller
(:mod:`rlhf_audit.labelling`) and the LM rewriter (:mod:`rlhf_audit.rewrite`) all
send their prompts through :class:`ChatCompletionsClient`, so timeouts, retries,
backoff and the handling of refusals are the same everywhere:

- transient failures (a timeout, a connection error, HTTP 429 or 5xx, a body that is
  not a chat completion) are retried with capped, jittered exponential backoff; when
  the tries run out the reply is ``NoReply('transient', ...)``;
- HTTP 401/403 (a missing, wrong or unauthorised key) raise
  :class:`AuthenticationError` at once and no further request is sent (or, with
  ``auth_errors='record'``, are recorded per text like any other 4xx);
- any other HTTP 4xx concerns that request (too long, a bad parameter): the reply is
  ``NoReply('http_4xx', 'HTTP 400 (...)')``, never retried, and
  ``max_consecutive_refusals`` of them in a row raise :class:`EndpointError` (a wrong
  model name or URL would otherwise be sent to every text);
- the API key is read from the environment variable the settings name and never
  appears in a log, an error message, a ``repr`` or the client's ``identity``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The chat-completions endpoint refused in a way retrying cannot fix, or is misconfigured."""


class AuthenticationError(EndpointError):
    """HTTP 401/403: the key is missing, wrong or lacks access; the client stops at once."""


class EndpointConfigError(EndpointError, ValueError):
    """The endpoint settings cannot work (no key in the environment, a URL without a scheme,
    no model name); raised when the client is built, before any request."""


@dataclass(frozen=True)
class NoReply:
    """What the client returns instead of a reply it could not get."""

    kind: str
    """'transient' (no reply after the retries) or 'http_4xx' (this request was refused)."""
    detail: str
    """What went wrong, e.g. 'HTTP 400 (Bad Request)'; never holds the key."""
    cause: str = ""
    """The last failure alone ('timeout', 'HTTP 503', 'connection error: ...',
    'malformed response ...'); empty when nothing was sent."""
    tries: int = 0
    """Requests sent for this prompt."""

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class EndpointSettings:
    """An OpenAI-compatible chat-completions endpoint."""

    base_url: str = "https://api.openai.com/v1"
    """URL up to and including the API version; '/chat/completions' is appended."""
    model: str = "gpt-4-turbo-2024-04-09"
    """Model name sent in the request; pin a dated snapshot, not an alias that moves."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (never logged); None or '' for no key."""
    timeout_s: float = 60.0
    """Seconds to wait for one response."""
    max_retries: int = 4
    """Extra tries after a timeout, connection error, HTTP 429/5xx or unreadable body."""
    backoff_s: float = 2.0
    """First wait between tries; doubles each time (with jitter: 50-100% of the wait)."""
    max_backoff_s: float = 60.0
    """Longest wait between tries."""
    temperature: float = 0.0
    """Sampling temperature (0: deterministic)."""
    max_tokens: int = 300
    """Longest reply, in tokens."""
    json_mode: bool = True
    """Send response_format={"type": "json_object"} (turn off for servers that reject it)."""
    concurrency: int = 4
    """Requests in flight at once."""
    max_consecutive_refusals: int = 25
    """Stop (EndpointError) after this many HTTP 4xx refusals in a row: a wrong model name or
    URL would otherwise be sent to every text."""
    auth_errors: Literal["raise", "record"] = "raise"
    """HTTP 401/403: raise AuthenticationError at once ('raise'), or record them per text as
    http_4xx refusals that count towards max_consecutive_refusals ('record')."""

    @property
    def identity(self) -> dict:
        """What decides the replies (for caches): not the key, timeouts or retries."""
        return {"kind": "openai", "base_url": self.base_url.rstrip("/"), "model": self.model,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                "json_mode": self.json_mode}


def _failure(err: BaseException) -> str:
    """A short, key-free description of a transport failure."""
    reason = getattr(err, "reason", err)
    if isinstance(err, TimeoutError) or isinstance(reason, TimeoutError) \
            or "timed out" in str(reason):
        return "timeout"
    return f"connection error: {reason}"


class ChatCompletionsClient:
    """``complete(prompts) -> replies`` for an OpenAI-compatible endpoint (see the module
    docstring for what is retried, recorded or raised). Each prompt is sent as one user
    message; the reply is its text or a :class:`NoReply`. Calling the client is the same
    as :meth:`complete`, so it plugs in wherever a ``complete`` callable is expected."""

    def __init__(self, settings: EndpointSettings = EndpointSettings()):
        if not settings.base_url.startswith(("http://", "https://")):
            raise EndpointConfigError(
                f"endpoint base_url must start with http:// or https://, got "
                f"{settings.base_url!r}")
        if not settings.model:
            raise EndpointConfigError("endpoint model is empty; name the model the endpoint "
                                      "serves")
        if settings.auth_errors not in ("raise", "record"):
            raise EndpointConfigError(f"auth_errors must be 'raise' or 'record', got "
                                      f"{settings.auth_errors!r}")
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.identity = settings.identity
        self._key = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._refusals = 0
        if settings.api_key_env:
            self._key = os.environ.get(settings.api_key_env)
            if not self._key:
                raise EndpointConfigError(
                    f"environment variable {settings.api_key_env} is not set (or empty); "
                    "export the API key there, or set api_key_env to null or '' for an "
                    "endpoint without a key")

    def __repr__(self) -> str:  # the key must never show up in logs or tracebacks
        return f"ChatCompletionsClient(url={self.url!r}, model={self.settings.model!r})"

    def _refused(self, code: int, reason: str, tries: int) -> NoReply:
        with self._lock:
            self._refusals += 1
            n = self._refusals
        if n >= self.settings.max_consecutive_refusals:
            self._stop.set()
            raise EndpointError(
                f"{self.url} refused {n} requests in a row (last: HTTP {code} {reason}); "
                f"check base_url and model {self.settings.model!r}") from None
        return NoReply("http_4xx", f"HTTP {code} ({reason})", f"HTTP {code}", tries)

    def _body(self, prompt: str) -> bytes:
        s = self.settings
        body = {"model": s.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": s.temperature, "max_tokens": s.max_tokens}
        if s.json_mode:
            body["response_format"] = {"type": "json_object"}
        return json.dumps(body).encode()

    def request(self, prompt: str) -> str | NoReply:
        """The reply to one prompt, after retries where they apply."""
        s = self.settings
        stopped = NoReply("transient", "not sent: the client stopped after an earlier error")
        if self._stop.is_set():
            return stopped
        data = self._body(prompt)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = "Bearer " + self._key
        last = ""
        tries = 0
        for attempt in range(s.max_retries + 1):
            if attempt:
                wait = min(s.max_backoff_s, s.backoff_s * 2 ** (attempt - 1))
                time.sleep(wait * (0.5 + random.random() / 2))
            if self._stop.is_set():
                return stopped
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            tries += 1
            try:
                with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as err:
                if err.code == 429 or err.code >= 500:
                    last = f"HTTP {err.code}"
                elif err.code in (401, 403) and s.auth_errors == "raise":
                    self._stop.set()
                    raise AuthenticationError(
                        f"{self.url} answered HTTP {err.code} ({err.reason}): the API key in "
                        f"{s.api_key_env} is missing, wrong or has no access to model "
                        f"{s.model!r}. Stopped at once; no further request is sent.") from None
                else:
                    return self._refused(err.code, err.reason, tries)
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError,
                    http.client.HTTPException) as err:
                last = _failure(err)
            else:
                try:
                    content = json.loads(raw)["choices"][0]["message"]["content"]
                    if not isinstance(content, str):
                        raise TypeError("content is not text")
                except (ValueError, KeyError, IndexError, TypeError) as err:
                    last = (f"malformed response ({type(err).__name__}), not a chat completion: "
                            f"{raw[:200]!r}")
                else:
                    with self._lock:
                        self._refusals = 0
                    return content
            log.info("request to %s, try %d/%d failed: %s", self.url, attempt + 1,
                     s.max_retries + 1, last)
        log.warning("no reply from %s after %d tries (%s)", self.url, tries, last)
        return NoReply("transient", f"no reply after {tries} tries ({last})", last, tries)

    def complete(self, prompts: Sequence[str]) -> list[str | NoReply]:
        """One reply (or NoReply) per prompt, in order; ``concurrency`` requests in flight."""
        prompts = list(prompts)
        if self.settings.concurrency <= 1 or len(prompts) <= 1:
            return [self.request(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(self.request, prompts))

    __call__ = complete
