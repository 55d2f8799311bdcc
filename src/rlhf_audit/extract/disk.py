"""The extraction job's early disk check: fail before writing a shard the disk cannot hold.
Shared with the planner (:mod:`rlhf_audit.plan`), which sizes whole runs with the same
byte count."""

from __future__ import annotations

import shutil
from pathlib import Path

CHARS_PER_TOKEN = 4.0
"""Characters per token for English text with a Llama-class tokenizer (a planning figure)."""

CHAT_OVERHEAD_TOKENS = 12
"""Tokens a chat template adds around a user turn."""


class DiskSpaceError(RuntimeError):
    """Too little free disk for what a job is about to write; the message has the numbers."""


def _bytes(dtype: str) -> int:
    return 2 if dtype in ("float16", "bfloat16") else 4


def extraction_bytes(n_prompts: int, n_tokens: float, n_layers: int, n_positions: int,
                     n_token_layers: int, d_model: int, dtype: str) -> int:
    """Bytes of one extraction: pooled vectors per (prompt, layer, position) plus
    token-level vectors per (token, SAE layer), with ~5% for ids and Parquet framing."""
    vectors = n_prompts * n_layers * n_positions + n_tokens * n_token_layers
    return int(vectors * d_model * _bytes(dtype) * 1.05)


def check_extraction_disk(out_path, prompts, settings, model_config,
                          reserve_bytes: int = 1 << 30) -> int:
    """Fail before writing a shard that the disk cannot hold; returns the estimate.

    ``prompts``: the shard's prompt table (column text); ``settings``: the
    ExtractSettings; ``model_config``: the loaded model's HF config."""
    n = prompts.height
    n_tokens = min(float(prompts["text"].str.len_chars().sum()) / CHARS_PER_TOKEN
                   + CHAT_OVERHEAD_TOKENS * n, float(settings.max_length) * n)
    n_layers = int(model_config.num_hidden_layers)
    layers = n_layers if settings.layers == "all" else len(list(settings.layers))
    positions = [p for p in settings.positions if p != "token"]
    tl = settings.token_layers
    n_token_layers = 0 if not tl else (n_layers if tl == "all" else len(list(tl)))
    need = extraction_bytes(n, n_tokens, layers, len(positions), n_token_layers,
                            int(model_config.hidden_size), settings.dtype)
    where = Path(out_path).parent
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < need + reserve_bytes:
        raise DiskSpaceError(
            f"{out_path}: this shard needs about {need / 1e9:.2f} GB ({n} prompts x {layers} "
            f"layers x {len(positions)} positions + {n_tokens:.0f} tokens x {n_token_layers} SAE "
            f"layers, d_model {model_config.hidden_size}, {settings.dtype}) plus "
            f"{reserve_bytes / 1e9:.1f} GB reserve, but {where} has {free / 1e9:.2f} GB free. "
            "Free space, point results/ at a larger disk, or store fewer layers "
            "(extract.layers) or float16 (extract.dtype).")
    return need
