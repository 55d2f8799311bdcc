"""The crosscoder's latents, one row each, and what the paired tokens say about them.

Per latent: decoder norm per model (normalised units: each model's activations at
mean norm sqrt(d_model)), ``relative_norm = norm_instruct / (norm_base +
norm_instruct)``, a class (``base_only`` if relative_norm <= base_only_max,
``instruct_only`` if >= instruct_only_min, else ``shared``; ``dead`` if it never fires
on the held-out tokens), Latent Scaling betas and ratios with ``class_scaled`` (a
model-specific latent flagged by Latent Scaling becomes ``shared``), firing rate
(share of held-out tokens), cosine of its dominant decoder (the model with the larger
norm) with the base model's partisan direction fitted on the paired statements, in the
pair's reading context (null when the statements have no left/right labels), and its
top-activating statements. One streaming pass over the paired file's held-out (eval)
split per crosscoder: the crosscoders trained on the train split, and variance explained,
firing, Latent Scaling and top statements are all read on statements they never saw.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import torch

from rlhf_audit.diffing.crosscoder import BatchTopKCrossCoder, load_crosscoder
from rlhf_audit.diffing.inputs import context_direction, partisan_direction
from rlhf_audit.diffing.latent_scaling import ScalingSums, scaling_flag
from rlhf_audit.diffing.paired import cluster_of, iter_paired, paired_info, train_tokens
from rlhf_audit.diffing.settings import DiffingSettings, resolve_device

log = logging.getLogger(__name__)

N_SHARED_REFERENCE = 256
"""Shared latents (random sample) given Latent Scaling ratios as a reference."""


def classify(relative_norm: np.ndarray, firing: np.ndarray,
             settings: DiffingSettings) -> np.ndarray:
    """Class per latent (see module docstring)."""
    r = np.asarray(relative_norm, float)
    cls = np.where(r <= settings.base_only_max, "base_only",
                   np.where(r >= settings.instruct_only_min, "instruct_only", "shared"))
    return np.where(np.asarray(firing) > 0, cls, "dead").astype(object)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


@torch.no_grad()
def evaluate(cc: BatchTopKCrossCoder, paired_path: str | os.PathLike, settings: DiffingSettings,
             *, candidates: np.ndarray | None = None, own: np.ndarray | None = None,
             top: bool = True, batch_rows: int = 4096, split: str | None = "eval",
             statement_vectors: bool = False) -> dict:
    """One pass over the ``split`` tokens (default the held-out ones; None: all): firing
    counts, per-statement squared error and total variance per model, Latent Scaling sums
    for ``candidates`` and (``top``) per-latent top statements. ``statement_vectors``:
    also each statement's summed raw activations and raw reconstructions per model
    (``"vectors"`` ``[n_statements, 4, d_model]``: data base, data instruct, recon base,
    recon instruct), its token count, label and issue."""
    info = paired_info(paired_path)
    # [batch, n_latents] activations stay under ~256 MiB whatever the dictionary size
    batch_rows = min(batch_rows, max(128, 2**26 // cc.n_latents))
    mu = torch.tensor([info["mean_base"], info["mean_instruct"]], dtype=torch.float32)
    dev = cc.W_dec.device
    mu = mu.to(dev) * cc.scale[:, None]
    L = cc.n_latents
    fired = np.zeros(L, np.int64)
    stmt_index: dict[str, int] = {}
    clusters: list[str] = []
    sse: list[np.ndarray] = []
    sst: list[np.ndarray] = []
    sums = ScalingSums(cc.W_dec, candidates, own) if candidates is not None and len(
        candidates) else None
    best = None
    m = settings.top_statements
    n_tok = 0
    vec: list[np.ndarray] = []
    stmt_meta: list[tuple] = []  # (prompt_id, label, issue) per statement
    stmt_tokens: list[int] = []
    for meta, xb, xi in iter_paired(paired_path, batch_rows, meta=True, split=split):
        x = cc.normalise(torch.from_numpy(xb).to(dev), torch.from_numpy(xi).to(dev))
        recon, f = cc(x)
        pid = meta["prompt_id"].to_list()
        for p, issue, label in zip(pid, meta["issue"].to_list(), meta["label"].to_list(),
                                   strict=True):
            if p not in stmt_index:
                stmt_index[p] = len(stmt_index)
                clusters.append(cluster_of(p, issue))
                sse.append(np.zeros(2))
                sst.append(np.zeros(2))
                if statement_vectors:
                    vec.append(np.zeros((4, xb.shape[1])))
                    stmt_meta.append((p, label, issue))
                    stmt_tokens.append(0)
        si = np.fromiter((stmt_index[p] for p in pid), np.int64, len(pid))
        if statement_vectors:
            raw = (recon / cc.scale[None, :, None]).cpu().numpy()  # back to activation units
            rows = np.concatenate([xb[:, None], xi[:, None], raw], axis=1)
            uniq, inv = np.unique(si, return_inverse=True)
            acc = np.zeros((len(uniq), 4, xb.shape[1]))
            np.add.at(acc, inv, rows)
            cnt = np.bincount(inv, minlength=len(uniq))
            for k, u in enumerate(uniq):
                vec[u] += acc[k]
                stmt_tokens[u] += int(cnt[k])
        e = (x - recon).pow(2).sum(-1).double().cpu().numpy()  # [B, 2]
        t = (x - mu).pow(2).sum(-1).double().cpu().numpy()
        acc_e = np.zeros((len(stmt_index), 2))
        acc_t = np.zeros((len(stmt_index), 2))
        np.add.at(acc_e, si, e)
        np.add.at(acc_t, si, t)
        for k in np.unique(si):
            sse[k] += acc_e[k]
            sst[k] += acc_t[k]
        rows, lat = torch.nonzero(f, as_tuple=True)
        acts = f[rows, lat].cpu().numpy()
        rows, lat = rows.cpu().numpy(), lat.cpu().numpy()
        fired += np.bincount(lat, minlength=L)
        if sums is not None:
            sums.add(x, recon, f)
        if top and len(rows):
            d = pl.DataFrame({"latent": lat.astype(np.int32),
                              "stmt": si[rows].astype(np.int32), "activation": acts})
            d = d.group_by(["latent", "stmt"]).agg(pl.col("activation").max())
            best = d if best is None else pl.concat([best, d]).group_by(
                ["latent", "stmt"]).agg(pl.col("activation").max())
            # ties (equal activations) broken by statement, so two runs agree bit for bit
            best = best.sort(["activation", "stmt"], descending=[True, False]).group_by(
                "latent", maintain_order=True).head(m)
        n_tok += len(xb)
    ids = list(stmt_index)
    extra = {"vectors": np.array(vec) if vec else np.zeros((0, 4, 0)),
             "statement_meta": stmt_meta, "statement_tokens": stmt_tokens,
             } if statement_vectors else {}
    return {**extra, "n_tokens": n_tok, "fired": fired, "statements": ids, "clusters": clusters,
            "sse": np.array(sse), "sst": np.array(sst),
            "scaling": sums.table() if sums is not None else None,
            "top": best if best is not None else pl.DataFrame(
                schema={"latent": pl.Int32, "stmt": pl.Int32, "activation": pl.Float32})}


def statement_vector_table(ev: dict) -> pl.DataFrame:
    """Per held-out statement: prompt_id, label, issue, n_tokens and its token-mean raw
    activations and crosscoder reconstructions per model (``data_base``, ``data_instruct``,
    ``recon_base``, ``recon_instruct``, [d_model] each): what the partisan contrast of the
    data and of the reconstruction is computed from (:func:`rlhf_audit.diffing.summary`)."""
    meta = ev["statement_meta"]
    n = np.array(ev["statement_tokens"], dtype=np.int64)
    mean = (ev["vectors"] / np.maximum(n, 1)[:, None, None]).astype(np.float32)
    cols = {"prompt_id": [p for p, _, _ in meta], "label": [lab for _, lab, _ in meta],
            "issue": [iss for _, _, iss in meta]}
    df = pl.DataFrame(cols, schema={"prompt_id": pl.String, "label": pl.String,
                                    "issue": pl.String}).with_columns(
        pl.Series("n_tokens", n))
    d = mean.shape[2] if mean.ndim == 3 else 0
    for j, name in enumerate(("data_base", "data_instruct", "recon_base", "recon_instruct")):
        df = df.with_columns(pl.Series(name, np.ascontiguousarray(mean[:, j]),
                                       dtype=pl.Array(pl.Float32, d)))
    return df


def fve(sse: np.ndarray, sst: np.ndarray) -> float:
    """Fraction of variance explained: 1 - sum squared error / sum squared deviation."""
    return float(1.0 - np.sum(sse) / np.sum(sst)) if np.sum(sst) > 0 else float("nan")


def latent_table(cc: BatchTopKCrossCoder, ev: dict, settings: DiffingSettings,
                 partisan_direction: np.ndarray | None = None) -> pl.DataFrame:
    """The per-latent table (columns in the module docstring)."""
    W = cc.W_dec.detach().cpu().numpy().astype(np.float32)  # [2, L, d]
    nb, ni = np.linalg.norm(W[0], axis=1), np.linalg.norm(W[1], axis=1)
    with np.errstate(all="ignore"):
        rel = ni / (nb + ni)
    firing = ev["fired"] / max(ev["n_tokens"], 1)
    cls = classify(rel, ev["fired"], settings)
    dominant = np.where((ni >= nb)[:, None], W[1], W[0])
    if partisan_direction is not None:
        p = np.asarray(partisan_direction, np.float64).ravel()
        if len(p) != W.shape[2]:
            raise ValueError(f"partisan direction has {len(p)} dims, the crosscoder "
                             f"{W.shape[2]}: is it from the diffing layer?")
        cos = _unit(dominant.astype(np.float64)) @ (p / np.linalg.norm(p))
    else:
        cos = np.full(len(nb), None)
    L = len(nb)
    df = pl.DataFrame({
        "latent": np.arange(L, dtype=np.int32), "norm_base": nb, "norm_instruct": ni,
        "relative_norm": rel, "class": cls.tolist(), "firing_rate": firing,
        "cos_partisan": pl.Series(cos.tolist(), dtype=pl.Float64),
        # straight from numpy: no per-float Python objects at 131k x 4096
        "decoder_base": pl.Series("decoder_base", np.ascontiguousarray(W[0])),
        "decoder_instruct": pl.Series("decoder_instruct", np.ascontiguousarray(W[1])),
    })
    cols = ["beta_error_base", "beta_error_instruct", "beta_recon_base", "beta_recon_instruct",
            "nu_error", "nu_recon"]
    if ev["scaling"] is not None:
        s = pl.DataFrame({k: ev["scaling"][k] for k in ["latent", *cols]}).with_columns(
            pl.col("latent").cast(pl.Int32), pl.col(cols).fill_nan(None))
        df = df.join(s, on="latent", how="left")
    else:
        df = df.with_columns([pl.lit(None, pl.Float64).alias(c) for c in cols])
    specific = pl.col("class").is_in(["base_only", "instruct_only"])
    flag = pl.Series(scaling_flag(df["nu_error"].fill_null(np.nan).to_numpy(),
                                  df["nu_recon"].fill_null(np.nan).to_numpy(),
                                  settings.max_scaling_ratio))
    df = df.with_columns(
        pl.when(specific).then(flag).otherwise(None).alias("scaling_flag"))
    return df.with_columns(
        pl.when(specific & pl.col("scaling_flag")).then(pl.lit("shared"))
        .otherwise(pl.col("class")).alias("class_scaled"))


def scaling_candidates(cc: BatchTopKCrossCoder, settings: DiffingSettings,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latents given Latent Scaling: every model-specific one by decoder norms, plus a
    random sample of shared ones as reference; and each one's own model (0 base, 1 instruct)."""
    n = cc.decoder_norms().detach().cpu().numpy()
    rel = n[1] / (n[0] + n[1])
    specific = np.flatnonzero((rel <= settings.base_only_max) | (rel >= settings.instruct_only_min))
    shared = np.setdiff1d(np.arange(len(rel)), specific)
    rng = np.random.default_rng(seed)
    ref = rng.choice(shared, min(len(shared), N_SHARED_REFERENCE), replace=False)
    idx = np.sort(np.concatenate([specific, ref])).astype(np.int64)
    return idx, (rel[idx] >= 0.5).astype(np.int64)


