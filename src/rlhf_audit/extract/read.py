"""Reading the activation shards (probes, SAE scans and training, diffing, the projection
scorer): one (layer, position) as a matrix, the pooled spans, or token rows in batches.
Imports no model code, so that no reader reruns when the writer changes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rlhf_audit.extract.settings import EXTRACT_META_KEY, META_COLUMNS, POSITIONS, SPAN_COLUMNS


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


def read_vectors_in_order(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    layer: int,
    position: str,
    prompt_ids: Sequence[str],
    what: str = "activations",
) -> np.ndarray:
    """:func:`read_vectors`' matrix [len(prompt_ids), d_model] with row i the vector of
    ``prompt_ids[i]`` (shards store rows in length-sorted batch order). Every prompt must
    have exactly one row at (``layer``, ``position``); otherwise a ValueError names how many
    are covered (``what`` names the set in the message)."""
    meta, X = read_vectors(paths, layer, position)
    order = pl.DataFrame({"prompt_id": list(map(str, prompt_ids))})
    pos = meta.with_row_index("row").join(order.with_row_index("want"), on="prompt_id")
    if pos.height != order.height:
        raise ValueError(f"{what} cover {pos.height} of {order.height} prompts at layer "
                         f"{layer}; rerun extraction")
    return X[pos.sort("want")["row"].to_numpy()]


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


def shard_info(path: str | os.PathLike) -> dict:
    """The description a shard carries in its schema metadata (d_model, layers, dtype...)."""
    md = pq.read_schema(path).metadata or {}
    raw = md.get(EXTRACT_META_KEY)
    if raw is None:
        raise ValueError(
            f"{path} is not an activation shard (no {EXTRACT_META_KEY.decode()} metadata)"
        )
    return json.loads(raw)
