"""Atomic writes and provenance for every table and JSON file the workflow makes.

A file appears at its final path only when complete (written to a temporary
sibling, flushed, then renamed), so a killed job never leaves something a later
run takes for finished. Parquet tables carry their provenance in the schema
metadata under ``rlhf_audit.provenance``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"rlhf_audit.provenance"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(o: Any):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_table(
    df: pl.DataFrame | pa.Table, path: str | os.PathLike, provenance: dict | None = None
) -> None:
    """Write a Parquet table atomically, with ``provenance`` in its schema metadata."""
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    meta = dict(table.schema.metadata or {})
    if provenance is not None:
        meta[PROVENANCE_KEY] = json.dumps(
            provenance, sort_keys=True, default=_json_default
        ).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_provenance(path: str | os.PathLike) -> dict:
    """The provenance dict stored in a Parquet file by :func:`write_table` ({} if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}
