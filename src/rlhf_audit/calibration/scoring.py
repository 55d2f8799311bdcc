"""Scoring replies: answer, correctness, verbalized and internal (token-level) confidence."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from rlhf_audit.calibration.answers import extract_answer, truncate_reply
from rlhf_audit.calibration.confidence import parse_confidence
from rlhf_audit.calibration.settings import DEFAULT_SETTINGS, CalibrationSettings
from rlhf_audit.calibration.templates import ITEM_SCHEMA

if TYPE_CHECKING:  # only the shape of a generation matters here
    from rlhf_audit.lm.records import Generation

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Internal (token-level) confidence
# --------------------------------------------------------------------------------------


def _decoded_len(tokenizer, ids: Sequence[int], k: int, cache: dict[int, int]) -> int:
    if k not in cache:
        cache[k] = len(tokenizer.decode(list(ids[:k]), skip_special_tokens=True))
    return cache[k]


def locate_token_span(tokenizer, token_ids: Sequence[int], char_span: tuple[int, int]
                      ) -> tuple[int, int] | None:
    """Generated tokens ``[i, j)`` that cover characters ``char_span`` of the decoded text.

    Works for any tokenizer by incremental decoding: the decoded length of a prefix of the
    tokens grows with the prefix, so the first token reaching past ``start`` and the first
    prefix covering ``end`` are found by bisection (O(log n) decodes per boundary).
    Returns None when the span lies outside the decoded text.
    """
    s, e = char_span
    n = len(token_ids)
    cache: dict[int, int] = {}
    if n == 0 or s < 0 or e <= s or _decoded_len(tokenizer, token_ids, n, cache) < e:
        return None
    lo, hi = 0, n - 1  # first k with len(decode(ids[:k+1])) > s
    while lo < hi:
        mid = (lo + hi) // 2
        if _decoded_len(tokenizer, token_ids, mid + 1, cache) > s:
            hi = mid
        else:
            lo = mid + 1
    first = lo
    lo, hi = first + 1, n  # first k with len(decode(ids[:k])) >= e
    while lo < hi:
        mid = (lo + hi) // 2
        if _decoded_len(tokenizer, token_ids, mid, cache) >= e:
            hi = mid
        else:
            lo = mid + 1
    return first, lo


def internal_confidence(generation: Generation, tokenizer, char_span: tuple[int, int] | None
                        ) -> tuple[float | None, float | None, int]:
    """Mean and minimum probability of the generated tokens over ``char_span`` of
    ``generation.text``, and the number of those tokens ((None, None, 0) when not found).

    Probabilities are ``exp(token_logprobs)`` (temperature 1, before sampling transforms).
    When ``generation.text`` differs from the tokenizer's decoding of the ids, the span's
    text is looked up in the decoding, nearest to its original place.
    """
    ids, lps = list(generation.token_ids), list(generation.token_logprobs)
    if len(ids) != len(lps):
        raise ValueError(f"generation has {len(ids)} token ids but {len(lps)} log-probs "
                         f"(prompt {getattr(generation, 'prompt', '')[:40]!r}); they must align "
                         "one to one")
    if char_span is None or not ids:
        return None, None, 0
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    s, e = char_span
    if decoded != generation.text:
        piece = generation.text[s:e]
        hits = [m.start() for m in re.finditer(re.escape(piece), decoded)] if piece else []
        if not hits:
            log.debug("answer %r not found in the decoded generation", piece)
            return None, None, 0
        s = min(hits, key=lambda h: abs(h - s))
        e = s + len(piece)
    span = locate_token_span(tokenizer, ids, (s, e))
    if span is None:
        return None, None, 0
    p = np.exp(np.asarray(lps[span[0]:span[1]], dtype=float))
    return float(p.mean()), float(p.min()), int(span[1] - span[0])


# --------------------------------------------------------------------------------------
# Scoring and metrics
# --------------------------------------------------------------------------------------

SCORED_COLUMNS = {"completion": pl.String, "answer": pl.Float64, "answer_rule": pl.String,
                  "correct": pl.Boolean, "verbalized": pl.Float64, "parse_kind": pl.String,
                  "parse_reason": pl.String, "internal_conf_mean": pl.Float64,
                  "internal_conf_min": pl.Float64, "answer_n_tokens": pl.Int32,
                  "n_generated_tokens": pl.Int32}
"""Columns :func:`score_generations` adds to the items table."""


def _prompt_lead(prompt: str) -> str:
    """The prompt's last line (e.g. ``Answer:``), which the reply continues."""
    return prompt[prompt.rfind("\n") + 1:]


def score_generations(
    items: pl.DataFrame,
    generations: Sequence[Generation],
    tokenizer,
    settings: CalibrationSettings = DEFAULT_SETTINGS,
) -> pl.DataFrame:
    """Parse and score one generation per item (same order as ``items``).

    Adds :data:`SCORED_COLUMNS`: completion (reply text), answer (number or null),
    answer_rule, correct (False when no answer was found), verbalized (in [0, 1] or null),
    parse_kind (one of :data:`PARSE_KINDS`), parse_reason, internal_conf_mean /
    internal_conf_min (token probabilities over the answer's digits; null when no answer),
    answer_n_tokens, n_generated_tokens. A completion (base) reply is cut at the first of
    ``settings.truncate_at`` before parsing; a chat reply never is.
    """
    need = [c for c in ITEM_SCHEMA if c not in items.columns]
    if need:
        raise KeyError(f"items table lacks columns {need}; pass the output of build_prompts")
    if len(generations) != items.height:
        raise ValueError(f"{len(generations)} generations for {items.height} items; generate "
                         "exactly one reply per item, in item order")
    rows = []
    for i, (item, gen) in enumerate(zip(items.iter_rows(named=True), generations, strict=True)):
        if getattr(gen, "prompt", item["prompt"]) != item["prompt"]:
            raise ValueError(f"generation {i} was made for another prompt than item "
                             f"{item['item_id']!r}; keep generations in item order")
        # Base models run on into a new problem; a chat reply ends itself, and one that
        # restates "Question:" must keep the answer after it.
        text = gen.text if item["chat"] else truncate_reply(gen.text, settings.truncate_at)
        # A completion prompt ends mid-line ("Answer:"), and the reply continues that line.
        lead = "" if item["chat"] else _prompt_lead(item["prompt"])
        ans = extract_answer(text, prefix=lead)
        conf = parse_confidence(text)
        correct = ans.value is not None and math.isclose(
            ans.value, item["gold"], rel_tol=0.0, abs_tol=settings.answer_abs_tol)
        mean_p, min_p, n_tok = internal_confidence(gen, tokenizer, ans.span)
        rows.append({"completion": gen.text, "answer": ans.value, "answer_rule": ans.rule,
                     "correct": correct, "verbalized": conf.value, "parse_kind": conf.kind,
                     "parse_reason": conf.reason, "internal_conf_mean": mean_p,
                     "internal_conf_min": min_p, "answer_n_tokens": n_tok,
                     "n_generated_tokens": len(gen.token_ids)})
    scored = pl.concat([items, pl.DataFrame(rows, schema=SCORED_COLUMNS)], how="horizontal")
    counts = dict(scored.group_by("parse_kind").len().iter_rows())
    unlocated = scored.filter(pl.col("answer").is_not_null() & (pl.col("answer_n_tokens") == 0))
    log.info("scored %d replies; confidence parse kinds %s; %d without an answer; %d answers "
             "not located in the generated tokens", scored.height, counts,
             scored["answer"].null_count(), unlocated.height)
    return scored
