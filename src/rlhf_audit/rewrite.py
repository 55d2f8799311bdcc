"""Meaning-preserving rewrites and their semantic similarity (SEAL's robustness study).

Two rewriters: an LM (any ``complete`` callable from
:func:`rlhf_audit.lm.complete.complete_from_config`: the project's one
chat-completions client, or a local HF instruct model) asked to reword the
*whole transcript*, as SEAL did (temperature 0.1; a reply identical to the
original, or one that lost the Human/Assistant turns, is rejected and asked
again, then counted as a failure), and, for the organism, the generator's own
re-rendering (:func:`rlhf_audit.organism.hh.rerender_pair`).

Similarity is the cosine of embeddings of the whole original and rewritten
transcripts, pooled the way the embedder was trained to be read: the
sentence-transformers pooling config when the model ships one
(``modules.json`` -> ``1_Pooling/config.json``), CLS for BGE-M3-like models,
mean pooling otherwise (read here, without sentence-transformers).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from rlhf_audit.formats import TranscriptError, split_last_turn

log = logging.getLogger(__name__)

REWRITE_PROMPT = (
    "Below is a conversation from a dataset used to train AI assistants. Rewrite the whole "
    "conversation with different wording: change vocabulary and sentence structure only. "
    "Every turn must keep exactly its meaning, intent, tone and strength, including anything "
    "rude, unsafe or wrong (this is for research on reward models). Keep every turn, in order, "
    "each starting with its original label 'Human:' or 'Assistant:'; never rename, merge or "
    "drop those labels. Reply with the rewritten conversation only.\n\n"
    "Conversation:\n{text}\n\nRewritten conversation:"
)
"""Instruction given to an LM rewriter (written for this project)."""

REWRITE_TEMPERATURE = 0.1
"""SEAL's rewriting temperature: near-deterministic, but a retry can differ."""

REJECTION_REASONS: dict[str, str] = {
    "no_reply": "the backend returned no text",
    "unchanged": "the rewrite is identical to the original (whitespace aside)",
    "roles_changed": ("the rewrite does not start with 'Human:', lost an 'Assistant:' turn, or "
                      "does not end with one opened by a blank line ('\\n\\nAssistant:')"),
    "turns_changed": "the rewrite has a different number of Human/Assistant turns",
}
"""Why a rewrite was rejected (the failures table's ``reason``)."""

_TURN = re.compile(r"(?:^|\n)\s*(Human|Assistant):")


def _turns(text: str) -> list[str]:
    return _TURN.findall(text)


