"""The GPU extraction (rule extract_activations): tokenise a slice of the prompts (statement
spans located in the chat template), run the forward pass in length-sorted batches
stopped after the deepest layer asked for, and stream the requested rows into one Parquet
shard that appears at its final path only when complete. Layout and layer numbering: the
package docstring (:mod:`rlhf_audit.extract`)."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlhf_audit.extract.settings import (
    EXTRACT_META_KEY,
    POSITIONS,
    ExtractSettings,
    resolve_layers,
)
from rlhf_audit.io import PROVENANCE_KEY, atomic_path
from rlhf_audit.lm.hooks import decoder_layers
from rlhf_audit.progress import progress

log = logging.getLogger(__name__)

_STORAGE_DTYPES = {
    "float16": (torch.float16, pa.float16()),
    "float32": (torch.float32, pa.float32()),
}
_COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

T = TypeVar("T")


# --------------------------------------------------------------------------- model plumbing


class _StopForward(Exception):
    """Raised by the hook on the deepest needed block so later blocks and the head never run."""


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _COMPUTE_DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error worth retrying with a smaller batch."""
    return isinstance(exc, torch.OutOfMemoryError)


def run_with_backoff(
    n_items: int,
    batch_size: int,
    run_batch: Callable[[int, int], T],
    *,
    oom: Callable[[BaseException], bool] = is_oom,
) -> Iterator[tuple[int, int, T]]:
    """Yield ``(start, stop, run_batch(start, stop))`` over ``range(n_items)`` in batches.

    When ``run_batch`` raises an error that ``oom`` recognises, the batch size is
    halved and the same items retried; the smaller size is kept for the rest. An
    OOM at batch size 1 is re-raised. ``run_batch`` must have no side effects
    before it returns (callers write results only after the yield).
    """
    start = 0
    while start < n_items:
        stop = min(start + batch_size, n_items)
        try:
            result = run_batch(start, stop)
        except Exception as exc:
            if not oom(exc) or batch_size == 1:
                raise
            failed = stop - start
            batch_size = max(1, failed // 2)
            log.warning("out of memory at batch size %d; retrying with %d", failed, batch_size)
            del exc
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        yield start, stop, result
        start = stop


def estimate_batch_size(model: torch.nn.Module, max_tokens: int, n_kept_layers: int) -> int:
    """A first batch size for prompts of ``max_tokens`` tokens.

    CUDA: a share of the free memory over a per-sequence estimate (activations of
    one block, MLP intermediates, attention scores, the kept rows); too large is
    fixed by halving on OOM. CPU: about 4096 tokens per batch, where throughput
    no longer grows with batch size.
    """
    device = _model_device(model)
    if device.type != "cuda":
        return int(max(1, min(64, 4096 // max(1, max_tokens))))
    cfg = model.config
    d = int(getattr(cfg, "hidden_size", 4096))
    inter = int(getattr(cfg, "intermediate_size", 4 * d) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 32))
    free, _ = torch.cuda.mem_get_info(device)
    per_token = 2 * (6 * d + 3 * inter + heads * max_tokens) + 4 * d * (n_kept_layers + 2)
    per_seq = max_tokens * per_token
    return int(max(1, min(512, 0.5 * free // per_seq)))


# --------------------------------------------------------------------------- extraction


@dataclass
class _Plan:
    layers: list[int]
    token_layers: list[int]
    kinds: list[str]  # subset of ("last", "mean") written for ``layers``
    deepest: int
    storage: torch.dtype
    arrow_value: pa.DataType


@dataclass
class _BatchState:
    """Per-batch tensors the hooks read, and what they gathered."""

    last_pos: torch.Tensor | None = None  # [B] long: last pooled token (padded coordinates)
    content: torch.Tensor | None = None  # [B, T] bool: the pooled tokens (see pool_over)
    n_content: torch.Tensor | None = None  # [B] float
    pooled: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> [kinds] x [B, D]
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [n_tok, D]


def _validate_prompts(prompts: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in ("id", "text") if c not in prompts.columns]
    if missing:
        raise ValueError(
            f"prompts frame lacks column(s) {missing}; it needs id and text "
            f"(label, issue optional); has {prompts.columns}"
        )
    df = prompts.select(
        pl.col("id").cast(pl.String),
        pl.col("text"),
        (pl.col("label") if "label" in prompts.columns else pl.lit(None))
        .cast(pl.String)
        .alias("label"),
        (pl.col("issue") if "issue" in prompts.columns else pl.lit(None))
        .cast(pl.String)
        .alias("issue"),
    )
    if df.height == 0:
        raise ValueError("prompts frame is empty: a shard needs at least one prompt")
    null_id = df.with_row_index("row").filter(pl.col("id").is_null())
    if null_id.height:
        raise ValueError(f"prompts rows {null_id['row'].to_list()[:10]} have a null id")
    dup = df.filter(pl.col("id").is_duplicated())["id"].unique().to_list()
    if dup:
        raise ValueError(f"prompt ids are not unique: {sorted(dup)[:10]}; ids key the activations")
    bad = df.with_row_index("row").filter(
        pl.col("text").is_null() | (pl.col("text").cast(pl.String).str.strip_chars() == "")
    )
    if bad.height:
        where = list(zip(bad["row"], bad["id"], strict=True))[:10]
        raise ValueError(f"prompts with empty text (row, id): {where}")
    return df.with_columns(pl.col("text").cast(pl.String))


_MARKER = "\ue000rlhf-audit-statement\ue001"
"""A placeholder the chat template renders in place of the statement (private-use
characters, which no real prompt contains), to find where the user's text goes."""


def _render(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def locate_statement(tokenizer, text: str, rendered: str) -> tuple[int, int] | None:
    """Character range ``[start, stop)`` of ``text`` inside its chat-template rendering.

    The template is rendered once more with a placeholder instead of the text; the
    statement starts where the placeholder does. A template that trims the content is
    allowed (the stripped text is looked for too). If the placeholder does not help
    (the template inspects the content), a unique occurrence of the text is used.
    Returns None when the text cannot be found unambiguously.
    """
    candidates = [c for c in dict.fromkeys((text, text.strip())) if c]
    marked = _render(tokenizer, _MARKER)
    if marked.count(_MARKER) == 1:
        prefix = marked[: marked.index(_MARKER)]
        for c in candidates:
            if rendered.startswith(prefix + c):
                return len(prefix), len(prefix) + len(c)
    for c in candidates:
        if rendered.count(c) == 1:
            i = rendered.index(c)
            return i, i + len(c)
    return None


def _span_from_offsets(
    offsets: Sequence[tuple[int, int]], start: int, stop: int
) -> tuple[int, int]:
    """Token range ``[a, b)`` of the tokens whose characters overlap ``[start, stop)``.

    Special tokens the tokenizer adds (BOS) have empty offsets and never overlap.
    """
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < stop and e > start]
    if not inside:
        return -1, -1
    return inside[0], inside[-1] + 1


def sequence_hash(tokens: Sequence[int] | np.ndarray) -> int:
    """A 64-bit fingerprint of a prompt's whole token-id sequence as the model read it
    (template and BOS included): two rows with equal hashes come from identical inputs.
    The diffing study checks it before it pairs two models' tokens."""
    data = np.ascontiguousarray(np.asarray(tokens, dtype="<i4")).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def tokenize_with_spans(
    tokenizer,
    texts: Sequence[str],
    settings: ExtractSettings,
    ids: Sequence[str] | None = None,
    *,
    chunk: int = 512,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Token ids per prompt as the model will see them, and the token span that is pooled.

    Returns ``(tokens, spans)``: one int32 array ``[n_tokens]`` per prompt (chat template,
    BOS, length check applied) and ``spans`` int64 ``[n_prompts, 2]``, the half-open
    range of token indices whose rows are stored. With ``pool_over="content"`` that is
    the statement itself, found from the fast tokenizer's offset mapping (with or
    without a template); with ``"all"`` it runs from the first non-BOS token to the end.
    Texts are tokenised ``chunk`` at a time so the tokenizer's per-token objects never
    exist for a whole shard at once. Raises ValueError naming the prompt whose
    statement cannot be located.
    """
    if settings.chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "chat_template is true but the tokenizer has no chat template; set "
            "chat_template: false for base models"
        )
    content = settings.pool_over == "content"
    if content and not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"pool_over: content locates the statement with a fast tokenizer's offset mapping, "
            f"but {type(tokenizer).__name__} is not a fast tokenizer; install the model's "
            "tokenizer.json (a fast tokenizer) or set extract.pool_over: all"
        )
    bos = tokenizer.bos_token_id
    out: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    for s in range(0, len(texts), chunk):
        part = list(texts[s : s + chunk])
        rendered = [_render(tokenizer, t) for t in part] if settings.chat_template else part
        enc = tokenizer(
            rendered,
            add_special_tokens=not settings.chat_template,
            return_attention_mask=False,
            return_offsets_mapping=content,
        )
        for j, toks in enumerate(enc["input_ids"]):
            arr = np.asarray(toks, dtype=np.int32)
            out.append(arr)
            if not content:
                first = 0
                while first < len(arr) - 1 and bos is not None and arr[first] == bos:
                    first += 1
                spans.append((first, len(arr)))
                continue
            name = ids[s + j] if ids is not None else s + j
            where = (
                locate_statement(tokenizer, part[j], rendered[j])
                if settings.chat_template
                else (0, len(part[j]))
            )
            span = (-1, -1)
            if where is not None:
                span = _span_from_offsets(enc["offset_mapping"][j], *where)
            if span[0] < 0:
                what = (
                    f"its chat-template rendering {rendered[j][:120]!r}"
                    if settings.chat_template
                    else "its tokenisation"
                )
                raise ValueError(
                    f"prompt {name!r}: its text cannot be located among the tokens of {what}"
                    "; the template rewrites the user's text or the tokenizer's offsets are "
                    "wrong. Fix the template, or set extract.pool_over: all to pool every token "
                    "(template included)"
                )
            spans.append(span)
    too_long = [i for i, t in enumerate(out) if len(t) > settings.max_length]
    if too_long:
        names = [ids[i] if ids is not None else i for i in too_long[:10]]
        if not settings.truncate:
            raise ValueError(
                f"{len(too_long)} prompt(s) exceed max_length={settings.max_length} tokens "
                f"(e.g. {names}); raise max_length or set truncate: true"
            )
        log.warning(
            "truncated %d prompt(s) to %d tokens (e.g. %s)",
            len(too_long),
            settings.max_length,
            names,
        )
        for i in too_long:
            out[i] = out[i][: settings.max_length].copy()
            a, b = spans[i]
            if a >= settings.max_length:
                name = ids[i] if ids is not None else i
                raise ValueError(
                    f"prompt {name!r}: its statement starts at token {a}, beyond "
                    f"max_length={settings.max_length} once the template is added; raise "
                    "max_length"
                )
            spans[i] = (a, min(b, settings.max_length))
    return out, np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def tokenize_prompts(
    tokenizer,
    texts: Sequence[str],
    settings: ExtractSettings,
    ids: Sequence[str] | None = None,
    *,
    chunk: int = 512,
) -> list[np.ndarray]:
    """Token ids per prompt as the model will see them (chat template, BOS, length check).

    Returns one int32 array ``[n_tokens]`` per prompt; :func:`tokenize_with_spans` also
    returns the pooled span.
    """
    return tokenize_with_spans(tokenizer, texts, settings, ids, chunk=chunk)[0]


def _shard_schema(d_model: int, value_type: pa.DataType, metadata: dict[bytes, bytes]) -> pa.Schema:
    return pa.schema(
        [
            ("prompt_id", pa.string()),
            ("label", pa.string()),
            ("issue", pa.string()),
            ("layer", pa.int16()),
            ("position", pa.string()),
            ("token_index", pa.int32()),
            ("token_id", pa.int32()),
            ("vector", pa.list_(value_type, d_model)),
            ("span_start", pa.int32()),
            ("span_stop", pa.int32()),
            ("sequence_hash", pa.int64()),
        ],
        metadata=metadata,
    )


def _vectors_to_arrow(x: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    """[n, D] numpy -> fixed_size_list array without per-row Python (one flat buffer)."""
    flat = pa.array(np.ascontiguousarray(x).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])


class _RowGroupBuffer:
    """Batches of rows per (layer, position), flushed as one row group per key."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema, limit_bytes: int):
        self.writer, self.schema, self.limit = writer, schema, limit_bytes
        self.chunks: dict[tuple[int, int], list[pa.RecordBatch]] = {}
        self.nbytes = 0
        self.rows_written = 0

    def add(self, key: tuple[int, int], batch: pa.RecordBatch, nbytes: int) -> None:
        self.chunks.setdefault(key, []).append(batch)
        self.nbytes += nbytes

    def maybe_flush(self) -> None:
        if self.nbytes >= self.limit:
            self.flush()

    def flush(self) -> None:
        for key in sorted(self.chunks):
            table = pa.Table.from_batches(self.chunks[key], schema=self.schema)
            self.writer.write_table(table, row_group_size=max(1, table.num_rows))
            self.rows_written += table.num_rows
        self.chunks.clear()
        self.nbytes = 0


def extract_shard(
    model: torch.nn.Module,
    tokenizer,
    prompts: pl.DataFrame,
    settings: ExtractSettings,
    out_path: str | os.PathLike,
    *,
    provenance: dict | None = None,
) -> dict:
    """Extract activations of ``prompts`` (columns id, text[, label, issue]) into one shard.

    Writes ``out_path`` (Parquet, layout in the module docstring) atomically:
    nothing appears there unless the whole shard was written. ``provenance`` is
    stored in the schema metadata like :func:`rlhf_audit.io.write_table`. The
    model is put in eval mode and cast to the compute dtype in place. Returns
    ``{"rows", "prompts", "tokens", "batch_size", "layers", "token_layers"}``.
    """
    df = _validate_prompts(prompts)
    blocks = decoder_layers(model)
    n_layers = len(blocks)
    positions = [p for p in POSITIONS if p in settings.positions]
    layers = resolve_layers(settings.layers, n_layers)
    kinds = [p for p in positions if p != "token"]
    if "token" in positions:
        tl_spec = settings.layers if settings.token_layers is None else settings.token_layers
        token_layers = resolve_layers(tl_spec, n_layers)
    else:
        if settings.token_layers:
            log.warning("token_layers is set but 'token' is not in positions: no token rows")
        token_layers = []
    written_layers = layers if kinds else []
    needed = sorted(set(written_layers) | set(token_layers))
    storage, value_type = _STORAGE_DTYPES[settings.dtype]
    plan = _Plan(written_layers, token_layers, kinds, max(needed), storage, value_type)

    device = _model_device(model)
    compute = _resolve_compute_dtype(settings.compute_dtype, device)
    if next(model.parameters()).dtype != compute:
        log.info("casting the model to %s for extraction", compute)
        model.to(compute)
    model.eval()

    ids = df["id"].to_list()
    token_lists, spans = tokenize_with_spans(tokenizer, df["text"].to_list(), settings, ids)
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    hashes = np.fromiter((sequence_hash(t) for t in token_lists), dtype=np.int64,
                         count=len(token_lists))
    bos = tokenizer.bos_token_id
    if "mean" in kinds and settings.pool_over == "all":
        # A prompt that is BOS only has no tokens to average: say which, rather than write NaN.
        empty = [ids[i] for i, t in enumerate(token_lists) if bool((t == bos).all())]
        if empty:
            raise ValueError(f"prompts {empty[:10]} have no tokens besides BOS; cannot take 'mean'")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    # Longest first: padding is cut, and an "auto" batch size meets its OOM on the first batch.
    order = np.argsort(-lengths, kind="stable")

    batch_size = settings.batch_size
    if batch_size == "auto":
        batch_size = estimate_batch_size(model, int(lengths[order[0]]), len(needed))
        log.info("auto batch size: %d (longest prompt %d tokens)", batch_size, lengths[order[0]])

    d_model = int(getattr(model.config, "hidden_size", 0)) or None
    state = _BatchState()
    handles = [blocks[L].register_forward_hook(_make_hook(L, plan, state)) for L in needed]

    ids_arr = pa.array(ids, pa.string())
    label_arr = pa.array(df["label"].to_list(), pa.string())
    issue_arr = pa.array(df["issue"].to_list(), pa.string())

    def run_batch(start: int, stop: int) -> dict[str, np.ndarray]:
        idx = order[start:stop]
        return _forward_batch(
            model,
            [token_lists[i] for i in idx],
            lengths[idx],
            spans[idx],
            pad_id,
            bos if settings.pool_over == "all" else None,
            left,
            plan,
            state,
            device,
        )

    meta = {
        "d_model": d_model,
        "layers": written_layers,
        "token_layers": token_layers,
        "positions": positions,
        "dtype": settings.dtype,
        "n_layers": n_layers,
        "pool_over": settings.pool_over,
        "compute_dtype": _dtype_name(compute),
        "device": device.type,
    }
    stats = {
        "rows": 0,
        "prompts": df.height,
        "tokens": int(lengths.sum()),
        "layers": written_layers,
        "token_layers": token_layers,
        "batch_size": 0,
    }
    try:
        with atomic_path(out_path) as tmp:
            writer = None
            try:
                for start, stop, res in progress(run_with_backoff(len(order), batch_size, run_batch), desc="extract", unit="batch", total=-(-len(order) // batch_size)):  # noqa: E501
                    if writer is None:
                        d_model = res["d_model"]
                        meta["d_model"] = d_model
                        md = {EXTRACT_META_KEY: json.dumps(meta).encode()}
                        if provenance is not None:
                            md[PROVENANCE_KEY] = json.dumps(
                                provenance, sort_keys=True, default=str
                            ).encode()
                        schema = _shard_schema(d_model, value_type, md)
                        writer = pq.ParquetWriter(
                            tmp,
                            schema,
                            compression=settings.compression,
                            use_dictionary=["prompt_id", "label", "issue", "position"],
                            write_statistics=["prompt_id", "layer", "position"],
                        )
                        buf = _RowGroupBuffer(writer, schema, int(settings.buffer_mb * 2**20))
                    _add_batch_rows(
                        buf,
                        res,
                        order[start:stop],
                        plan,
                        (ids_arr, label_arr, issue_arr),
                        spans,
                        schema,
                        hashes,
                    )
                    buf.maybe_flush()
                    stats["batch_size"] = max(stats["batch_size"], stop - start)
                buf.flush()
                stats["rows"] = buf.rows_written
            finally:
                if writer is not None:
                    writer.close()
    finally:
        for h in handles:
            h.remove()
        state.pooled.clear()
        state.tokens.clear()
    log.info("wrote %s: %d rows for %d prompts", out_path, stats["rows"], df.height)
    return stats


def _make_hook(layer: int, plan: _Plan, state: _BatchState):
    write_pooled = layer in plan.layers and bool(plan.kinds)
    write_tokens = layer in plan.token_layers

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple | list) else output  # [B, T, D]
        if write_pooled:
            rows = []
            for kind in plan.kinds:
                if kind == "last":
                    rows.append(h[torch.arange(h.shape[0], device=h.device), state.last_pos])
                else:  # mean over content tokens, accumulated in fp32
                    w = state.content.to(torch.float32)
                    rows.append(
                        torch.einsum("bt,btd->bd", w, h.to(torch.float32))
                        / state.n_content[:, None]
                    )
            state.pooled[layer] = rows
        if write_tokens:
            state.tokens[layer] = h[state.content]
        if layer == plan.deepest:
            raise _StopForward

    return hook


def _forward_batch(
    model,
    rows: list[np.ndarray],
    lengths: np.ndarray,
    spans: np.ndarray,
    pad_id: int,
    bos: int | None,
    left: bool,
    plan: _Plan,
    state: _BatchState,
    device: torch.device,
) -> dict[str, Any]:
    """One padded forward pass up to the deepest needed block; gathered rows as numpy.

    ``spans`` ``[B, 2]``: the token range of each unpadded prompt whose rows are kept;
    with ``bos`` given (pool_over "all"), BOS tokens inside it are dropped too.
    """
    B, T = len(rows), int(lengths.max())
    ids = np.full((B, T), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        if left:
            ids[i, T - len(r) :] = r
        else:
            ids[i, : len(r)] = r
    input_ids = torch.from_numpy(ids).to(device)
    lens = torch.from_numpy(lengths).to(device)
    ar = torch.arange(T, device=device)
    mask = ar[None, :] >= (T - lens)[:, None] if left else ar[None, :] < lens[:, None]
    # Positions count real tokens only, so rotary phases under left padding equal those
    # of the unpadded prompt (the HF default arange would shift them by the pad count).
    position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
    sp = torch.from_numpy(np.asarray(spans, dtype=np.int64)).to(device)
    content = mask & (position_ids >= sp[:, :1]) & (position_ids < sp[:, 1:])
    if bos is not None:
        content = content & (input_ids != bos)
    # "last" is the last pooled token: the statement's last token under pool_over content.
    state.last_pos = torch.where(content, ar[None, :], -1).max(-1).values
    state.content = content
    state.n_content = content.sum(-1).to(torch.float32)
    state.pooled, state.tokens = {}, {}
    try:
        with torch.inference_mode():
            model(
                input_ids=input_ids,
                attention_mask=mask.long(),
                position_ids=position_ids,
                use_cache=False,
            )
    except _StopForward:
        pass
    else:  # pragma: no cover - a model that skipped the hooked block
        raise RuntimeError(f"block {plan.deepest} was never reached by the forward pass")
    out: dict[str, Any] = {}
    if plan.layers and plan.kinds:
        pooled = torch.stack([torch.stack(state.pooled[L]) for L in plan.layers])  # [nL, nK, B, D]
        out["pooled"] = _to_storage(pooled, plan.storage)
        out["last_index"] = (position_ids.gather(1, state.last_pos[:, None])[:, 0]).cpu().numpy()
        out["last_token"] = input_ids.gather(1, state.last_pos[:, None])[:, 0].cpu().numpy()
        out["d_model"] = pooled.shape[-1]
    if plan.token_layers:
        toks = torch.stack([state.tokens[L] for L in plan.token_layers])  # [nTL, n_tok, D]
        out["tokens"] = _to_storage(toks, plan.storage)
        out["tok_row"] = torch.nonzero(content)[:, 0].cpu().numpy()  # batch row of each token
        out["tok_index"] = position_ids[content].cpu().numpy()
        out["tok_id"] = input_ids[content].cpu().numpy()
        out["d_model"] = toks.shape[-1]
    state.pooled, state.tokens = {}, {}
    return out


def _to_storage(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    y = x.to(dtype)
    if dtype == torch.float16 and not torch.isfinite(y).all():
        raise ValueError("activations overflow float16 storage (|x| > 65504); set dtype: float32")
    return y.cpu().numpy()


def _add_batch_rows(
    buf: _RowGroupBuffer,
    res: dict[str, Any],
    idx: np.ndarray,
    plan: _Plan,
    prompt_cols: tuple[pa.Array, pa.Array, pa.Array],
    spans: np.ndarray,
    schema: pa.Schema,
    hashes: np.ndarray,
) -> None:
    """Append one batch's rows to ``buf`` as record batches keyed by (layer, position)."""
    names = schema.names
    ids_arr, label_arr, issue_arr = prompt_cols
    span32 = spans.astype(np.int32)
    if "pooled" in res:
        take = pa.array(idx)
        pid, lab, iss = ids_arr.take(take), label_arr.take(take), issue_arr.take(take)
        s0, s1 = pa.array(span32[idx, 0]), pa.array(span32[idx, 1])
        h = pa.array(hashes[idx])
        B = len(idx)
        minus = pa.array(np.full(B, -1, np.int32))
        last_index = pa.array(res["last_index"].astype(np.int32))
        last_token = pa.array(res["last_token"].astype(np.int32))
        for li, L in enumerate(plan.layers):
            layer_col = pa.array(np.full(B, L, np.int16))
            for ki, kind in enumerate(plan.kinds):
                vec = res["pooled"][li, ki]
                ti, tid = (last_index, last_token) if kind == "last" else (minus, minus)
                pos = pa.array([kind] * B, pa.string())
                rb = pa.RecordBatch.from_arrays(
                    [
                        pid,
                        lab,
                        iss,
                        layer_col,
                        pos,
                        ti,
                        tid,
                        _vectors_to_arrow(vec, plan.arrow_value),
                        s0,
                        s1,
                        h,
                    ],
                    names=names,
                )
                buf.add((L, POSITIONS.index(kind)), rb, vec.nbytes)
    if "tokens" in res:
        rows = idx[res["tok_row"]]
        take = pa.array(rows)
        pid, lab, iss = ids_arr.take(take), label_arr.take(take), issue_arr.take(take)
        s0, s1 = pa.array(span32[rows, 0]), pa.array(span32[rows, 1])
        h = pa.array(hashes[rows])
        n = len(res["tok_row"])
        ti = pa.array(res["tok_index"].astype(np.int32))
        tid = pa.array(res["tok_id"].astype(np.int32))
        pos = pa.array(["token"] * n, pa.string())
        for li, L in enumerate(plan.token_layers):
            vec = res["tokens"][li]
            rb = pa.RecordBatch.from_arrays(
                [
                    pid,
                    lab,
                    iss,
                    pa.array(np.full(n, L, np.int16)),
                    pos,
                    ti,
                    tid,
                    _vectors_to_arrow(vec, plan.arrow_value),
                    s0,
                    s1,
                    h,
                ],
                names=names,
            )
            buf.add((L, POSITIONS.index("token")), rb, vec.nbytes)
