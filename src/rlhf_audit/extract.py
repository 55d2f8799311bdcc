"""Residual-stream activations of a causal LM, streamed into Parquet shards.

Every representation analysis (partisan probes, SAE tallies) reads what this
module writes. One shard is one job: ``extract_shard`` takes a slice of the
prompts, runs the forward pass in length-sorted batches, stops it after the
deepest layer asked for (the LM head and later blocks never run), gathers the
requested rows on the device and streams them to a Parquet file that appears at
its final path only when complete.

Layer numbering (shared contract): ``layer`` L is the residual stream after
transformer block L (0-based), i.e. the output of ``model.model.layers[L]`` =
TransformerLens ``blocks.L.hook_resid_post`` = ``hidden_states[L + 1]`` of an HF
forward pass. One exception in HF itself: for the *last* block HF's
``hidden_states[-1]`` has the final norm applied; here the last layer is, like
every other, the block's raw output (what SAEs and probes are trained on).

Pooling rule (``pool_over``). A prompt is the user's statement, possibly wrapped
in a chat template (system header, date line, role markers, generation prompt).
With ``pool_over="content"`` (the default) extraction locates the statement's
token span inside the rendered template from the fast tokenizer's offset
mapping, and every stored row comes from that span only: "mean" averages it,
"last" is its last token, "token" rows are its tokens. Template tokens never
enter a row, so base (no template) and instruct (template) rows describe the
same text. ``pool_over="all"`` is the older rule: every prompt token except BOS.

Shard layout (shared contract), one row per (prompt, layer, position[, token]):
``prompt_id`` string, ``label`` string|null, ``issue`` string|null, ``layer``
int16, ``position`` string ("last" = last pooled token, "mean" = mean over the
pooled tokens, "token" = one row per pooled token), ``token_index`` int32 (index
in the unpadded sequence, -1 for "mean"), ``token_id`` int32 (-1 for "mean"),
``vector`` fixed_size_list<float16|float32> [d_model], then ``span_start``,
``span_stop`` int32: the half-open token range ``[span_start, span_stop)`` of the
unpadded sequence that was pooled (the statement for ``pool_over="content"``).
Shards written before the span columns existed lack them; readers ask for them
only when present. Each row group holds one (layer, position) so that readers
skip the rest by statistics. Within a shard rows are in length-sorted batch
order, not prompt order: key on ``prompt_id``.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from rlhf_audit.io import PROVENANCE_KEY, atomic_path, write_json
from rlhf_audit.lm.hooks import decoder_layers
from rlhf_audit.progress import progress

log = logging.getLogger(__name__)

POSITIONS = ("last", "mean", "token")
"""Position kinds, in the order rows are written."""
POOL_OVER = ("content", "all")
"""Pooling rules: the statement's tokens only, or every prompt token but BOS."""
META_COLUMNS = ["prompt_id", "label", "issue", "token_index", "token_id"]
"""Columns of the ``meta`` frame returned by :func:`read_vectors`."""
SPAN_COLUMNS = ["span_start", "span_stop"]
"""Per-row columns holding the pooled token range of the row's prompt."""
POOLING_RULES = {
    "content": "statement tokens only: the user's text located in the rendered chat template "
    "by the fast tokenizer's offset mapping; template, BOS and padding tokens excluded",
    "all": "every prompt token except BOS and padding (template tokens included)",
}
"""What each ``pool_over`` value pools, in words (written to the manifest)."""
EXTRACT_META_KEY = b"rlhf_audit.extract"
"""Schema-metadata key holding the shard's own description (d_model, layers, dtype)."""
_STORAGE_DTYPES = {
    "float16": (torch.float16, pa.float16()),
    "float32": (torch.float32, pa.float32()),
}
_COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