def select_rewrite_pairs(pair_ids: Sequence[str], share: float, seed: int = 0) -> list[str]:
    """A reproducible random ``share`` of pair ids to rewrite (at least one when share > 0).

    The draw depends on the set of ids and the seed, not on their order.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"rewrite share must be in [0, 1], got {share}")
    ids = sorted({str(p) for p in pair_ids})
    k = min(len(ids), max(1, round(share * len(ids)))) if share > 0 else 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=k, replace=False) if k else np.zeros(0, int)
    return [ids[i] for i in sorted(pick)]


def check_rewrite(original: str, reply) -> str | None:
    """None if ``reply`` is an acceptable rewrite of ``original``, else a REJECTION_REASONS key."""
    if not isinstance(reply, str) or not reply.strip():
        return "no_reply"
    if " ".join(reply.split()) == " ".join(original.split()):
        return "unchanged"
    if not reply.strip().startswith("Human:") or "Assistant:" not in reply:
        return "roles_changed"
    if _turns(reply) != _turns(original):
        return "turns_changed"
    # The rewrite is stored with the original's leading whitespace and must split where
    # the reward scorer splits (formats.split_last_turn): at a final '\n\nAssistant:' turn.
    lead = original[:len(original) - len(original.lstrip())]
    try:
        split_last_turn(lead + reply.strip())
    except TranscriptError:
        return "roles_changed"
    return None


def lm_rewrite_pairs(complete: Callable[[list[str]], list], pairs: pl.DataFrame, *,
                     max_attempts: int = 3) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rewrite both whole transcripts of each pair with an LM.

    ``pairs``: [pair_id, chosen, rejected]. Each text is asked up to
    ``max_attempts`` times; a reply :func:`check_rewrite` rejects is asked
    again. Returns (rewritten pairs [pair_id, chosen, rejected], rejections
    [pair_id, side, attempt, reason, final]): one row per rejected reply, with
    final = True where the text failed for good. A pair with a side that
    failed is left out of the rewritten table: counted, never silently kept in
    its original wording. The rewrite keeps the original's leading whitespace
    (hh-rlhf transcripts start with a blank line).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    items = []
    for pid, c, r in pairs.select("pair_id", "chosen", "rejected").iter_rows():
        for side, text in (("chosen", c), ("rejected", r)):
            items.append((str(pid), side, text))
    done: dict[int, str] = {}
    rejections = []
    pending = list(range(len(items)))
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        replies = list(complete([REWRITE_PROMPT.format(text=items[i][2].strip())
                                 for i in pending]))
        if len(replies) != len(pending):
            raise RuntimeError(f"the rewriting backend returned {len(replies)} replies for "
                               f"{len(pending)} prompts")
        still = []
        for i, reply in zip(pending, replies, strict=True):
            pid, side, text = items[i]
            why = check_rewrite(text, reply)
            if why is None:
                lead = text[:len(text) - len(text.lstrip())]
                done[i] = lead + reply.strip()
                continue
            rejections.append({"pair_id": pid, "side": side, "attempt": attempt, "reason": why,
                               "final": attempt == max_attempts})
            still.append(i)
        pending = still
    out: dict[str, dict] = {}
    for i, text in done.items():
        pid, side, _ = items[i]
        out.setdefault(pid, {})[side] = text
    bad = {items[i][0] for i in pending}
    order = list(dict.fromkeys(it[0] for it in items))
    rows = [{"pair_id": pid, **out[pid]} for pid in order if pid not in bad]
    rej = pl.DataFrame(rejections, schema={"pair_id": pl.String, "side": pl.String,
                                           "attempt": pl.Int16, "reason": pl.String,
                                           "final": pl.Boolean})
    if rej.height:
        counts = rej.group_by("reason").len().sort("reason").rows()
        log.warning("rewriter: %d replies rejected (%s); %d texts failed for good, %d of %d "
                    "pairs left out", rej.height, ", ".join(f"{k} {v}" for k, v in counts),
                    len(pending), len(bad), len(order))
    return (pl.DataFrame(rows, schema={"pair_id": pl.String, "chosen": pl.String,
                                       "rejected": pl.String}), rej)


def rewrite_summary(rejections: pl.DataFrame, n_selected: int, n_rewritten: int) -> dict:
    """Counts for provenance: pairs selected and rewritten, texts failed, rejections by reason."""
    out = {"n_selected": n_selected, "n_rewritten": n_rewritten,
           "n_failed_texts": int(rejections["final"].sum()) if rejections.height else 0,
           "n_rejected_replies": rejections.height}
    for reason in REJECTION_REASONS:
        out[f"n_rejected_{reason}"] = int((rejections["reason"] == reason).sum()) \
            if rejections.height else 0
    return out


# --------------------------------------------------------------------------- embeddings

POOLING_MODES = ("cls", "mean", "max", "lasttoken")


def _embedder_file(spec: dict, name: str) -> Path | None:
    """A file of the embedder's repository, from its directory or the local hub cache."""
    if spec.get("path"):
        p = Path(spec["path"]) / name
        return p if p.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    got = try_to_load_from_cache(spec["hf"], name, revision=spec.get("revision"))
    return Path(got) if isinstance(got, str) else None


def embedder_pooling(spec: dict, config=None) -> tuple[str, int | None, str]:
    """(pooling mode, max_seq_length or None, where the choice came from) for an embedder.

    Order: the sentence-transformers files the model ships (``modules.json``
    naming a Pooling module, usually ``1_Pooling/config.json``; max length
    from ``sentence_bert_config.json``); else CLS for BGE-M3-like models (a
    'bge' name, or an XLM-RoBERTa config with 8194 positions, BGE-M3's), since
    BGE models are read at their [CLS] token; else mean pooling.
    """
    max_len = None
    sbert = _embedder_file(spec, "sentence_bert_config.json")
    if sbert is not None:
        max_len = json.loads(sbert.read_text()).get("max_seq_length")
    pool_dir = "1_Pooling"
    modules = _embedder_file(spec, "modules.json")
    if modules is not None:
        for m in json.loads(modules.read_text()):
            if str(m.get("type", "")).endswith("Pooling"):
                pool_dir = m.get("path", pool_dir)
    cfg = _embedder_file(spec, f"{pool_dir}/config.json")
    if cfg is not None:
        c = json.loads(cfg.read_text())
        mode = c.get("pooling_mode")
        if mode is None:
            for key, name in (("pooling_mode_cls_token", "cls"),
                              ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max"),
                              ("pooling_mode_lasttoken", "lasttoken")):
                if c.get(key):
                    mode = name
                    break
        if mode not in POOLING_MODES:
            raise ValueError(f"{cfg}: pooling {mode!r} is not supported; use one of "
                             f"{POOLING_MODES} (set reward.rewrite.pooling explicitly)")
        return mode, max_len, f"sentence-transformers config {pool_dir}/config.json"
    name = str(spec.get("hf") or spec.get("path") or "").lower()
    model_type = getattr(config, "model_type", "")
    if "bge" in name or (model_type == "xlm-roberta" and
                         getattr(config, "max_position_embeddings", 0) == 8194):
        return "cls", max_len, "BGE-M3-like model: CLS"
    return "mean", max_len, "default: mean over tokens"


