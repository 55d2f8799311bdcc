"""Optional inputs of the diffing study from other studies (light: numpy and polars)."""

from __future__ import annotations

import logging
import os

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


def partisan_direction(path: str | os.PathLike | None, layer: int,
                       method: str) -> np.ndarray | None:
    """The base model's partisan direction at ``layer`` from the partisan study's
    directions table, or None (no partisan study, or that layer was not fitted)."""
    if not path:
        return None
    t = pl.read_parquet(path).filter((pl.col("model") == "base") & (pl.col("layer") == layer)
                                     & (pl.col("method") == method))
    if t.height != 1:
        log.warning("%s: no base %r direction at layer %d: cos_partisan stays null", path,
                    method, layer)
        return None
    return np.asarray(t["direction"][0], np.float64)
