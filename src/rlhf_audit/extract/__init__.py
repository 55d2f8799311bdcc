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
unpadded sequence that was pooled (the statement for ``pool_over="content"``), and
``sequence_hash`` int64: a fingerprint of the prompt's whole token-id sequence as the
model read it (template and BOS included; ``write.sequence_hash``), with which the
diffing study checks that two models read identical inputs. Shards written before the
span or hash columns existed lack them; readers ask for them only when present. Each
row group holds one (layer, position) so that readers skip the rest by statistics.
Within a shard rows are in length-sorted batch order, not prompt order: key on
``prompt_id``.

Modules, along the rules: ``write`` (extract_activations: tokenisation with statement
spans, the stopped forward pass, shard writing), ``read`` (every reader of the shards:
probes, SAE scans and training, diffing, the projection scorer) and ``manifest``
(write_activation_manifest); ``settings`` (ExtractSettings, positions, columns, layer and
shard planning) and ``disk`` (the job's early disk check, shared with the planner) are
shared. Every public name is re-exported here lazily (PEP 562): a
rule's code hash holds the package ``__init__`` of every module it imports, so eager
re-exports would put the GPU writer into every reader's hash. Scripts and library code
import from the submodules.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "_model_device": "write",
    "build_manifest": "manifest",
    "CHARS_PER_TOKEN": "disk",
    "CHAT_OVERHEAD_TOKENS": "disk",
    "check_extraction_disk": "disk",
    "code_hash": "manifest",
    "COMPUTE_DTYPES": "settings",
    "decoder_layers": "rlhf_audit.lm.hooks",
    "DiskSpaceError": "disk",
    "estimate_batch_size": "write",
    "EXTRACT_META_KEY": "settings",
    "extract_shard": "write",
    "extraction_bytes": "disk",
    "ExtractSettings": "settings",
    "hash_files": "manifest",
    "is_oom": "write",
    "iter_token_batches": "read",
    "library_versions": "rlhf_audit.runtime",
    "locate_statement": "write",
    "META_COLUMNS": "settings",
    "model_manifest": "manifest",
    "model_shape": "manifest",
    "plan_shards": "settings",
    "POOL_OVER": "settings",
    "POOLING_RULES": "settings",
    "POSITIONS": "settings",
    "read_spans": "read",
    "read_vectors": "read",
    "read_vectors_in_order": "read",
    "resolve_layers": "settings",
    "resolved_revision": "manifest",
    "run_with_backoff": "write",
    "shard_entry": "manifest",
    "shard_info": "read",
    "shard_name": "settings",
    "SPAN_COLUMNS": "settings",
    "STORAGE_DTYPES": "settings",
    "tokenize_prompts": "write",
    "tokenize_with_spans": "write",
    "tokenizer_hash": "manifest",
    "weight_files": "manifest",
    "write_manifest": "manifest",
}
"""Public name -> the module that defines it (a submodule, or rlhf_audit.lm.hooks)."""

_SUBMODULES = ("disk", "manifest", "read", "settings", "write")

__all__ = sorted(n for n in _EXPORTS if not n.startswith("_"))


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    full = module if "." in module else f"{__name__}.{module}"
    value = getattr(importlib.import_module(full), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