def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
                max_length: int | None = None, pooling: str = "mean") -> np.ndarray:
    """Pooled, L2-normalised last hidden states: [n_texts, d_model] float32.

    ``pooling`` is one of POOLING_MODES (padding is masked out of mean and
    max; lasttoken reads the last non-pad token). Works for encoders
    (AutoModel) and decoders alike. ``max_length`` None reads the model's own
    limit. Batches are length-sorted and the input order restored.
    """
    import torch  # here, not at module level: the rewrite rule's selection never embeds

    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    limit = max_length or _model_limit(model, tokenizer)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=limit is not None,
                            max_length=limit, return_tensors="pt").to(device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            elif pooling == "max":
                pooled = hidden.masked_fill(mask == 0, float("-inf")).max(1).values
            else:
                last = enc["attention_mask"].sum(1) - 1
                pooled = hidden[torch.arange(len(idx), device=device), last]
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.cpu().numpy()
    return out


def _model_limit(model, tokenizer) -> int | None:
    lim = getattr(tokenizer, "model_max_length", None)
    if lim is not None and lim < 1_000_000:
        return int(lim)
    pos = getattr(model.config, "max_position_embeddings", None)
    return int(pos) if pos else None


def rewrite_similarity(model, tokenizer, original: pl.DataFrame, rewritten: pl.DataFrame,
                       batch_size: int = 32, pooling: str = "mean",
                       max_length: int | None = None) -> pl.DataFrame:
    """Cosine similarity of each whole rewritten transcript to its original:
    [pair_id, sim_chosen, sim_rejected, cut_chosen, cut_rejected] (cut: the
    embedder read only the first ``max_length`` tokens of one of the two)."""
    orig = original.with_columns(pl.col("pair_id").cast(pl.String))
    rew = rewritten.with_columns(pl.col("pair_id").cast(pl.String))
    joined = rew.join(orig, on="pair_id", how="left", suffix="_orig", maintain_order="left")
    missing = joined.filter(pl.col("chosen_orig").is_null())["pair_id"].to_list()
    if missing:
        raise ValueError(f"rewritten pairs {missing[:5]} are not in the original pairs")
    if joined.height == 0:  # every rewrite failed: nothing to compare (counted upstream)
        log.warning("similarity: no rewritten pairs to compare")
        return pl.DataFrame(schema={"pair_id": pl.String, "sim_chosen": pl.Float64,
                                    "sim_rejected": pl.Float64, "cut_chosen": pl.Boolean,
                                    "cut_rejected": pl.Boolean})
    limit = max_length or _model_limit(model, tokenizer)
    cols = {}
    for side in ("chosen", "rejected"):
        a, b = joined[f"{side}_orig"].to_list(), joined[side].to_list()
        ea = embed_texts(model, tokenizer, a, batch_size, limit, pooling)
        eb = embed_texts(model, tokenizer, b, batch_size, limit, pooling)
        cols[f"sim_{side}"] = np.einsum("ij,ij->i", ea, eb).astype(np.float64)
        if limit is not None:
            la = [len(x) > limit for x in tokenizer(a)["input_ids"]]
            lb = [len(x) > limit for x in tokenizer(b)["input_ids"]]
            cols[f"cut_{side}"] = np.logical_or(la, lb)
        else:
            cols[f"cut_{side}"] = np.zeros(len(a), bool)
    n_cut = int(cols["cut_chosen"].sum() + cols["cut_rejected"].sum())
    if n_cut:
        log.warning("similarity: %d text pairs longer than the embedder's %d tokens were cut",
                    n_cut, limit)
    return pl.DataFrame({"pair_id": joined["pair_id"], **cols})


def load_embedder(spec: dict, device: str = "auto", pooling: str = "auto"):
    """(model, tokenizer, pooling, max_length, source of the pooling choice) for an embedder
    spec, in float32, through transformers' AutoModel (safetensors only)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from rlhf_audit.lm.loader import ModelSpec, load_tokenizer, resolve_device

    ms = ModelSpec.from_config({k: v for k, v in spec.items() if k in ("hf", "revision", "path")},
                               key="reward.rewrite.embedder")
    kw = {"trust_remote_code": False}
    if ms.revision:
        kw["revision"] = ms.revision
    config = AutoConfig.from_pretrained(ms.source, **kw)
    mode, max_len, source = embedder_pooling(ms.to_dict(), config)
    if pooling != "auto":
        mode, source = pooling, "reward.rewrite.pooling"
    model = AutoModel.from_pretrained(ms.source, use_safetensors=True, dtype=torch.float32,
                                      **kw).to(resolve_device(device)).eval()
    log.info("embedder %s: %s pooling (%s), max length %s", ms.label, mode, source, max_len)
    return model, load_tokenizer(ms), mode, max_len, source
