"""The steering vectors of one pair (rule build_steering_vectors): every vector at the same
L2 norm, the base model's median per-token residual norm at the layer (the dose unit); the
partisan directions, the SAE policy features' oriented decoder rows and the random nulls."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from rlhf_audit.steering.activations import _token_norms
from rlhf_audit.steering.settings import SteeringSettings

log = logging.getLogger(__name__)


def typical_residual_norm(X: np.ndarray) -> float:
    """Median L2 norm of activation rows ``X`` [n, d_model]: the layer's typical residual size."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"activations must be [n, d_model] with n > 0, got shape {X.shape}")
    return float(np.median(np.linalg.norm(X, axis=1)))


def scaled(v: np.ndarray, norm: float) -> np.ndarray:
    """``v`` rescaled to L2 norm ``norm``, float32 [d_model]."""
    v = np.asarray(v, dtype=np.float64).ravel()
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError("cannot scale a zero or non-finite vector")
    return (v / n * norm).astype(np.float32)


def feature_vector(w_dec_rows: np.ndarray, norm: float) -> np.ndarray:
    """Steering vector of SAE features: the sum of their unit decoder rows, scaled to ``norm``.

    ``w_dec_rows`` is one row of ``W_dec`` [d_model] or several [k, d_model]; each row is
    normalised first so every feature weighs the same.
    """
    W = np.atleast_2d(np.asarray(w_dec_rows, dtype=np.float64))
    nrm = np.linalg.norm(W, axis=1, keepdims=True)
    if (nrm == 0).any():
        raise ValueError("an SAE decoder row is all zeros")
    return scaled((W / nrm).sum(0), norm)


def random_vector(d_model: int, norm: float, seed: int = 0) -> np.ndarray:
    """A uniformly random direction [d_model] of L2 norm ``norm`` (Gaussian, then rescaled)."""
    return scaled(np.random.default_rng(seed).standard_normal(d_model), norm)


POLICY_FEATURE_COLUMNS = {"feature": pl.Int64, "selected": pl.Boolean, "effect_lr": pl.Float64,
                          "leaning": pl.Int8}
"""Columns of results/sae/{pair}/{sae}/policy_features.parquet the feature vector reads:
feature (SAE latent index), selected (passed the left-vs-right test), effect_lr (right minus
left on base) and leaning (+1 right, -1 left)."""


def _policy_table(pf: pl.DataFrame, source: str) -> pl.DataFrame:
    missing = set(POLICY_FEATURE_COLUMNS) - set(pf.columns)
    if missing:
        raise ValueError(
            f"{source}: policy-feature table lacks columns {sorted(missing)}; it needs "
            f"{sorted(POLICY_FEATURE_COLUMNS)} (rule select_policy_features)"
        )
    try:
        return pf.select(pl.col(c).cast(t, strict=True) for c, t in POLICY_FEATURE_COLUMNS.items())
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as err:
        raise ValueError(
            f"{source}: policy-feature columns must be feature (int), selected (bool), "
            f"effect_lr (float) and leaning (int8, +1 right / -1 left): {err}"
        ) from None


def policy_feature_rows(
    policy_features: pl.DataFrame,
    w_dec: np.ndarray,
    n_features: int,
    source: str = "policy features",
) -> tuple[np.ndarray, list[int], list[int]]:
    """Unit decoder rows of the strongest selected policy features, oriented to point right.

    The selected features are ranked by ``|effect_lr|`` (ties by index) and the first
    ``n_features`` kept; each unit row ``W_dec[f] / |W_dec[f]|`` is multiplied by the
    feature's ``leaning`` (+1 right, -1 left), so left-leaning features add their
    negative. Returns (rows [k, d_model], features, leanings); k = 0 when none is selected.
    """
    pf = _policy_table(policy_features, source)
    sel = pf.filter(pl.col("selected"))
    if sel.height and not sel["leaning"].is_in([-1, 1]).all():
        bad = sel.filter(~pl.col("leaning").is_in([-1, 1]))["feature"].head(5).to_list()
        raise ValueError(f"{source}: selected features {bad} have a leaning other than +1/-1")
    sel = sel.with_columns(pl.col("effect_lr").abs().alias("_abs")).sort(
        ["_abs", "feature"], descending=[True, False], nulls_last=True
    ).head(n_features)
    feats = sel["feature"].to_list()
    lean = sel["leaning"].to_list()
    W = np.asarray(w_dec, dtype=np.float64)
    if feats and max(feats) >= len(W):
        raise ValueError(f"{source}: feature {max(feats)} outside the SAE's {len(W)} latents")
    rows = W[feats] if feats else np.zeros((0, W.shape[1]))
    nrm = np.linalg.norm(rows, axis=1, keepdims=True)
    if (nrm == 0).any():
        raise ValueError(f"{source}: an SAE decoder row of features {feats} is all zeros")
    rows = rows / np.where(nrm == 0, 1, nrm) * np.asarray(lean, float)[:, None]
    return rows, feats, lean