def top_statements(ev: dict, texts: dict[str, str] | None = None) -> pl.DataFrame:
    """latent, rank (0 = strongest), prompt_id, text (if given), activation (max over tokens)."""
    t = ev["top"].sort(["latent", "activation", "stmt"], descending=[False, True, False])
    ids = np.asarray(ev["statements"], dtype=object)
    pid = ids[t["stmt"].to_numpy()] if t.height else np.array([], dtype=object)
    out = t.with_columns(pl.Series("prompt_id", pid.tolist(), dtype=pl.String),
                         (pl.col("latent").cum_count().over("latent") - 1).cast(pl.Int32)
                         .alias("rank")).select("latent", "rank", "prompt_id", "activation")
    if texts is not None:
        out = out.with_columns(pl.col("prompt_id").replace_strict(texts, default=None)
                               .alias("text"))
    return out


def analyse_crosscoders(paired_path: str | os.PathLike, crosscoder_dir: str | os.PathLike,
                        settings: DiffingSettings, partisan_direction: np.ndarray | None = None,
                        texts: dict[str, str] | None = None, device: str = "cpu") -> dict:
    """Every seed's crosscoder evaluated; the primary one's latent and top-statement tables.

    Returns {"latents", "top_statements" (frames), "per_seed" (one dict per seed: class
    counts before/after Latent Scaling, FVE per model, dead share, held-out tokens read,
    mean latents firing per held-out token at the inference threshold),
    "statement_errors" (primary seed: per held-out statement sse/sst per model, for the FVE
    bootstrap)}.
    """
    import json

    crosscoder_dir = Path(crosscoder_dir)
    index = json.loads((crosscoder_dir / "index.json").read_text())
    per_seed, out = [], {}
    for run in index["runs"]:
        cc = load_crosscoder(crosscoder_dir / run["dir"]).to(resolve_device(device))
        primary = run["dir"] == index["primary"]
        cand, own = scaling_candidates(cc, settings, run["seed"])
        ev = evaluate(cc, paired_path, settings, candidates=cand, own=own, top=primary,
                      statement_vectors=primary)
        table = latent_table(cc, ev, settings, partisan_direction)
        counts = {f"n_{c}": int((table["class"] == c).sum()) for c in
                  ("base_only", "shared", "instruct_only", "dead")}
        counts |= {f"n_{c}_scaled": int((table["class_scaled"] == c).sum()) for c in
                   ("base_only", "instruct_only")}
        rec = {"seed": run["seed"], **counts,
               "fve_base": fve(ev["sse"][:, 0], ev["sst"][:, 0]),
               "fve_instruct": fve(ev["sse"][:, 1], ev["sst"][:, 1]),
               "dead_share": counts["n_dead"] / cc.n_latents, "n_tokens_eval": ev["n_tokens"],
               # latents firing per held-out token at the learned threshold (training: k)
               "l0_eval": float(ev["fired"].sum() / max(ev["n_tokens"], 1))}
        if partisan_direction is not None:
            for c in ("instruct_only", "base_only"):
                sel = table.filter(pl.col("class_scaled") == c)["cos_partisan"].abs()
                rec[f"max_abs_cos_partisan_{c}"] = float(sel.max()) if len(sel) else None
                rec[f"n_for_cos_{c}"] = len(sel)
            rec["partisan_relative_norm"] = partisan_relative_norm(
                table, settings.partisan_latents, partisan_direction, seed=run["seed"])
        per_seed.append(rec)
        if primary:
            out["latents"] = table
            out["top_statements"] = top_statements(ev, texts)
            out["statement_errors"] = {"statements": ev["statements"],
                                       "clusters": ev["clusters"], "sse": ev["sse"],
                                       "sst": ev["sst"]}
            out["statement_vectors"] = statement_vector_table(ev)
        log.info("crosscoder %s: %s", run["dir"], rec)
    out["per_seed"] = per_seed
    return out


