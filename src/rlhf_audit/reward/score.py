"""SEAL's reward scoring (Revel et al., 2024; PAPERS.md C): the code of rule score_rewards.

Each transcript is split at its final Assistant turn and fed to a sequence-
classification reward model as the text pair (prefix, last turn); the reward
is its single logit, computed in float32 (SEAL's precision, whatever the
workflow-wide dtype says for LMs) and, by default, on untruncated inputs. The
score table also says how long each input was and whether it was cut.

Kept apart from the analysis (:mod:`rlhf_audit.reward.analysis`) so that an
edit there does not rerun GPU scoring (a rule's cache key holds the code it
imports).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from rlhf_audit.formats import HH_ASSISTANT_TURN, TranscriptError, split_last_turn  # noqa: F401
from rlhf_audit.progress import progress

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class ScoringSettings:
    """How transcripts are fed to a reward model."""

    batch_size: int = 32
    """Texts per forward pass (batches are formed after sorting by length)."""
    max_length: int | None = None
    """Longest input in tokens, special tokens included; None truncates nothing (as SEAL
    scored: DeBERTa-v3's relative positions take any length)."""
    marker: str = HH_ASSISTANT_TURN
    """The final turn starts at the last occurrence of this string (its leading whitespace,
    hh-rlhf's blank line between turns, stays with the prefix); see
    :func:`rlhf_audit.formats.split_last_turn`."""
    keep_marker: bool = True
    """Keep the marker at the start of the last turn, as SEAL's scoring code did."""
    dtype: str = "float32"
    """Dtype the reward model scores in. SEAL scored in float32; bf16 quantises logits to
    about 0.03 near |r| = 4, which manufactures ties and flips close pairs."""


# =========================================================================== scoring


def split_transcript(text: str, *, row: object = None, marker: str = HH_ASSISTANT_TURN,
                     keep_marker: bool = True) -> tuple[str, str]:
    """(prefix, last_turn) of a transcript, split at its final Assistant turn by the
    project's one splitter (:func:`rlhf_audit.formats.split_last_turn`).

    With ``keep_marker`` (SEAL's choice) the last turn starts with the ``Assistant:``
    label, e.g. ``("\\n\\nHuman: hi\\n\\n", "Assistant: hello")``; without it the
    bare reply. ``row`` names the transcript in the :class:`TranscriptError` raised when
    it does not end with an Assistant turn.
    """
    prefix, label, reply = split_last_turn(text, where=_row_name(row), marker=marker)
    return prefix, (label + reply if keep_marker else reply.lstrip())


def _row_name(row) -> str:
    return "transcript" if row is None else f"row {row}"


def _plain_backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer",
                                                                      None)
    if backend is None or not hasattr(backend, "post_process"):
        raise TypeError(f"{type(tokenizer).__name__} has no Rust `tokenizers` backend; score_texts "
                        "needs a fast tokenizer (the default for every model in transformers 5)")
    from tokenizers import Tokenizer

    # A private copy, so the caller's truncation/padding settings neither apply nor change.
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _encode_pairs(tokenizer, prefixes: Sequence[str], responses: Sequence[str],
                  max_length: int | None):
    """Pair encodings, their untruncated lengths ``[n]`` and whether each was cut ``[n]``."""
    plain = _plain_backend(tokenizer)
    n_special = plain.num_special_tokens_to_add(True)
    budget = None if max_length is None else max_length - n_special
    if budget is not None and budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room for text after {n_special} "
                         "special tokens")
    enc_p = plain.encode_batch(list(prefixes), add_special_tokens=False)
    enc_r = plain.encode_batch(list(responses), add_special_tokens=False)
    out = []
    n_tokens = np.empty(len(enc_p), dtype=np.int64)
    cut = np.zeros(len(enc_p), dtype=bool)
    for i, (ep, er) in enumerate(zip(enc_p, enc_r, strict=True)):
        lp, lr = len(ep.ids), len(er.ids)
        n_tokens[i] = lp + lr + n_special
        if budget is not None and lp + lr > budget:
            cut[i] = True
            # Keep the whole response when it fits and cut the oldest context first; a response
            # too long for that keeps its start and the last quarter-budget of context.
            keep_p = min(lp, max(budget - lr, budget // 4))
            keep_r = min(lr, budget - keep_p)
            ep.truncate(keep_p, 0, "left")
            er.truncate(keep_r, 0, "right")
        out.append(plain.post_process(ep, er, add_special_tokens=True))
    if cut.any():
        log.warning("%d of %d inputs longer than %d tokens: context cut from the left (longest "
                    "%d tokens)", int(cut.sum()), len(out), max_length, int(n_tokens.max()))
    return out, n_tokens, cut


@dataclass(frozen=True)
class Scores:
    """Rewards of text pairs and what the tokenizer did to them, all ``[n_texts]``."""

    reward: np.ndarray
    """float64 rewards (the single logit, computed in the model's dtype)."""
    n_tokens: np.ndarray
    """int64 length of the full (prefix, response) encoding, special tokens included."""
    truncated: np.ndarray
    """bool, True where the input was longer than max_length and cut."""


def score_texts(model, tokenizer, prefixes: Sequence[str], responses: Sequence[str], *,
                batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
    """Rewards of (prefix, response) text pairs: the single logit of a sequence classifier.

    Each input is the tokenizer's pair encoding of (prefix, response), as SEAL
    fed its reward models. With ``max_length`` None nothing is cut (SEAL's
    choice); inputs longer than ``max_length`` tokens lose the *start of the
    prefix* (the oldest turns), because the final response and the turn it
    answers matter most; only a response that cannot fit with a quarter of the
    budget of context is cut itself (from its end). Batches are formed after
    sorting by length and right-padded (DeBERTa reads position 0, Llama the
    last non-pad token); output order is the input order.

    Returns float64 ``[n_texts]`` (:func:`score_texts_detailed` also says what was cut).
    """
    return score_texts_detailed(model, tokenizer, prefixes, responses, batch_size=batch_size,
                                max_length=max_length).reward


def score_texts_detailed(model, tokenizer, prefixes: Sequence[str], responses: Sequence[str], *,
                         batch_size: int = 32, max_length: int | None = None) -> Scores:
    """:func:`score_texts` with per-text token counts and truncation flags."""
    import torch

    if len(prefixes) != len(responses):
        raise ValueError(f"{len(prefixes)} prefixes but {len(responses)} responses")
    n = len(prefixes)
    if n == 0:
        return Scores(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool))
    pad_id = getattr(model.config, "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("neither the model config nor the tokenizer has a pad token id; set "
                         "model.config.pad_token_id (rlhf_audit.lm.loader.load_reward_model does)")
    encs, n_tokens, cut = _encode_pairs(tokenizer, prefixes, responses, max_length)
    use_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    order = sorted(range(n), key=lambda i: len(encs[i].ids), reverse=True)
    device = next(model.parameters()).device
    out = np.empty(n, dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in progress(range(0, n, batch_size), desc="reward scores", unit="batch"):
                idx = order[s:s + batch_size]
                # Right padding to the longest sequence of this batch only.
                width = max(len(encs[i].ids) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                types = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    e = encs[i]
                    ids[row, :len(e.ids)] = torch.tensor(e.ids)
                    mask[row, :len(e.ids)] = 1
                    types[row, :len(e.ids)] = torch.tensor(e.type_ids)
                kw = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                if use_types:
                    kw["token_type_ids"] = types.to(device)
                logits = model(**kw).logits
                if logits.shape[-1] != 1:
                    raise ValueError(f"the reward model outputs {logits.shape[-1]} logits per "
                                     "text; it must have num_labels=1")
                out[idx] = logits[:, 0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return Scores(out, n_tokens, cut)


def ensure_scoring_dtype(model, dtype: str = "float32"):
    """The reward model in ``dtype`` (cast in place when a loader gave it another one).

    The workflow's ``dtype: auto`` means bf16 on a GPU, right for the LMs but not
    for reward models, whose logits SEAL compared in float32.
    """
    import torch

    want = getattr(torch, dtype, None)
    if not isinstance(want, torch.dtype) or not want.is_floating_point:
        raise ValueError("reward scoring dtype must be float32, bfloat16 or float16, got "
                         f"{dtype!r}")
    have = next(model.parameters()).dtype
    if have != want:
        if torch.finfo(have).bits < torch.finfo(want).bits:
            # Casting up cannot restore weights already rounded: load in `want` instead.
            log.warning("reward model was loaded in %s; casting to %s for scoring, but its "
                        "weights keep %s rounding (load it with load_scoring_model)", have,
                        want, have)
        else:
            log.info("reward model loaded in %s; scoring in %s", have, want)
        model.to(want)
    return model


def load_scoring_model(spec, device: str = "auto",
                       settings: ScoringSettings = ScoringSettings()):
    """(reward model, tokenizer) loaded in ``settings.dtype`` (float32 unless configured
    otherwise), whatever the workflow-wide ``dtype`` says for LMs."""
    from rlhf_audit.lm.loader import load_reward_model

    return load_reward_model(spec, device=device, dtype=settings.dtype)


def score_pairs(model, tokenizer, pairs: pl.DataFrame,
                settings: ScoringSettings = ScoringSettings()) -> pl.DataFrame:
    """Rewards of both sides of every pair.

    DataFrame[pair_id, r_chosen, r_rejected, n_tokens_chosen, n_tokens_rejected,
    truncated_chosen, truncated_rejected]. ``pairs`` has pair_id, chosen,
    rejected (full transcripts); both sides are split with
    :func:`split_transcript` and scored in one length-sorted pass, in
    ``settings.dtype`` (the model is cast if it was loaded in another dtype).
    """
    ensure_scoring_dtype(model, settings.dtype)
    prefixes, responses = [], []
    for pid, c, r in pairs.select("pair_id", "chosen", "rejected").iter_rows():
        for side, text in (("chosen", c), ("rejected", r)):
            p, t = split_transcript(text, row=f"pair_id {pid!r} ({side})", marker=settings.marker,
                                    keep_marker=settings.keep_marker)
            prefixes.append(p)
            responses.append(t)
    sc = score_texts_detailed(model, tokenizer, prefixes, responses,
                              batch_size=settings.batch_size, max_length=settings.max_length)
    return pl.DataFrame({"pair_id": pairs["pair_id"].cast(pl.String),
                         "r_chosen": sc.reward[0::2], "r_rejected": sc.reward[1::2],
                         "n_tokens_chosen": sc.n_tokens[0::2],
                         "n_tokens_rejected": sc.n_tokens[1::2],
                         "truncated_chosen": sc.truncated[0::2],
                         "truncated_rejected": sc.truncated[1::2]})


def truncation_summary(scores: pl.DataFrame) -> dict[str, int]:
    """Texts a score table (:func:`score_pairs`) cut, of how many, and the longest input."""
    if "truncated_chosen" not in scores.columns:
        raise ValueError("score table lacks truncated_chosen/truncated_rejected; rescore it "
                         "with rlhf_audit.reward.score.score_pairs")
    n_cut = int(scores["truncated_chosen"].sum() + scores["truncated_rejected"].sum())
    longest = max(int(scores["n_tokens_chosen"].max() or 0),
                  int(scores["n_tokens_rejected"].max() or 0))
    return {"n_texts": 2 * scores.height, "n_truncated": n_cut, "max_tokens": longest}
