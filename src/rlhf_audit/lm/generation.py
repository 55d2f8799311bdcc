"""Batched generation and log-probability scoring for Hugging Face causal LMs.

:func:`generate` runs its own decoding loop instead of ``model.generate`` for
three reasons the studies need: every generated token's log-probability under
the *unprocessed* next-token distribution (temperature 1, no top-p), sampling
that is reproducible per prompt whatever the batch it lands in (each prompt
draws from its own generator seeded by ``(seed, index of the prompt)``), and a
steering hook (:mod:`rlhf_audit.steering`) that can tell prompt positions from
generated ones.

Batches are built from prompts sorted by token length (less padding), padded on
the left (so the last column of every row is its last prompt token and newly
generated tokens line up), run with a KV cache, and returned in input order.
Log-probabilities are natural logs (nats).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rlhf_audit.lm.hooks import steer
from rlhf_audit.lm.records import Generation  # noqa: F401  (re-exported)
from rlhf_audit.progress import progress

log = logging.getLogger(__name__)


@contextlib.contextmanager
def padding_side(tokenizer, side: str) -> Iterator[None]:
    """Temporarily set ``tokenizer.padding_side`` (and a pad token if it has none)."""
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = side
    if tokenizer.pad_token is None:
        # Any id works for padding: padded positions are masked out of attention.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    try:
        yield
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a generation: the tokenizer's eos plus the model's generation config's."""
    ids: set[int] = set()
    for src in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return ids


def _row_seed(seed: int, index: int) -> int:
    # SeedSequence mixes (seed, index) so neighbouring indices give unrelated streams.
    return int(
        np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
        >> np.uint64(1)
    )


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0 at each row's first real token."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)


