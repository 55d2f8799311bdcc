"""A content-addressed store for expensive outputs (GPU stages).

Snakemake reruns a job whenever its params differ from the last run in the
same folder, so switching a config value A -> B -> A would recompute A. Jobs
of expensive rules go through :func:`run_cached`: the key is a hash of
everything that determines the outputs (the rule's params, which include the
code hash, and the content of every input file); a hit restores the outputs
from the store by hard link or copy instead of computing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rlhf_audit.runtime import file_sha256

log = logging.getLogger(__name__)

DEFAULT_DIR = "results/.cache"
ENV_VAR = "RLHF_AUDIT_CACHE"


def cache_dir() -> Path:
    """The store: $RLHF_AUDIT_CACHE (shared between checkouts) or results/.cache."""
    return Path(os.environ.get(ENV_VAR, DEFAULT_DIR))


def cache_key(params: Mapping, inputs: Sequence[str | os.PathLike]) -> str:
    """sha256 of the params (canonical JSON) and of each input file's content."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for p in sorted(str(x) for x in inputs):
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.restore")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def run_cached(key: str, outputs: Sequence[str | os.PathLike], compute: Callable[[], None],
               store: Path | None = None) -> bool:
    """Restore ``outputs`` from the store under ``key``, or compute and store them.

    Returns True on a hit. The store entry is complete or absent: outputs are
    copied into a temporary folder that is renamed into place at the end.
    """
    store = store or cache_dir()
    entry = store / key[:2] / key
    outs = [Path(o) for o in outputs]
    if entry.is_dir() and all((entry / str(i)).is_file() for i in range(len(outs))):
        for i, out in enumerate(outs):
            _place(entry / str(i), out)
        log.info("restored %d output(s) from the cache (%s)", len(outs), key[:12])
        return True
    compute()
    tmp = store / key[:2] / f".{key}.tmp{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for i, out in enumerate(outs):
        shutil.copy2(out, tmp / str(i))
    try:
        os.replace(tmp, entry)
    except OSError:  # another job stored the same key first
        shutil.rmtree(tmp, ignore_errors=True)
    return False


def run_job_cached(sm, compute: Callable[[], None]) -> bool:
    """:func:`run_cached` for a Snakemake script job: the key is the rule name, all its
    params (the code hash among them) and the content of all its input files."""
    params = {"rule": sm.rule, **{k: v for k, v in sm.params.items()}}
    inputs = [p for p in sm.input if Path(p).is_file()]
    return run_cached(cache_key(params, inputs), list(sm.output), compute)
