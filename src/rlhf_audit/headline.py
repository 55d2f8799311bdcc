"""Headline numbers: one fragment per study x pair, merged into results/headline.json.

A fragment maps a stable key to an :class:`~rlhf_audit.stats.Estimate` plus its
one-line description. The merged file's keys are ``{study}.{pair}.{key}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from rlhf_audit.io import write_json
from rlhf_audit.stats import Estimate


def fragment(estimates: Mapping[str, Estimate], descriptions: Mapping[str, str]) -> dict:
    """JSON-ready fragment; every key must have a description."""
    missing = [k for k in estimates if k not in descriptions]
    if missing:
        raise KeyError(f"headline keys without a description: {missing}; add them to the "
                       "study module's HEADLINE_KEYS")
    return {k: {**e.to_dict(), "description": descriptions[k]} for k, e in estimates.items()}


def write_fragment(estimates: Mapping[str, Estimate], descriptions: Mapping[str, str],
                   path: str | os.PathLike) -> None:
    write_json(fragment(estimates, descriptions), path)


def merge(fragments: Mapping[tuple[str, str], str | os.PathLike], run_label: str) -> dict:
    """{(study, pair): fragment path} -> the headline document."""
    numbers = {}
    for (study, pair), path in sorted(fragments.items()):
        with open(path, encoding="utf-8") as f:
            for key, rec in json.load(f).items():
                numbers[f"{study}.{pair}.{key}"] = rec
    return {"run_label": run_label, "n_numbers": len(numbers), "numbers": numbers}
