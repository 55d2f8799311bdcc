"""Settings of the calibration analysis (the ``calibration`` config section)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal


@dataclass(frozen=True)
class CalibrationSettings:
    """Settings of the injected-confidence study: the ``calibration`` config section's
    analysis keys (workflow/schemas/config.schema.yaml), via :meth:`from_params`."""

    levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """Injected external confidence levels, probabilities in [0, 1] (paper: not stated)."""
    strategies: tuple[str, ...] = ("command", "conversational", "control")
    """Prompt strategies to run (keys under ``strategies`` in templates.yaml)."""
    truncate_at: tuple[str, ...] = ("\nQuestion:", "\nProblem:", "\nUser:", "\nHuman:")
    """A completion (base) reply is cut at the first of these markers before parsing: base
    models tend to go on with a new problem or dialogue turn, whose numbers are not part of
    the answer. Chat (instruct) replies are never cut."""
    compliance_tol_pp: float = 1.0
    """A reply complies when |verbalized - injected| <= this, in percentage points."""
    answer_abs_tol: float = 1e-6
    """Absolute tolerance when comparing an extracted answer with the gold number."""
    internal_measure: Literal["mean", "min"] = "mean"
    """Token-probability summary over the answer span used in the headline correlations."""
    n_boot: int = 2000
    """Bootstrap replicates for every interval."""
    seed: int = 0
    """Seed of the bootstrap."""
    cluster_by_problem: bool = True
    """Resample whole problems (all levels of one problem together) in the bootstrap, so
    that the n of an interval is the number of problems, not of prompts."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CalibrationSettings:
        """Settings from the ``calibration`` config section as the workflow passes it
        (``params.settings``): keys that are fields are taken (lists become tuples), others
        (``templates``, generation keys) are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()
              if k in names}
        return cls(**kw)

    def __post_init__(self):
        bad = [x for x in self.levels if not 0.0 <= float(x) <= 1.0]
        if bad:
            raise ValueError(f"calibration levels must be probabilities in [0, 1], got {bad}; "
                             "write 70% as 0.7")
        if self.internal_measure not in ("mean", "min"):
            raise ValueError(f"internal_measure must be 'mean' or 'min', got "
                             f"{self.internal_measure!r}")
        if self.compliance_tol_pp < 0:
            raise ValueError("compliance_tol_pp must be >= 0")
        if isinstance(self.truncate_at, str) or any(not m for m in self.truncate_at):
            raise ValueError(f"truncate_at must be a list of non-empty markers, got "
                             f"{self.truncate_at!r}")


DEFAULT_SETTINGS = CalibrationSettings()
"""The defaults (the schema's), for function signatures."""