def diff_sae_table(W_dec: np.ndarray, latents: pl.DataFrame,
                   partisan_direction: np.ndarray | None = None) -> pl.DataFrame:
    """Per diff-SAE latent (decoder rows ``W_dec`` [n, d]): |cos| with the partisan direction
    and the best |cos| with a crosscoder instruct-only latent (after Latent Scaling) along its
    instruct-minus-base decoder."""
    W = _unit(np.asarray(W_dec, np.float64))
    sel = latents.filter(pl.col("class_scaled") == "instruct_only")
    n = W.shape[0]
    out = {"latent": np.arange(n, dtype=np.int32)}
    if sel.height:
        D = (sel["decoder_instruct"].to_numpy().astype(np.float64)
             - sel["decoder_base"].to_numpy().astype(np.float64))
        C = np.abs(W @ _unit(D).T)
        out["best_cos_instruct_only"] = C.max(1)
        out["best_instruct_only_latent"] = sel["latent"].to_numpy()[C.argmax(1)]
    else:
        out["best_cos_instruct_only"] = np.full(n, np.nan)
        out["best_instruct_only_latent"] = np.full(n, -1, np.int32)
    if partisan_direction is not None:
        p = np.asarray(partisan_direction, np.float64).ravel()
        out["cos_partisan"] = W @ (p / np.linalg.norm(p))
    else:
        out["cos_partisan"] = np.full(n, None)
    return pl.DataFrame(out).with_columns(pl.col("best_cos_instruct_only").fill_nan(None),
                                          pl.col("cos_partisan").cast(pl.Float64))


