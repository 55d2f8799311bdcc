"""Progress of long loops, with rate and ETA, written to the job's log.

Snakemake jobs (and SLURM jobs) write their log through :mod:`logging`
(rlhf_audit.runtime.setup), not to a terminal, so a tqdm bar on stderr would be
lost or end up as one line of carriage returns. :func:`progress` wraps an
iterable in tqdm whose output goes to the ``rlhf_audit.progress`` logger as one
ordinary line per refresh (at most every ``every_s`` seconds, plus the last), e.g.

    generate: 40%|####      | 12/30 [00:48<01:12, 0.25batch/s]

so `tail -f results/logs/...log` shows how far a job is while it runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("rlhf_audit.progress")

EVERY_S = float(os.environ.get("RLHF_AUDIT_PROGRESS_S", "30"))
"""Seconds between progress lines (environment RLHF_AUDIT_PROGRESS_S)."""


class _LogStream:
    """A file-like tqdm writes to: each refreshed bar becomes one log line."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, s: str) -> int:
        line = s.strip("\r\n ")
        if line:
            self.logger.info(line)
        return len(s)

    def flush(self) -> None:
        pass


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None,
             unit: str = "it", every_s: float | None = None) -> Iterator[T]:
    """Iterate ``iterable`` logging progress (count, rate, ETA when ``total`` is known)."""
    from tqdm import tqdm

    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = tqdm(iterable, desc=desc, total=total, unit=unit, file=_LogStream(log), ascii=True,
               ncols=90, mininterval=EVERY_S if every_s is None else every_s,
               maxinterval=max(EVERY_S if every_s is None else every_s, 1.0),
               disable=not log.isEnabledFor(logging.INFO))
    try:
        yield from bar
    finally:
        bar.close()
