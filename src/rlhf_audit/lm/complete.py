"""``complete`` callables: prompts in, one reply per prompt out, from a local Hugging
Face instruct model (:func:`hf_complete`) or an OpenAI-compatible endpoint
(:class:`rlhf_audit.lm.endpoint.ChatCompletionsClient`), built from a workflow endpoint
config by :func:`complete_from_config`. The LM labeller and the LM rewriter both come
through here; this module imports no study.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rlhf_audit.lm.endpoint import ChatCompletionsClient, EndpointSettings, NoReply

Complete = Callable[[list[str]], list[str | NoReply | None]]
"""A text-completion backend: prompts in, one reply per prompt out (None or a
:class:`NoReply` = no reply). A backend may carry an ``identity`` attribute (a
JSON-able mapping naming the model and how it is asked); the label cache keys on it."""


def hf_complete(model, tokenizer, *, generate: Callable | None = None, max_new_tokens: int = 256,
                batch_size: int = 16, use_chat_template: bool | None = None,
                temperature: float = 0.0, identity: Mapping | None = None) -> Complete:
    """A ``complete`` callable backed by a local Hugging Face instruct model.

    Prompts are wrapped as one user message with the tokenizer's chat template
    (when it has one, or when ``use_chat_template`` says so) and decoded
    through ``generate`` (default ``rlhf_audit.lm.generation.generate``,
    injectable for tests): greedily at ``temperature`` 0, else sampled at that
    temperature with a new seed per call (so a retry can differ).
    ``identity`` names the model for the label cache.
    """
    if generate is None:
        from rlhf_audit.lm.generation import generate as _generate

        generate = _generate
    templ = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None \
        else use_chat_template
    calls = [0]

    def complete(prompts: list[str]) -> list[str | None]:
        if templ:
            final = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                   tokenize=False, add_generation_prompt=True)
                     for p in prompts]
        else:
            final = list(prompts)
        kw = {} if temperature <= 0 else {"temperature": temperature, "seed": calls[0]}
        calls[0] += 1
        gens = generate(model, tokenizer, final, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, do_sample=temperature > 0,
                        # The chat template already carries the special tokens it wants.
                        add_special_tokens=not templ, **kw)
        return [g.text for g in gens]

    complete.identity = dict(identity) if identity is not None else None  # type: ignore[attr-defined]
    return complete


def complete_from_config(endpoint: Mapping, spec: Mapping | None = None, device: str = "auto",
                         json_mode: bool = True, temperature: float = 0.0,
                         concurrency: int = 4) -> Complete:
    """A ``complete`` callable for an endpoint config (workflow key ``{kind: hf|openai, ...}``).

    ``spec`` is the model spec of an ``hf`` endpoint's model (a key of
    ``models``). The labeller and the rewriter both come through here. The
    callable's ``identity`` names the model and how it is asked (for the label cache).
    """
    if endpoint["kind"] == "hf":
        from rlhf_audit.lm.loader import ModelSpec, load_causal_lm, weights_hash

        if spec is None:
            raise ValueError("an 'hf' endpoint needs the spec of its model")
        ms = spec if isinstance(spec, ModelSpec) else ModelSpec.from_config(
            {k: v for k, v in spec.items() if k in ("hf", "revision", "path")})
        model, tok = load_causal_lm(ms, device=device)
        max_new = endpoint.get("max_new_tokens", 256)
        # A local directory can be retrained in place: name it by its weights.
        ident = {"kind": "hf", "spec": ms.to_dict(), "max_new_tokens": max_new,
                 "temperature": temperature,
                 "weights_sha256": weights_hash(ms) if ms.path else None}
        return hf_complete(model, tok, max_new_tokens=max_new, temperature=temperature,
                           identity=ident)
    return ChatCompletionsClient(EndpointSettings(
        base_url=endpoint["base_url"], model=endpoint["model"],
        api_key_env=endpoint.get("api_key_env", "OPENAI_API_KEY"),
        timeout_s=endpoint.get("timeout_s", 60), max_retries=endpoint.get("max_retries", 3),
        max_tokens=endpoint.get("max_new_tokens", 256), json_mode=json_mode,
        temperature=temperature, concurrency=concurrency))