N_NULL_DRAWS = 1000
"""Draws of the shared-latent nulls."""
MATCH_POOL = 10
"""Shared latents nearest in firing rate that each model-specific latent is matched to."""


def matched_shared(latents: pl.DataFrame, cls: str, *, n_draws: int = N_NULL_DRAWS,
                   pool: int = MATCH_POOL, seed: int = 0) -> np.ndarray | None:
    """Null samples for statistics over the ``class_scaled == cls`` latents: ``[n_draws,
    n]`` row positions of live shared latents (shared by decoder norm, not reclassed),
    each of the n latents matched to one of the ``pool`` shared latents nearest it in
    log firing rate, drawn anew in every draw. None when either set is empty.

    The null has to come from the same dictionary: decoders and the partisan direction
    both live in the activations' few high-variance directions, so isotropic random
    vectors (the former null) sit far lower than learned latents do (the largest of 3
    |cos|: 97.5th percentile 0.24 at d = 128, 0.04 at d = 4096) and any latent beat them."""
    cls_pos = np.flatnonzero((latents["class_scaled"] == cls).to_numpy())
    return _matched(latents, cls_pos, n_draws=n_draws, pool=pool, seed=seed)


def _matched(latents: pl.DataFrame, positions: np.ndarray, *, n_draws: int, pool: int,
             seed: int, targets: np.ndarray | None = None) -> np.ndarray | None:
    """``[n_draws, len(targets)]`` row positions of live shared latents (shared by decoder
    norm and after Latent Scaling, ``positions`` left out), each of ``targets`` (default
    ``positions``) matched to one of the ``pool`` nearest it in log firing rate, drawn
    anew in every draw."""
    shared = np.flatnonzero(((latents["class"] == "shared")
                             & (latents["class_scaled"] == "shared")).to_numpy())
    shared = np.setdiff1d(shared, positions)
    positions = positions if targets is None else targets
    if not len(positions) or not len(shared):
        return None
    rate = np.log(np.maximum(latents["firing_rate"].to_numpy().astype(float), 1e-12))
    k = min(pool, len(shared))
    # each latent's k nearest shared latents by log firing rate
    near = np.argsort(np.abs(rate[shared][None, :] - rate[positions][:, None]), axis=1,
                      kind="stable")[:, :k]
    pick = np.random.default_rng(seed).integers(0, k, (n_draws, len(positions)))
    return shared[near[np.arange(len(positions))[None, :], pick]]