def _forward_last_logits(model, input_ids, attention_mask, position_ids, past):
    """Logits at the last position only [batch, vocab], float32, and the updated cache."""
    kw = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past,
        use_cache=True,
    )
    try:
        out = model(**kw, logits_to_keep=1)
    except TypeError:  # architectures without logits_to_keep
        out = model(**kw)
    return out.logits[:, -1, :].float(), out.past_key_values


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """One token per row from temperature/top-p transformed logits [batch, vocab]."""
    scaled = logits / temperature
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    # One generator per row keeps a prompt's draws independent of its batch neighbours.
    return torch.stack(
        [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)]
    )


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so OOM shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    add_special_tokens: bool = True,
    steering=None,
) -> list[Generation]:
    """Continue each prompt; returns one :class:`Generation` per prompt, in input order.

    Greedy (``do_sample=False``) takes the argmax of the raw logits. Sampling
    applies ``temperature`` then nucleus ``top_p`` and draws with a generator
    seeded by ``(seed, i)`` for the prompt at input index ``i``: the same call
    gives the same text whatever ``batch_size`` is (up to floating-point
    differences between padded batches). ``steering`` is a
    :class:`rlhf_audit.steering.SteeringVector` (or a list of them) installed
    for the whole call.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if do_sample and not (temperature > 0):
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    prompts = list(prompts)
    if not prompts:
        return []

    dev = _device(model)
    eos = eos_token_ids(model, tokenizer)
    results: list[Generation | None] = [None] * len(prompts)
    with padding_side(tokenizer, "left"), steer(model, steering):
        encoded = [
            tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts
        ]
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(
                    f"prompt {i} tokenises to nothing ({prompts[i]!r}); give a "
                    "non-empty prompt or add_special_tokens=True"
                )
        pad_id = tokenizer.pad_token_id
        for batch in progress(_length_batches([len(e) for e in encoded], batch_size), desc="generate", unit="batch"):  # noqa: E501
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            gens = None
            if do_sample:
                gens = []
                for i in batch:
                    g = torch.Generator(device=dev)
                    g.manual_seed(_row_seed(seed, i))
                    gens.append(g)
            out_ids, out_lp, eos_hit = _decode(
                model, ids, mask, max_new_tokens, do_sample, temperature, top_p, gens, eos
            )
            for r, i in enumerate(batch):
                toks = out_ids[r]
                gen = Generation(
                    prompt=prompts[i],
                    text=tokenizer.decode(toks, skip_special_tokens=True),
                    token_ids=toks,
                    token_logprobs=out_lp[r],
                    finished=eos_hit[r],
                )
                results[i] = gen
    log.debug("generated %d continuations (max %d new tokens)", len(prompts), max_new_tokens)
    return results  # type: ignore[return-value]


def _decode(model, ids, mask, max_new_tokens, do_sample, temperature, top_p, gens, eos):
    """The KV-cached decoding loop for one left-padded batch."""
    n = ids.shape[0]
    dev = ids.device
    eos_t = torch.tensor(sorted(eos), device=dev, dtype=torch.long) if eos else None
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    toks: list[torch.Tensor] = []
    lps: list[torch.Tensor] = []
    pos = _positions(mask)
    logits, past = _forward_last_logits(model, ids, mask, pos, None)
    next_pos = pos[:, -1:] + 1
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)
        if do_sample:
            nxt = _sample(logits, temperature, top_p, gens)
        else:
            nxt = logits.argmax(-1)
        toks.append(torch.where(done, -1, nxt))
        lps.append(logp.gather(-1, nxt[:, None])[:, 0])
        if eos_t is not None:
            done = done | torch.isin(nxt, eos_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], dim=1)
        logits, past = _forward_last_logits(model, nxt[:, None], mask, next_pos, past)
        next_pos = next_pos + 1
    tok_m = torch.stack(toks, 1).cpu().numpy()
    lp_m = torch.stack(lps, 1).cpu().numpy()
    out_ids, out_lp, hit = [], [], []
    for r in range(n):
        keep = tok_m[r] >= 0
        row = tok_m[r][keep].tolist()
        out_ids.append(row)
        out_lp.append([float(x) for x in lp_m[r][keep]])
        hit.append(bool(row) and row[-1] in eos)
    return out_ids, out_lp, hit


def _encode_pairs(tokenizer, prompts, continuations, add_special_tokens):
    """Token ids of prompt + continuation and where the continuation starts, per row.

    The two parts are tokenised separately and concatenated so that exactly the
    continuation's own tokens are scored (no merge across the boundary).
    """
    rows = []
    for p, c in zip(prompts, continuations, strict=True):
        p_ids = (
            tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
            if (p or add_special_tokens)
            else []
        )
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not p_ids:
            # Nothing to condition the first token on: it becomes context, not a score.
            p_ids, c_ids = c_ids[:1], c_ids[1:]
        rows.append((p_ids + c_ids, len(p_ids)))
    return rows


@torch.inference_mode()
def _continuation_logprobs(
    model, tokenizer, prompts, continuations, batch_size, add_special_tokens=True
):
    """(sum of log-probs [n] nats, number of scored tokens [n]) of each continuation."""
    rows = _encode_pairs(tokenizer, prompts, continuations, add_special_tokens)
    dev = _device(model)
    sums = np.zeros(len(rows))
    counts = np.zeros(len(rows), dtype=np.int64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Rows with nothing to score (empty text, no BOS) keep sum 0 over 0 tokens.
    todo = [i for i, (seq, start) in enumerate(rows) if len(seq) > start]
    for chunk in progress(_length_batches([len(rows[i][0]) for i in todo], batch_size), desc="score log-probs", unit="batch"):  # noqa: E501
        batch = [todo[k] for k in chunk]
        width = max(len(rows[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        score = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, i in enumerate(batch):
            seq, start = rows[i]
            off = width - len(seq)
            ids[r, off:] = torch.tensor(seq)
            mask[r, off:] = 1
            score[r, off + start :] = True
        ids, mask, score = ids.to(dev), mask.to(dev), score.to(dev)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False
        ).logits.float()
        # Position t predicts token t+1.
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        sel = score[:, 1:]
        s = (logp * sel).sum(-1).cpu().numpy()
        c = sel.sum(-1).cpu().numpy()
        for r, i in enumerate(batch):
            sums[i], counts[i] = s[r], c[r]
    return sums, counts


def sequence_logprob(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> np.ndarray:
    """Log-probability of each continuation given its prompt.

    Returns ``[n, 2]`` float64: column 0 the sum over the continuation's tokens
    (nats), column 1 the mean per token (nats/token; NaN for an empty
    continuation). Prompt and continuation are tokenised separately (the
    continuation without special tokens) and concatenated.
    """
    prompts, continuations = list(prompts), list(continuations)
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        return np.zeros((0, 2))
    with padding_side(tokenizer, "left"):
        sums, counts = _continuation_logprobs(
            model, tokenizer, prompts, continuations, batch_size, add_special_tokens
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return np.stack([sums, mean], axis=1)


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Per-text perplexity ``exp(-mean log p)`` [n] of each text's tokens after BOS.

    With a tokenizer that adds no BOS the first token is context only. A text
    with no scorable token gets NaN.
    """
    texts = list(texts)
    lp = sequence_logprob(model, tokenizer, [""] * len(texts), texts, batch_size)
    return np.exp(-lp[:, 1])
