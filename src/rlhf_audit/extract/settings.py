"""The extraction's settings and the names shared by the writer, the readers and the
manifest: position kinds, pooling rules, shard columns, layer and shard planning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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
STORAGE_DTYPES = ("float16", "float32")
"""Storage dtypes of the vectors (torch and Arrow types in :mod:`rlhf_audit.extract.write`)."""
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
"""Forward-pass dtypes besides "auto"."""

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
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"extract settings: dtype {self.dtype!r} must be one of {list(STORAGE_DTYPES)}"
            )
        if self.compute_dtype != "auto" and self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"extract settings: compute_dtype {self.compute_dtype!r} must be 'auto' or one "
                f"of {list(COMPUTE_DTYPES)}"
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

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExtractSettings:
        """Settings from the extraction rules' ``params.settings`` (workflow/rules/common.smk
        extract_settings): every key is a field; a non-empty ``token_layers`` adds the
        "token" position (the SAE and diffing layers' per-token rows)."""
        s = dict(params)
        if s.get("token_layers"):
            s["positions"] = [*s["positions"], "token"]
        return cls(**s)

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