T = TypeVar("T")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ExtractSettings:
    """How activations are extracted and stored."""

    layers: tuple[int, ...] | str = "all"
    """Layers (0-based block outputs) whose "last"/"mean" rows are written, or "all"."""
    positions: tuple[str, ...] = ("last", "mean")
    """Position kinds to write: any of "last", "mean", "token"."""
    token_layers: tuple[int, ...] | str | None = None
    """Layers whose per-token rows are written when "token" is in positions (e.g. the
    SAE layer); None = the same as ``layers``."""
    dtype: str = "float16"
    """Storage dtype of the vectors: "float16" (half the disk) or "float32"."""
    compute_dtype: str = "auto"
    """Forward-pass dtype: "auto" = bfloat16 on CUDA, float32 on CPU; or "bfloat16",
    "float16", "float32". The model is cast in place if it differs."""
    batch_size: int | str = "auto"
    """Prompts per forward pass, or "auto": estimated from free device memory and
    halved on CUDA out-of-memory until it fits."""
    max_length: int = 1024
    """Longest prompt in tokens (after the chat template); see ``truncate``."""
    truncate: bool = False
    """If a prompt exceeds ``max_length``: False = fail naming the prompts, True = keep
    the first ``max_length`` tokens (logged)."""
    shard_size: int = 1000
    """Prompts per shard (one shard = one job and one Parquet file)."""
    chat_template: bool = False
    """Wrap each prompt as one user turn with the tokenizer's chat template (with the
    generation prompt); the template then supplies BOS, so none is added again."""
    buffer_mb: float = 64.0
    """MiB of vectors held in memory before they are written as row groups; bounds the
    memory of a shard whatever its number of prompts."""
    compression: str = "snappy"
    """Parquet compression codec ("snappy", "zstd", "none")."""
    pool_over: str = "content"
    """Which tokens the rows come from: "content" = the user's statement only (located
    inside the chat template; needs a fast tokenizer), "all" = every token but BOS."""

    def __post_init__(self) -> None:
        # Config files give lists; store tuples so the frozen settings stay hashable.
        for name in ("layers", "positions", "token_layers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.positions, str):
            object.__setattr__(self, "positions", (self.positions,))
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ValueError(
                f"extract settings: positions {list(self.positions)} must be a non-empty "
                f"subset of {list(POSITIONS)}"
            )
        if self.dtype not in _STORAGE_DTYPES:
            raise ValueError(
                f"extract settings: dtype {self.dtype!r} must be one of {list(_STORAGE_DTYPES)}"
            )
        if self.compute_dtype != "auto" and self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(
                f"extract settings: compute_dtype {self.compute_dtype!r} must be 'auto' or one "
                f"of {list(_COMPUTE_DTYPES)}"
            )
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise ValueError(
                f"extract settings: batch_size {self.batch_size!r} must be a positive int or 'auto'"
            )
        for name in ("max_length", "shard_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"extract settings: {name} must be a positive int")
        if not self.buffer_mb > 0:
            raise ValueError("extract settings: buffer_mb must be > 0")
        if self.pool_over not in POOL_OVER:
            raise ValueError(
                f"extract settings: pool_over {self.pool_over!r} must be one of {list(POOL_OVER)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_layers(spec: Sequence[int] | str | int, n_layers: int) -> list[int]:
    """Sorted unique layer indices from ``spec`` ("all", an int, or a list of ints).

    Raises ValueError naming any layer outside ``0 .. n_layers - 1``.
    """
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"layers {spec!r}: give 'all' or a list of integers")
        return list(range(n_layers))
    items = [spec] if isinstance(spec, int) else list(spec)
    if not items:
        raise ValueError("layers is empty: give 'all' or at least one layer index")
    for x in items:
        if isinstance(x, bool) or not isinstance(x, int | np.integer):
            raise ValueError(f"layer {x!r} is not an integer")
        if not 0 <= x < n_layers:
            raise ValueError(
                f"layer {x} is out of range: valid layers are 0..{n_layers - 1} "
                f"(the model has {n_layers} blocks; layer L is the output of block L)"
            )
    return sorted({int(x) for x in items})


def plan_shards(n_prompts: int, shard_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` prompt ranges of consecutive shards."""
    if n_prompts < 0 or shard_size < 1:
        raise ValueError(
            f"plan_shards: need n_prompts >= 0 and shard_size >= 1, got {n_prompts}, {shard_size}"
        )
    return [(s, min(s + shard_size, n_prompts)) for s in range(0, n_prompts, shard_size)]


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-00003.parquet``)."""
    return f"shard-{index:05d}.parquet"


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
) -> None:
    """Append one batch's rows to ``buf`` as record batches keyed by (layer, position)."""
    names = schema.names
    ids_arr, label_arr, issue_arr = prompt_cols
    span32 = spans.astype(np.int32)
    if "pooled" in res:
        take = pa.array(idx)
        pid, lab, iss = ids_arr.take(take), label_arr.take(take), issue_arr.take(take)
        s0, s1 = pa.array(span32[idx, 0]), pa.array(span32[idx, 1])
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
                    ],
                    names=names,
                )
                buf.add((L, POSITIONS.index(kind)), rb, vec.nbytes)
    if "tokens" in res:
        rows = idx[res["tok_row"]]
        take = pa.array(rows)
        pid, lab, iss = ids_arr.take(take), label_arr.take(take), issue_arr.take(take)
        s0, s1 = pa.array(span32[rows, 0]), pa.array(span32[rows, 1])
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
                ],
                names=names,
            )
            buf.add((L, POSITIONS.index("token")), rb, vec.nbytes)


# --------------------------------------------------------------------------- reading


def _as_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[str] = []
    for p in items:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("shard-*.parquet"))
            if not found:
                raise FileNotFoundError(f"no shard-*.parquet files in {p}")
            out.extend(str(f) for f in found)
        elif not p.exists():
            raise FileNotFoundError(f"activation shard {p} does not exist")
        else:
            out.append(str(p))
    if not out:
        raise ValueError("read_vectors: no shard paths given")
    return out


def _row_filter(layer: int, position: str) -> pc.Expression:
    if position not in POSITIONS:
        raise ValueError(f"position {position!r} must be one of {list(POSITIONS)}")
    return (pc.field("layer") == layer) & (pc.field("position") == position)


def _available(dataset: pads.Dataset) -> list[tuple[int, str]]:
    t = (
        dataset.to_table(columns=["layer", "position"])
        .group_by(["layer", "position"])
        .aggregate([])
    )
    return sorted(zip(t["layer"].to_pylist(), t["position"].to_pylist(), strict=True))


def _vectors_numpy(col: pa.ChunkedArray) -> np.ndarray:
    width = col.type.list_size
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, width) for c in col.chunks]
    if not parts:
        return np.zeros((0, width), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def read_vectors(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    layer: int,
    position: str,
    *,
    extra_columns: Sequence[str] = (),
) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows of one (layer, position) from activation shards (files or a shard folder).

    Only the matching row groups are read (filter pushed down to Parquet
    statistics). Returns ``meta`` (polars; columns prompt_id, label, issue,
    token_index, token_id, then ``extra_columns``, e.g. :data:`SPAN_COLUMNS`) and ``X``
    float32 ``[n_rows, d_model]``, row-aligned. Raises ValueError listing the available
    (layer, position) pairs if none match, or naming an extra column the shards lack.
    """
    files = _as_paths(paths)
    dataset = pads.dataset(files, format="parquet")
    missing = [c for c in extra_columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(
            f"activation shards (e.g. {files[0]}) have no column(s) {missing}: they were "
            "written before those columns existed; re-extract them"
        )
    table = dataset.to_table(
        columns=[*META_COLUMNS, *extra_columns, "vector"], filter=_row_filter(layer, position)
    )
    if table.num_rows == 0:
        raise ValueError(
            f"no rows with layer={layer}, position={position!r} in {len(files)} shard(s) "
            f"(e.g. {files[0]}); available (layer, position): {_available(dataset)}"
        )
    X = _vectors_numpy(table.column("vector"))
    meta = pl.from_arrow(table.drop_columns(["vector"]))
    return meta, X


def read_spans(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> pl.DataFrame:
    """The pooled token span of every prompt in activation shards: columns prompt_id,
    span_start, span_stop (half-open token indices of the unpadded sequence)."""
    files = _as_paths(paths)
    dataset = pads.dataset(files, format="parquet")
    missing = [c for c in SPAN_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise ValueError(
            f"activation shards (e.g. {files[0]}) record no token spans (no {missing}); "
            "re-extract them"
        )
    t = dataset.to_table(columns=["prompt_id", *SPAN_COLUMNS])
    return pl.from_arrow(t).unique(subset="prompt_id", keep="first", maintain_order=True)


def iter_token_batches(
    paths: str | os.PathLike | Sequence[str | os.PathLike], layer: int, batch_rows: int
) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
    """Stream the "token" rows of ``layer`` as ``(meta, X [batch_rows, d_model] float32)``.

    Every batch has ``batch_rows`` rows except the last; memory stays at about one
    batch plus one Parquet row group whatever the number of shards. The token rows are
    the pooled tokens only: under ``pool_over="content"`` (the default) exactly each
    statement's span, never a chat-template token.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    files = _as_paths(paths)
    dataset = pads.dataset(files, format="parquet")
    scanner = dataset.scanner(
        columns=[*META_COLUMNS, "vector"],
        filter=_row_filter(layer, "token"),
        batch_size=batch_rows,
        batch_readahead=1,
        fragment_readahead=1,
    )
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    seen = False

    def emit(batches: list[pa.RecordBatch]) -> tuple[pl.DataFrame, np.ndarray]:
        t = pa.Table.from_batches(batches)
        return pl.from_arrow(t.drop_columns(["vector"])), _vectors_numpy(t.column("vector"))

    for rb in scanner.to_batches():
        if rb.num_rows == 0:
            continue
        seen = True
        pending.append(rb)
        n_pending += rb.num_rows
        while n_pending >= batch_rows:
            t = pa.Table.from_batches(pending)
            yield emit(t.slice(0, batch_rows).to_batches())
            rest = t.slice(batch_rows)
            pending, n_pending = rest.to_batches(), rest.num_rows
    if n_pending:
        yield emit(pending)
    if not seen:
        raise ValueError(
            f"no token rows for layer {layer} in {len(files)} shard(s) (e.g. {files[0]}); "
            f"available (layer, position): {_available(dataset)}"
        )


# --------------------------------------------------------------------------- provenance


def _iter_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[tuple[str, Path]] = []
    for p in map(Path, items):
        if p.is_dir():
            out.extend(
                (f.relative_to(p).as_posix(), f) for f in sorted(p.rglob("*")) if f.is_file()
            )
        elif p.is_file():
            out.append((p.name, p))
        else:
            raise FileNotFoundError(f"hash_files: {p} does not exist")
    return sorted(out, key=lambda x: x[0])


def hash_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike], chunk_bytes: int = 1 << 20
) -> str:
    """sha256 over files (folders expand recursively), streamed in chunks.

    Files are taken in order of their name (relative to a given folder), and each
    name and size is hashed with the content, so the hash follows content and
    layout but not where the files live.
    """
    h = hashlib.sha256()
    for name, path in _iter_files(paths):
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                h.update(chunk)
    return h.hexdigest()


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The safetensors weight files and config.json of a local model folder."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {d}")
    cfg = d / "config.json"
    return files + ([cfg] if cfg.exists() else [])


def tokenizer_hash(tokenizer) -> str:
    """sha256 of what decides a tokenizer's ids: its serialised model/vocab, special
    tokens, chat template and padding side."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = {
        k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    payload = json.dumps(
        {
            "class": type(tokenizer).__name__,
            "body": body,
            "special": {k: str(v) if v is not None else None for k, v in special.items()},
            "chat_template": getattr(tokenizer, "chat_template", None),
            "padding_side": getattr(tokenizer, "padding_side", None),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the packages that shape the activations and their storage."""
    out = {"python": platform.python_version()}
    for pkg in ("rlhf-audit", "torch", "transformers", "tokenizers", "pyarrow", "numpy", "polars"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def code_hash() -> str:
    """sha256 of this module's source: the extraction code version."""
    return hash_files([__file__])


def resolved_revision(
    hf: str | None, revision: str | None, *, cache_dir: str | os.PathLike | None = None
) -> str | None:
    """The commit sha of the locally cached snapshot of hub model ``hf`` at ``revision``
    (a branch, tag or sha; None = main), or None for a local model or an uncached one.

    A branch such as ``main`` moves; the manifest records this sha so that a run says
    which weights it read. Logs a warning when ``revision`` is not itself a commit sha.
    """
    if not hf:
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            hf,
            revision=revision,
            allow_patterns=["config.json"],
            local_files_only=True,
            cache_dir=cache_dir,
        )
    except Exception as err:  # noqa: BLE001 - any lookup failure only loses the record
        log.warning("cannot resolve the cached snapshot of %s@%s: %s", hf, revision, err)
        return None
    sha = Path(folder).name
    if not (revision and len(revision) == 40 and revision == sha):
        log.warning(
            "model %s is named by revision %r, which can move; this run read commit %s: pin "
            "it with revision: %s in the config",
            hf,
            revision or "main",
            sha,
            sha,
        )
    return sha


def shard_entry(path: str | os.PathLike) -> dict:
    """Name, rows, bytes and sha256 of one written shard, for the manifest."""
    p = Path(path)
    return {
        "file": p.name,
        "rows": pq.ParquetFile(p).metadata.num_rows,
        "bytes": p.stat().st_size,
        "sha256": hash_files([p]),
    }


def build_manifest(
    *,
    model: dict | str,
    revision: str | None,
    weight_hash: str,
    tokenizer_hash: str,
    data_hash: str,
    settings: ExtractSettings,
    n_layers: int,
    shards: Sequence[str | os.PathLike],
    d_model: int | None = None,
    resolved_revision: str | None = None,
) -> dict:
    """The activation set's manifest: what model, tokenizer, data, code and settings
    made which shards. ``model`` is the spec ({hf, revision} or {path}); ``revision`` the
    configured one and ``resolved_revision`` the commit of the snapshot actually read.
    ``compute_dtype`` and ``device`` are what the shards were computed in (read back
    from the shards, never "auto"); ``pool_over``/``pooling_rule`` say which tokens the
    rows come from."""
    layers = resolve_layers(settings.layers, n_layers)
    token_layers = (
        resolve_layers(
            settings.layers if settings.token_layers is None else settings.token_layers, n_layers
        )
        if "token" in settings.positions
        else []
    )
    info = [shard_info(s) for s in shards]
    compute = sorted({i.get("compute_dtype") or "unrecorded" for i in info})
    devices = sorted({i.get("device") or "unrecorded" for i in info})
    pooled = sorted({i.get("pool_over") or "unrecorded" for i in info})
    if pooled != [settings.pool_over]:
        raise ValueError(
            f"shards were pooled with pool_over {pooled}, the settings say "
            f"{settings.pool_over!r}: re-extract the shards"
        )
    return {
        "model": model,
        "revision": revision,
        "resolved_revision": resolved_revision,
        "weight_hash": weight_hash,
        "tokenizer_hash": tokenizer_hash,
        "data_hash": data_hash,
        "dtype": settings.dtype,
        "compute_dtype": compute[0] if len(compute) == 1 else compute,
        "device": devices[0] if len(devices) == 1 else devices,
        "pool_over": settings.pool_over,
        "pooling_rule": POOLING_RULES[settings.pool_over],
        "layers": layers,
        "token_layers": token_layers,
        "positions": [p for p in POSITIONS if p in settings.positions],
        "n_layers": n_layers,
        "d_model": d_model,
        "settings": settings.to_dict(),
        "code_hash": code_hash(),
        "library_versions": library_versions(),
        "shards": [shard_entry(s) for s in shards],
        "n_shards": len(shards),
        "n_rows": int(sum(pq.ParquetFile(s).metadata.num_rows for s in shards)),
    }


def write_manifest(manifest: dict, path: str | os.PathLike) -> None:
    """Write the manifest as JSON, atomically."""
    write_json(manifest, path)


def shard_info(path: str | os.PathLike) -> dict:
    """The description a shard carries in its schema metadata (d_model, layers, dtype...)."""
    md = pq.read_schema(path).metadata or {}
    raw = md.get(EXTRACT_META_KEY)
    if raw is None:
        raise ValueError(
            f"{path} is not an activation shard (no {EXTRACT_META_KEY.decode()} metadata)"
        )
    return json.loads(raw)


__all__ = [
    "ExtractSettings",
    "build_manifest",
    "decoder_layers",
    "estimate_batch_size",
    "extract_shard",
    "hash_files",
    "is_oom",
    "iter_token_batches",
    "library_versions",
    "plan_shards",
    "read_spans",
    "read_vectors",
    "resolved_revision",
    "resolve_layers",
    "run_with_backoff",
    "shard_entry",
    "shard_info",
    "shard_name",
    "tokenize_prompts",
    "tokenize_with_spans",
    "tokenizer_hash",
    "weight_files",
    "write_manifest",
]