def random_feature_rows(
    policy_features: pl.DataFrame,
    w_dec: np.ndarray,
    n_features: int,
    n_sets: int,
    seed: int = 0,
    source: str = "policy features",
) -> list[tuple[np.ndarray, list[int], list[int]]]:
    """``n_sets`` sets of ``n_features`` random non-policy features, built like the feature
    vector: unit decoder rows, each oriented by the sign of its ``effect_lr`` (0 or unknown:
    a random sign). Drawn from the features not selected (all latents of the SAE that the
    table does not mark selected). Returns a list of (rows, features, signs)."""
    pf = _policy_table(policy_features, source)
    W = np.asarray(w_dec, dtype=np.float64)
    selected = set(pf.filter(pl.col("selected"))["feature"].to_list())
    pool = np.array([f for f in range(len(W)) if f not in selected])
    if len(pool) < n_features or n_features < 1:
        raise ValueError(
            f"{source}: {len(pool)} non-policy features, fewer than the {n_features} a "
            "random feature set needs"
        )
    eff = dict(zip(pf["feature"].to_list(), pf["effect_lr"].to_list(), strict=True))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sets):
        feats = sorted(int(f) for f in rng.choice(pool, n_features, replace=False))
        signs = []
        for f in feats:
            e = eff.get(f)
            ok = e is not None and np.isfinite(e) and e != 0
            signs.append(int(np.sign(e)) if ok else int(rng.choice([-1, 1])))
        rows = W[feats] / np.linalg.norm(W[feats], axis=1, keepdims=True)
        out.append((rows * np.asarray(signs, float)[:, None], feats, signs))
    return out


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else float("nan")


VECTOR_TABLE_SCHEMA = {
    "vector": pl.String,
    "family": pl.String,
    "layer": pl.Int32,
    "norm": pl.Float64,
    "cos_partisan": pl.Float64,
    "features": pl.List(pl.Int64),
    "leanings": pl.List(pl.Int8),
    "values": pl.List(pl.Float32),
}
"""Columns of results/steering/{pair}/vectors.parquet (one row per steering vector)."""


def steering_vector_set(
    layer: int,
    norm: float,
    direction: np.ndarray,
    *,
    direction_instruct: np.ndarray | None = None,
    policy_features: pl.DataFrame | None = None,
    w_dec: np.ndarray | None = None,
    n_features: int = 3,
    n_random_directions: int = 10,
    n_random_feature_sets: int = 10,
    seed: int = 0,
    source: str = "policy features",
) -> pl.DataFrame:
    """Every steering vector of one pair at the same L2 norm ``norm`` (columns
    :data:`VECTOR_TABLE_SCHEMA`; ``cos_partisan`` = cosine with the base ``direction``).

    ``direction`` (and ``direction_instruct``) [d_model] must point left -> right. The
    feature vector and its random-feature null need ``policy_features`` and the SAE's
    ``w_dec`` [d_sae, d_model]; without them, or with no selected feature, they are left
    out (logged). Both models are steered with these same vectors.
    """
    if not np.isfinite(norm) or norm <= 0:
        raise ValueError(f"steering norm must be positive and finite, got {norm}")
    u = np.asarray(direction, np.float64).ravel()
    d = len(u)
    rows: list[dict] = []

    def add(name, fam, v, feats=(), lean=()):
        v = np.asarray(v, np.float64).ravel()
        if len(v) != d:
            raise ValueError(f"vector {name!r} has {len(v)} dims, the direction {d}")
        rows.append({"vector": name, "family": fam, "layer": layer, "norm": float(norm),
                     "cos_partisan": _cos(v, u), "features": list(feats),
                     "leanings": list(lean), "values": scaled(v, norm).tolist()})

    add("direction", "direction", u)
    if direction_instruct is not None:
        add("direction_instruct", "direction_instruct", direction_instruct)
    rng = np.random.default_rng((seed, 0x5EED))  # a stream of its own, not the plain seed's
    for k in range(n_random_directions):
        add(f"random_direction_{k:02d}", "random_direction", rng.standard_normal(d))
    if policy_features is not None and w_dec is not None:
        W = np.asarray(w_dec, np.float64)
        if W.shape[1] != d:
            raise ValueError(f"SAE decoder rows have {W.shape[1]} dims, the direction {d}")
        fr, feats, lean = policy_feature_rows(policy_features, W, n_features, source)
        if feats:
            add("feature", "feature", fr.sum(0), feats, lean)
            log.info("feature vector from features %s (leanings %s): cosine %.3f with the "
                     "partisan direction", feats, lean, rows[-1]["cos_partisan"])
            nulls = random_feature_rows(policy_features, W, len(feats), n_random_feature_sets,
                                        seed + 1, source)
            for k, (r, f, sg) in enumerate(nulls):
                add(f"random_features_{k:02d}", "random_features", r.sum(0), f, sg)
        else:
            log.warning("%s: no policy feature selected: no feature vector", source)
    return pl.DataFrame(rows, schema=VECTOR_TABLE_SCHEMA)


