"""The activation set's manifest (rule write_activation_manifest): what model, tokenizer,
data, code and settings made which shards."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from rlhf_audit import codehash
from rlhf_audit.extract.read import shard_info
from rlhf_audit.extract.settings import POOLING_RULES, POSITIONS, ExtractSettings, resolve_layers
from rlhf_audit.io import write_json
from rlhf_audit.lm.loader import hash_files, weight_files  # noqa: F401  (re-exported)
from rlhf_audit.runtime import library_versions

log = logging.getLogger(__name__)


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


_WRITER = Path(__file__).with_name("write.py")


def code_hash() -> str:
    """The extraction code version: :func:`rlhf_audit.codehash.code_hash` of the writer
    (:mod:`rlhf_audit.extract.write` and every library module it imports)."""
    return codehash.code_hash(_WRITER)


def _cuda_version() -> str:
    import torch

    return torch.version.cuda or "none"


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
        "library_versions": {**library_versions(), "cuda": _cuda_version()},
        "shards": [shard_entry(s) for s in shards],
        "n_shards": len(shards),
        "n_rows": int(sum(pq.ParquetFile(s).metadata.num_rows for s in shards)),
    }


def write_manifest(manifest: dict, path: str | os.PathLike) -> None:
    """Write the manifest as JSON, atomically."""
    write_json(manifest, path)


def model_shape(spec) -> tuple[int, int]:
    """(number of decoder blocks, residual width) of a model from its config alone (no
    weights loaded): a local folder's config.json, or the hub config at the spec's revision.
    ``spec``: a :class:`~rlhf_audit.lm.loader.ModelSpec` or its config mapping."""
    from rlhf_audit.lm.loader import ModelSpec

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_config(spec)
    if spec.path:
        path = Path(spec.path) / "config.json"
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: the model folder has no config.json") from None
    else:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec.hf, revision=spec.revision).to_dict()
    missing = [k for k in ("num_hidden_layers", "hidden_size") if k not in cfg]
    if missing:
        raise ValueError(f"{spec.label}: model config lacks {missing}")
    return int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])


def model_manifest(
    spec,
    settings: ExtractSettings,
    shards: Sequence[str | os.PathLike],
    *,
    data_hash: str,
) -> dict:
    """:func:`build_manifest` for the model ``spec`` (ModelSpec or its config mapping): its
    weights' and tokenizer's hashes, its shape (:func:`model_shape`) and the commit of the
    snapshot read (:func:`resolved_revision`)."""
    from rlhf_audit.lm.loader import ModelSpec, load_tokenizer, weights_hash

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_config(spec)
    n_layers, d_model = model_shape(spec)
    return build_manifest(
        model=spec.to_dict(), revision=spec.revision, weight_hash=weights_hash(spec),
        tokenizer_hash=tokenizer_hash(load_tokenizer(spec)), data_hash=data_hash,
        settings=settings, n_layers=n_layers, shards=list(shards), d_model=d_model,
        resolved_revision=resolved_revision(spec.hf, spec.revision))
