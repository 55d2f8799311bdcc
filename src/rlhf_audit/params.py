"""Settings dataclasses from a rule's ``params.settings``, so that a script builds its
settings with one call instead of copying keys field by field (a copied field list
drifts: a new setting silently never reaches the job)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

S = TypeVar("S")


def settings_from_params(cls: type[S], params: Mapping[str, Any], *,
                         ignore: Iterable[str] = (), **extra: Any) -> S:
    """``cls(**params)`` for a settings dataclass: lists become tuples (config files give
    lists, frozen settings keep tuples); ``extra`` adds or overrides fields the workflow does
    not pass (e.g. the job's thread count). A key that is neither a field nor in ``ignore``
    (keys the script reads itself) is an error naming it, so a misspelt or stale params key
    cannot be dropped silently."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names - set(ignore))
    if unknown:
        raise KeyError(f"{cls.__name__}: params key(s) {unknown} are not settings fields "
                       f"(fields: {sorted(names)}); fix the rule's params in "
                       "workflow/rules/common.smk")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    kw.update(extra)
    return cls(**kw)