PARTISAN_POOL = 50
"""Shared latents nearest in firing rate each partisan latent is matched to in the null."""
MIN_FIRING = 1e-3
"""Smallest held-out firing rate of a latent that partisan_relative_norm may pick."""


def partisan_relative_norm(latents: pl.DataFrame, m: int, direction: np.ndarray, *,
                           n_draws: int = N_NULL_DRAWS, pool: int = PARTISAN_POOL,
                           min_firing: float = MIN_FIRING, seed: int = 0) -> dict | None:
    """Which crosscoder latents carry the base partisan direction, and how the two models
    write them: a descriptive, latent-level reading (the planted check is the partisan
    variance ratio of the reconstructions, :mod:`rlhf_audit.diffing.summary`).

    The ``m`` latents firing on at least ``min_firing`` of the held-out tokens whose
    **base** decoder is most aligned with ``direction`` (picking on the larger decoder
    would favour base-heavy latents whenever instruct's direction is rotated from
    base's, with no compression at all), and their mean relative norm: 0.5 when both
    models write them alike. For a latent that lies along the direction alone, a
    compression by c in the crosscoder's units (each model scaled to one mean norm, so
    relative to each model's typical latent, not raw) gives c / (1 + c); a direction
    spread over several latents, each mixed with other directions, reads closer to 0.5.
    The null: the same mean over ``m`` shared latents matched on firing rate, from the
    ``pool`` nearest each, with latents in the top 1% of base-decoder alignment left out
    of the pool, in ``n_draws`` draws. Returns {"value", "latents" (ids), "cos" (their
    base-decoder |cos|), "null" (the draws)}, or None when no latent qualifies."""
    p = np.asarray(direction, np.float64).ravel()
    p = p / np.linalg.norm(p)
    Wb = latents["decoder_base"].to_numpy()
    # in chunks: a float64 copy of every base decoder is 4.3 GB at 131k x 4096
    cos = np.concatenate([np.abs(_unit(Wb[s:s + 8192].astype(np.float64)) @ p)
                          for s in range(0, len(Wb), 8192)]) if len(Wb) else np.zeros(0)
    firing = latents["firing_rate"].to_numpy().astype(float)
    live = np.flatnonzero((latents["class"] != "dead").to_numpy() & (firing >= min_firing))
    if m < 1 or len(live) < m:
        return None
    top = live[np.argsort(-cos[live], kind="stable")[:m]]
    aligned = live[cos[live] >= np.quantile(cos[live], 0.99)]
    rel = latents["relative_norm"].to_numpy().astype(float)
    draws = _matched(latents, np.union1d(top, aligned), n_draws=n_draws, pool=pool,
                     seed=seed, targets=top)
    return {"value": float(rel[top].mean()), "latents": latents["latent"].to_numpy()[top].tolist(),
            "cos": cos[top].tolist(),
            "null": None if draws is None else rel[draws].mean(1).tolist()}


