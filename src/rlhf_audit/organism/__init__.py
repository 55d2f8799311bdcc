"""The model organism: tiny models trained on CPU from seeded, shipped generators.

Data generators (no torch needed):

- :mod:`rlhf_audit.organism.gsm8k`: GSM8K-format word problems with exact answers;
- :mod:`rlhf_audit.organism.hh`: hh-rlhf-format preference pairs whose every text
  has known feature labels (the SEAL features), under two preference mixes.

Partisan text for the organism comes from :mod:`rlhf_audit.prompts`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from rlhf_audit.io import atomic_path


def write_jsonl(rows: Iterable[Mapping], path: str | os.PathLike) -> int:
    """Write rows as JSONL (one object per line, keys in row order), atomically.

    Returns the number of rows written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            n += 1
    return n
