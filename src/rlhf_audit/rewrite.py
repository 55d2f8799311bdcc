"""Meaning-preserving rewrites and their semantic similarity (SEAL's robustness study).

Two rewriters: an LM (any ``complete`` callable from :mod:`rlhf_audit.labelling`:
a local HF instruct model or an OpenAI-compatible endpoint) asked to reword
only the last assistant turn, and, for the organism, the generator's own
re-rendering (:func:`rlhf_audit.organism.hh.rerender_pair`). Similarity is the
cosine of mean-pooled embeddings from any encoder named by a model spec.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import torch

from rlhf_audit.seal import split_transcript

log = logging.getLogger(__name__)

REWRITE_PROMPT = (
    "Reword the assistant reply below. Keep its meaning, stance, facts, tone and level of "
    "politeness exactly; change the wording and sentence structure. Do not add or remove "
    "content, do not answer differently, and do not comment on the task. Reply with the "
    "reworded text only.\n\nReply to reword:\n{text}"
)
"""Instruction given to an LM rewriter (written for this project)."""


def lm_rewrite_pairs(complete: Callable[[list[str]], list[str | None]], pairs: pl.DataFrame,
                     min_chars: int = 2) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rewrite the last assistant turn of both sides of each pair with an LM.

    ``pairs``: [pair_id, chosen, rejected]. Returns (rewritten pairs
    [pair_id, chosen, rejected], failures [pair_id, side, reason]). A pair with
    a side the LM failed to rewrite (no reply, or shorter than ``min_chars``)
    is left out of the rewritten table and listed in failures: counted, never
    silently kept in its original wording.
    """
    items = []
    for pid, c, r in pairs.select("pair_id", "chosen", "rejected").iter_rows():
        for side, text in (("chosen", c), ("rejected", r)):
            prefix, last = split_transcript(text, row=f"pair_id {pid!r} ({side})",
                                            keep_marker=False)
            items.append((str(pid), side, prefix, last))
    replies = complete([REWRITE_PROMPT.format(text=it[3].strip()) for it in items])
    out: dict[str, dict] = {}
    failures = []
    for (pid, side, prefix, _), reply in zip(items, replies, strict=True):
        reply = (reply or "").strip()
        if len(reply) < min_chars:
            failures.append({"pair_id": pid, "side": side,
                             "reason": "no reply" if not reply else "reply too short"})
            continue
        # split_transcript leaves the turn separator at the end of the prefix
        out.setdefault(pid, {})[side] = f"{prefix}Assistant: {reply}"
    bad = {f["pair_id"] for f in failures}
    rows = [{"pair_id": pid, **sides} for pid, sides in out.items() if pid not in bad]
    if failures:
        log.warning("rewriter failed on %d texts (%d pairs left out)", len(failures), len(bad))
    return (pl.DataFrame(rows, schema={"pair_id": pl.String, "chosen": pl.String,
                                       "rejected": pl.String}),
            pl.DataFrame(failures, schema={"pair_id": pl.String, "side": pl.String,
                                           "reason": pl.String}))


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
                max_length: int = 512) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states: [n_texts, d_model] float32.

    Works for encoders (AutoModel) and decoders alike; padding is masked out of
    the mean. Batches are length-sorted and the input order restored.
    """
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        out[idx] = pooled.cpu().numpy()
    return out


def rewrite_similarity(model, tokenizer, original: pl.DataFrame, rewritten: pl.DataFrame,
                       batch_size: int = 32) -> pl.DataFrame:
    """Cosine similarity of each rewritten last turn to its original:
    [pair_id, sim_chosen, sim_rejected]."""
    orig = original.with_columns(pl.col("pair_id").cast(pl.String))
    rew = rewritten.with_columns(pl.col("pair_id").cast(pl.String))
    joined = rew.join(orig, on="pair_id", how="left", suffix="_orig", maintain_order="left")
    cols = {}
    for side in ("chosen", "rejected"):
        a = [split_transcript(t, keep_marker=False)[1] for t in joined[f"{side}_orig"]]
        b = [split_transcript(t, keep_marker=False)[1] for t in joined[side]]
        ea = embed_texts(model, tokenizer, a, batch_size)
        eb = embed_texts(model, tokenizer, b, batch_size)
        cols[f"sim_{side}"] = np.einsum("ij,ij->i", ea, eb)
    return pl.DataFrame({"pair_id": joined["pair_id"], **cols})