def best_abs_cos(D: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Per row of ``D`` [n, d]: the largest |cosine| with a row of ``W`` [m, d]."""
    if not len(D):
        return np.zeros(0)
    return np.abs(_unit(np.asarray(D, np.float64)) @ _unit(np.asarray(W, np.float64)).T).max(1)


def _diffs(rows: pl.DataFrame) -> np.ndarray:
    """Instruct-minus-base decoder rows [n, d]."""
    return (rows["decoder_instruct"].to_numpy().astype(np.float64)
            - rows["decoder_base"].to_numpy().astype(np.float64))


def shared_nulls(latents: pl.DataFrame, W_diff_sae: np.ndarray | None, *,
                 has_direction: bool, seed: int = 0) -> tuple[dict, list | None]:
    """Draws of the nulls, from :func:`matched_shared`: per model-specific class, the
    largest |cos| with the partisan direction over the matched shared latents (when there
    is a direction); and, for the diff-SAE match, the mean over the instruct_only class's
    matched shared latents of each one's best |cos| with a diff-SAE latent along its
    instruct-minus-base decoder (None without instruct_only or shared latents)."""
    draws = {c: matched_shared(latents, c, seed=seed) for c in ("instruct_only", "base_only")}
    nulls = {}
    if has_direction:
        cos = latents["cos_partisan"].to_numpy().astype(float)
        nulls = {c: np.abs(cos[dr]).max(1).tolist() for c, dr in draws.items()
                 if dr is not None}
    match = None
    if W_diff_sae is not None and draws["instruct_only"] is not None:
        used = np.unique(draws["instruct_only"])  # only the latents drawn: cheap at 131k
        b = np.full(latents.height, np.nan)
        b[used] = best_abs_cos(_diffs(latents[used]), W_diff_sae)
        match = b[draws["instruct_only"]].mean(1).tolist()
    return nulls, match


def analyse_pair(*, paired, crosscoder_dir, diff_sae_dir, prompts: pl.DataFrame, directions,
                 method: str, settings: DiffingSettings, outputs: dict,
                 C: float | None = None,
                 provenance: dict | None = None, device: str = "cpu") -> dict:
    """Rule analyse_diffing: write latents, top statements, diff-SAE latents and summary.json.

    The partisan direction every ``cos_partisan`` column reads is the base-role model's,
    fitted on the paired file's statements (:func:`rlhf_audit.diffing.inputs.
    context_direction`), so it lives where the decoders do. Only when those statements
    carry no left/right labels is the partisan study's (``directions``, read natively)
    used instead. summary.json's ``partisan_direction`` holds the direction, its source
    and counts (the steering step orients its vectors with it; summarise_diffing compares
    it with the partisan study's)."""
    import json

    from rlhf_audit.diffing.diff_sae import load_diff_sae_decoder
    from rlhf_audit.io import write_json, write_table

    info = paired_info(paired)
    train_tokens(info, paired)  # a file from before the split: say so before any work
    direction, dir_info = context_direction(paired, method, C=1.0 if C is None else C)
    if direction is None and directions:
        # statements without sides (a generic corpus): the partisan study's direction, read
        # natively, is the only one there is; summary.json says so
        direction = partisan_direction(directions, settings.layer, method)
        dir_info["source"] = "partisan_study" if direction is not None else None
    dir_info["direction"] = None if direction is None else direction.tolist()
    texts = dict(zip(prompts["id"].cast(pl.String), prompts["text"], strict=True))
    res = analyse_crosscoders(paired, crosscoder_dir, settings, direction, texts, device)
    lat = res["latents"]
    top = res["top_statements"]
    lat = lat.join(top.group_by("latent").agg(pl.col("prompt_id").sort_by("rank")
                                              .alias("top_statements")), on="latent", how="left")
    W = load_diff_sae_decoder(diff_sae_dir)
    ds = diff_sae_table(W, lat, direction)
    dsum = json.loads((Path(diff_sae_dir) / "training_summary.json").read_text())
    ds = ds.with_columns(pl.Series("firing_rate", dsum["firing_rate"], dtype=pl.Float64))
    nulls, null_match = shared_nulls(lat, W, has_direction=direction is not None,
                                     seed=settings.seed)
    sel = lat.filter(pl.col("class_scaled") == "instruct_only")
    best = best_abs_cos(_diffs(sel), W).tolist() if sel.height else []
    cos_p = ds["cos_partisan"].drop_nulls().abs()
    summary = {
        "per_seed": res["per_seed"], "statement_errors": {
            "statements": res["statement_errors"]["statements"],
            "clusters": res["statement_errors"]["clusters"],
            "sse": res["statement_errors"]["sse"].tolist(),
            "sst": res["statement_errors"]["sst"].tolist()},
        "nulls": nulls,
        "split": {k: info[k] for k in ("eval_share", "split_seed", "n_clusters_train",
                                       "n_clusters_eval", "n_tokens_train", "n_tokens_eval")},
        "mean_norms": [info["mean_norm_base"], info["mean_norm_instruct"]],
        "context": {"context": info.get("context", "native"),
                    "same_position_share": info.get("same_position_share"),
                    "identical_input_share": info.get("identical_input_share")},
        "diff_sae": {"fve": dsum["fve"], "n_tokens": dsum["n_tokens"], "n_latents": W.shape[0],
                     "best_cos_instruct_only": best, "null_match": null_match,
                     "max_abs_cos_partisan": float(cos_p.max()) if len(cos_p) else None},
        "settings": settings.to_dict(), "has_partisan_direction": direction is not None,
        "partisan_direction": dir_info,
    }
    write_table(lat, outputs["latents"], provenance)
    write_table(res["statement_vectors"], outputs["statement_vectors"], provenance)
    write_table(top, outputs["top_statements"], provenance)
    write_table(ds, outputs["diff_sae_latents"], provenance)
    write_json(summary, outputs["summary"])
    return summary