@torch.inference_mode()
def residual_token_norm(model, tokenizer, texts: Sequence[str], layer: int,
                        batch_size: int = 16) -> float:
    """Median L2 norm of the block-``layer`` output over every content token of ``texts``
    (each text tokenised alone with special tokens; BOS excluded): the dose unit of both
    models, measured on the base model."""
    norms = _token_norms(model, tokenizer, list(texts), layer, batch_size)
    if not len(norms):
        raise ValueError("no content tokens to measure the residual norm on")
    return float(np.median(norms))


def partisan_direction(table: pl.DataFrame, role: str, layer: int, method: str,
                       source: str = "directions.parquet") -> np.ndarray:
    """The ``role`` model's partisan direction [d_model] at ``layer`` by ``method`` from a
    results/partisan/{pair}/directions.parquet table (columns model, layer, method,
    direction), pointing left -> right."""
    missing = {"model", "layer", "method", "direction"} - set(table.columns)
    if missing:
        raise ValueError(f"{source}: lacks columns {sorted(missing)} (rule fit_partisan_probes)")
    d = table.filter((pl.col("model") == role) & (pl.col("layer") == layer)
                     & (pl.col("method") == method))
    if d.height != 1:
        raise ValueError(f"{source}: no {role} '{method}' direction at layer {layer}; "
                         "steering.layer must be one of the extracted layers")
    return np.asarray(d["direction"][0], np.float64)


def build_steering_vectors(
    base_model,
    tokenizer,
    questions: Sequence[str],
    directions: pl.DataFrame,
    *,
    settings: SteeringSettings,
    method: str,
    n_features: int = 3,
    policy_features: pl.DataFrame | None = None,
    w_dec: np.ndarray | None = None,
    directions_source: str = "directions.parquet",
    features_source: str = "policy features",
) -> tuple[pl.DataFrame, float]:
    """(vector table, dose norm) of one pair: the dose unit measured on the base model over
    ``questions`` (:func:`residual_token_norm`), both models' partisan directions
    (:func:`partisan_direction`) and, with ``policy_features`` and the SAE's ``w_dec``, the
    oriented feature vector and its random-feature null (:func:`steering_vector_set`).
    ``settings`` gives the layer, the null sizes and the seed."""
    layer = settings.layer
    direction = partisan_direction(directions, "base", layer, method, directions_source)
    instruct = partisan_direction(directions, "instruct", layer, method, directions_source)
    norm = residual_token_norm(base_model, tokenizer, list(questions), layer)
    log.info("dose unit: base median residual norm %.4g at layer %d", norm, layer)
    table = steering_vector_set(
        layer, norm, direction, direction_instruct=instruct, policy_features=policy_features,
        w_dec=w_dec, n_features=n_features, n_random_directions=settings.n_random_directions,
        n_random_feature_sets=settings.n_random_feature_sets, seed=settings.seed,
        source=features_source)
    for r in table.filter(~pl.col("family").str.starts_with("random")).iter_rows(named=True):
        log.info("%s: cosine %.3f with the base partisan direction", r["vector"],
                 r["cos_partisan"])
    return table, norm
