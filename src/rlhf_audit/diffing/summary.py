"""Headline numbers of the diffing study (``diffing.{pair}.{key}``); no torch import."""

from __future__ import annotations

import logging
import math

import numpy as np
import polars as pl

from rlhf_audit.stats import Estimate, bootstrap

log = logging.getLogger(__name__)

PDIR_SHORT = ("fitted with the partisan study's first method on the pair's base-role "
              "tokens of the paired statements, both splits, read as the crosscoder reads them")
PDIR = ("pointing right, " + PDIR_SHORT + "; partisan_direction_cos_study compares it with "
        "the partisan study's own")
SEEDS = ("range (min-max) over the crosscoder training seeds, not a confidence interval "
         "(value: the first seed; n: the seeds)")
MATCHED = ("shared latents of the same crosscoder, each model-specific latent matched to one "
           "of the 10 shared latents nearest it in firing rate")

HEADLINE_KEYS = {
    "n_instruct_only": "Crosscoder latents classed instruct_only by relative decoder norm (count); "
                       "interval: " + SEEDS,
    "n_base_only": "Crosscoder latents classed base_only by relative decoder norm (count); "
                   "interval: " + SEEDS,
    "n_shared": "Crosscoder latents classed shared (count); interval: " + SEEDS,
    "n_dead": "Crosscoder latents that never fire on the held-out paired tokens (count); "
              "interval: " + SEEDS,
    "n_instruct_only_scaled": "instruct_only latents that Latent Scaling does not explain by the "
                              "base model (both ratios below diffing.max_scaling_ratio; count); "
                              "interval: " + SEEDS,
    "n_base_only_scaled": "base_only latents that Latent Scaling does not explain by the instruct "
                          "model (count); interval: " + SEEDS,
    "dead_share": "Share of crosscoder latents that never fire on the held-out paired tokens; "
                  "interval: " + SEEDS,
    "l0": "Crosscoder latents firing per held-out token at the inference threshold (training "
          "keeps diffing.k a token on average over each batch); interval: " + SEEDS,
    "fve_base": "Fraction of variance of the base model's (normalised) paired activations "
                "explained by the crosscoder, on held-out statements (issues it was not trained "
                "on, diffing.eval_share of them); interval: bootstrap over those issues (a "
                "prompt without one: its own cluster; n: held-out issues), for the first "
                "crosscoder seed and this one split: the other seed and other splits move it "
                "by about as much again",
    "fve_instruct": "Fraction of variance of the instruct model's paired activations explained "
                    "by the crosscoder, on held-out statements; interval: bootstrap over the "
                    "held-out issues, as fve_base",
    "max_abs_cos_partisan_instruct_only": "Strongest |cosine| between an instruct_only latent's "
                                          "instruct decoder (after Latent Scaling) and the base "
                                          "partisan direction (" + PDIR + "); interval: " + SEEDS,
    "max_abs_cos_partisan_base_only": "Strongest |cosine| between a base_only latent's base "
                                      "decoder (after Latent Scaling) and the partisan direction; "
                                      "interval: " + SEEDS,
    "null_max_abs_cos_instruct_only": "Null for max_abs_cos_partisan_instruct_only: the same "
                                      "maximum over as many " + MATCHED + " (median; interval: "
                                      "2.5-97.5 percentiles of 1000 draws)",
    "null_max_abs_cos_base_only": "Null for max_abs_cos_partisan_base_only (matched shared "
                                  "latents, as above)",
    "partisan_relative_norm": "Descriptive, latent level: mean relative decoder norm "
                              "|d_instruct|/(|d_base|+|d_instruct|) of the "
                              "diffing.partisan_latents latents (firing on at least 0.1% of "
                              "held-out tokens) whose base decoder is most aligned with the "
                              "base partisan direction. In the crosscoder's units (each model "
                              "scaled to one mean norm), so relative to each model's typical "
                              "latent; a latent along that direction alone reads c/(1+c) when "
                              "instruct writes it c times as strongly, a direction spread "
                              "over mixed latents reads nearer 0.5 (the planted check is "
                              "variance_ratio_recon); interval: " + SEEDS,
    "null_partisan_relative_norm": "Null for partisan_relative_norm, first seed: the same mean "
                                   "over as many shared latents, each matched to one of the 50 "
                                   "nearest the picked latent in firing rate (the 1% most "
                                   "aligned latents left out); median, and 2.5-97.5 "
                                   "percentiles of 1000 draws",
    "partisan_relative_norm_minus_null": "partisan_relative_norm minus its null's median (first "
                                         "seed); lo/hi: a seed-wise null band, not a confidence "
                                         "interval: from the lowest seed's value minus its own "
                                         "null's 97.5th percentile to the highest seed's value "
                                         "minus its own null's 2.5th percentile (hi < 0: every "
                                         "seed's picked latents below 97.5% of matched ones)",
    "variance_ratio_data": "Instruct/base partisan variance of the held-out statements' "
                           "activations at the diffing layer (token means over the paired "
                           "content tokens, raw units; the partisan study's split-half "
                           "estimator: |right-minus-left mean difference|^2, every "
                           "dimension); the reference for variance_ratio_recon; interval: "
                           "bootstrap over the held-out issues, refitting",
    "variance_ratio_recon": "The same partisan variance ratio read off the first crosscoder "
                            "seed's reconstructions of those statements (raw units): whether "
                            "the dictionary carries what changed in the partisan geometry; "
                            "interval: bootstrap over the held-out issues, refitting",
    "variance_ratio_recon_over_data": "variance_ratio_recon / variance_ratio_data: how "
                                      "faithfully the first crosscoder seed's "
                                      "reconstructions carry the activations' partisan "
                                      "variance ratio (1 = exactly; below 1 they read a "
                                      "smaller ratio than the activations); interval: "
                                      "paired bootstrap over the "
                                      "held-out issues (the same resamples for both)",
    "variance_ratio_recon_tied": "What variance_ratio_recon would read if the crosscoder's two "
                                 "decoders were equal: (instruct's mean activation norm / "
                                 "base's)^2 on the train tokens, the models' overall scale "
                                 "alone (exact; no interval)",
    "variance_ratio_recon_over_tied": "variance_ratio_recon / variance_ratio_recon_tied: the "
                                      "part of the reconstructions' partisan variance ratio "
                                      "that the two decoders differing carries, beyond the "
                                      "models' overall scale; interval: "
                                      "variance_ratio_recon's, divided by the exact tied value",
    "diff_sae_fve": "Fraction of variance of the instruct-minus-base differences explained by "
                    "the diff-SAE on the held-out paired tokens (no interval: one trained SAE; "
                    "n: held-out tokens)",
    "diff_sae_match_instruct_only": "Mean over instruct_only latents (after Latent Scaling) of "
                                    "the best |cosine| between the latent's instruct-minus-base "
                                    "decoder and a diff-SAE latent; interval: bootstrap over "
                                    "those latents",
    "null_diff_sae_match": "Null for diff_sae_match_instruct_only: the same mean over as many "
                           + MATCHED + ", each read along its instruct-minus-base decoder "
                           "(median; interval: 2.5-97.5 percentiles of 1000 draws)",
    "diff_sae_max_abs_cos_partisan": "Strongest |cosine| between a diff-SAE latent and the base "
                                     "partisan direction (no interval, no null)",
    "partisan_direction_cos_study": "Cosine of the partisan direction the latents are matched "
                                    "to (" + PDIR_SHORT + ") with the partisan study's base "
                                    "direction at the diffing layer, which reads each model "
                                    "in its own format: near 1 where both pool the same "
                                    "tokens (a bare base in diffing.context raw); lower, "
                                    "the other reading differs (no interval: two fitted "
                                    "directions; n: the labelled statements)",
    "steer_slope_{feature}": "Steering by a crosscoder latent's decoder ({feature} = "
                             "model_vector: model base/instruct steered; vector instruct_only/"
                             "base_only, random (the mean over diffing.steer.n_random random "
                             "directions, oriented toward the partisan direction as the latents "
                             "are) or instruct_only/base_only_minus_random (the latent's slope "
                             "minus that mean, the test)): slope of the projection score (the "
                             "base model reads the reply; its pooled activation projected on a "
                             "partisan direction fitted on its own reading of the statements, "
                             "cross-fitted over issues as the steering study's; + = right) per "
                             "unit alpha; interval: bootstrap over questions (every vector's "
                             "rows of a question together)",
}


def _over_seeds(vals: list, unit: str) -> Estimate:
    v = [float(x) for x in vals if x is not None and math.isfinite(float(x))]
    if not v:
        return Estimate(math.nan, math.nan, math.nan, 0, unit, SEEDS)
    first = float(vals[0]) if vals[0] is not None else math.nan
    return Estimate(first, min(v), max(v), len(v), unit, SEEDS)


def _null(draws: np.ndarray, unit: str = "|cos|", method: str = MATCHED) -> Estimate:
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not len(d):
        return Estimate(math.nan, math.nan, math.nan, 0, unit, method)
    lo, mid, hi = np.quantile(d, [0.025, 0.5, 0.975])
    return Estimate(float(mid), float(lo), float(hi), len(d), unit,
                    method + "; median and 2.5-97.5 percentiles of the draws")


def _partisan_relative_norm(per_seed: list[dict]) -> dict[str, Estimate]:
    """partisan_relative_norm, its null and their difference (see :data:`HEADLINE_KEYS`)."""
    recs = [r.get("partisan_relative_norm") for r in per_seed]
    if not recs or recs[0] is None:
        return {}
    out = {"partisan_relative_norm": _over_seeds([r and r["value"] for r in recs],
                                                 "relative norm")}
    with_null = [r for r in recs if r is not None and r.get("null")]
    if recs[0].get("null") and with_null:
        out["null_partisan_relative_norm"] = _null(
            recs[0]["null"], "relative norm",
            "shared latents, each matched to one of the 50 nearest a picked latent in firing "
            "rate (the 1% most aligned left out; first seed)")
        q = [(r["value"], *np.quantile(r["null"], [0.025, 0.5, 0.975])) for r in with_null]
        first = q[0][0] - q[0][2]
        out["partisan_relative_norm_minus_null"] = Estimate(
            float(first), float(min(v - hi for v, _, _, hi in q)),
            float(max(v - lo for v, lo, _, _ in q)), len(q), "relative norm",
            "value minus the matched null's median (first seed); lo/hi: a seed-wise null "
            "band (each seed's value against its own null's 2.5-97.5 percentiles, widened "
            "over the seeds), not a confidence interval")
    return out


def headline(per_seed: list[dict], statement_errors: dict, diff_sae: dict | None,
             steering: pl.DataFrame | None, *, nulls: dict | None = None,
             n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Every headline estimate (see :data:`HEADLINE_KEYS`)."""
    out: dict[str, Estimate] = {}
    for c in ("instruct_only", "base_only", "shared", "dead"):
        out[f"n_{c}"] = _over_seeds([r[f"n_{c}"] for r in per_seed], "latents")
    for c in ("instruct_only", "base_only"):
        out[f"n_{c}_scaled"] = _over_seeds([r[f"n_{c}_scaled"] for r in per_seed], "latents")
    out["dead_share"] = _over_seeds([r["dead_share"] for r in per_seed], "share")
    if all("l0_eval" in r for r in per_seed):
        out["l0"] = _over_seeds([r["l0_eval"] for r in per_seed], "latents a token")
    sse, sst = np.asarray(statement_errors["sse"]), np.asarray(statement_errors["sst"])
    groups = np.asarray(statement_errors.get("clusters") or statement_errors["statements"])
    for m, name in enumerate(("base", "instruct")):
        out[f"fve_{name}"] = bootstrap(lambda e, t: 1 - e.sum() / t.sum(), sse[:, m], sst[:, m],
                                       groups=groups, n_boot=n_boot, seed=seed, unit="FVE")
    for c in ("instruct_only", "base_only"):
        key = f"max_abs_cos_partisan_{c}"
        if key in per_seed[0]:
            out[key] = _over_seeds([r[key] for r in per_seed], "|cos|")
            if nulls and c in nulls:
                out[f"null_max_abs_cos_{c}"] = _null(nulls[c])
    out |= _partisan_relative_norm(per_seed)
    if diff_sae is not None:
        out["diff_sae_fve"] = Estimate(diff_sae["fve"], math.nan, math.nan, diff_sae["n_tokens"],
                                       "FVE", "no interval")
        best = np.asarray([x for x in diff_sae["best_cos_instruct_only"] if x is not None], float)
        if len(best):
            out["diff_sae_match_instruct_only"] = bootstrap(np.mean, best, n_boot=n_boot,
                                                            seed=seed, unit="|cos|")
        if diff_sae.get("null_match") is not None:
            out["null_diff_sae_match"] = _null(diff_sae["null_match"])
        if diff_sae.get("max_abs_cos_partisan") is not None:
            out["diff_sae_max_abs_cos_partisan"] = Estimate(
                diff_sae["max_abs_cos_partisan"], math.nan, math.nan,
                diff_sae["n_latents"], "|cos|", "no interval")
    if steering is not None and steering.height and "projection" in steering.columns:
        out |= _steering_slopes(steering, n_boot=n_boot, seed=seed)
    return out


def _steering_slopes(steering: pl.DataFrame, *, n_boot: int, seed: int) -> dict[str, Estimate]:
    """Per steered model: each latent's slope, the random directions' mean slope and each
    latent's slope minus it, all from one bootstrap over questions."""
    out = {}
    st = steering.filter((pl.col("vector") != "none") & pl.col("projection").is_finite())
    for (model,), g in st.group_by(["model"], maintain_order=True):
        out |= _model_slopes(model, g, n_boot=n_boot, seed=seed)
    return out


def _model_slopes(model: str, g: pl.DataFrame, *, n_boot: int, seed: int) -> dict:
    a, y = g["alpha"].to_numpy(), g["projection"].to_numpy()
    v, q = g["vector"].to_numpy().astype(str), g["question_id"].to_numpy()
    names = [n for n in dict.fromkeys(v) if (v == n).sum() >= 3]
    randoms = [n for n in names if n == "random" or n.startswith("random_")]
    latents = [n for n in names if n not in randoms]

    def one(name):
        return lambda a_, y_, v_: _slope(a_[v_ == name], y_[v_ == name])

    def rand_mean(a_, y_, v_):
        return float(np.nanmean([_slope(a_[v_ == r], y_[v_ == r]) for r in randoms]))

    def est(stat):
        return bootstrap(stat, a, y, v, groups=q, n_boot=n_boot, seed=seed,
                         unit="projection per alpha")

    out = {f"steer_slope_{model}_{name}": est(one(name)) for name in latents}
    if randoms:
        out[f"steer_slope_{model}_random"] = est(rand_mean)
        for name in latents:
            f = one(name)
            out[f"steer_slope_{model}_{name}_minus_random"] = est(
                lambda a_, y_, v_, f=f: f(a_, y_, v_) - rand_mean(a_, y_, v_))
    return out


def _slope(a: np.ndarray, y: np.ndarray) -> float:
    a = np.asarray(a, float)
    y = np.asarray(y, float)
    va = np.var(a)
    return float(np.cov(a, y, bias=True)[0, 1] / va) if va > 0 else math.nan


def partisan_variance_ratios(statements: pl.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                             n_splits: int = 20) -> dict[str, Estimate]:
    """``variance_ratio_data`` and ``variance_ratio_recon`` (see :data:`HEADLINE_KEYS`) from
    the per-statement table of :func:`rlhf_audit.diffing.analysis.statement_vector_table`:
    the partisan study's split-half estimator (unbiased for |Delta|^2 whatever the noise,
    issue bootstrap that refits), on the left/right statements. Empty without both sides
    or with fewer than 4 issues."""
    from rlhf_audit.diffing.paired import cluster_of
    from rlhf_audit.partisan import PartisanSettings, split_half_analysis

    rows = statements.filter(pl.col("label").is_in(["left", "right"]))
    if rows.height == 0 or rows["label"].n_unique() < 2:
        log.warning("diffing: no partisan variance ratios: the held-out statements lack "
                    "left and right labels (the diffing dataset needs format partisan)")
        return {}
    clusters = np.array([cluster_of(p, i) for p, i in
                         zip(rows["prompt_id"].to_list(), rows["issue"].to_list(), strict=True)])
    if len(set(clusters)) < 4:
        log.warning("diffing: no partisan variance ratios: %d held-out issues, the split-half "
                    "estimator needs 4", len(set(clusters)))
        return {}
    right = (rows["label"] == "right").to_numpy()
    # n_perm 1: split_half_analysis also builds a permutation noise floor, unused here
    ps = PartisanSettings(n_boot=n_boot, seed=seed, n_splits=n_splits, n_perm=1)
    out = {}
    reps = {}
    for name, (b, i) in {"data": ("data_base", "data_instruct"),
                         "recon": ("recon_base", "recon_instruct")}.items():
        reps[name] = {}
        sh = split_half_analysis(rows[b].to_numpy().astype(np.float64),
                                 rows[i].to_numpy().astype(np.float64), right, clusters, ps,
                                 reps_out=reps[name])
        out[f"variance_ratio_{name}"] = sh["variance_ratio"]
    d, r = out["variance_ratio_data"], out["variance_ratio_recon"]
    # The two calls drew the same issue resamples and halves: the replicates pair up.
    paired = reps["recon"]["variance_ratio"] / reps["data"]["variance_ratio"]
    finite = paired[np.isfinite(paired)]
    lo = hi = math.nan
    if len(finite) >= n_boot / 2:
        lo, hi = (float(x) for x in np.quantile(finite, [0.025, 0.975]))
    out["variance_ratio_recon_over_data"] = Estimate(
        r.value / d.value if d.value else math.nan, lo, hi, d.n, "ratio",
        "paired cluster bootstrap: the same issue resamples and half-splits for the "
        "reconstructions and the activations, percentile 95%")
    return out


def tied_ratios(recon: Estimate, norm_base: float, norm_instruct: float) -> dict[str, Estimate]:
    """``variance_ratio_recon_tied`` and ``..._over_tied`` (see :data:`HEADLINE_KEYS`). With
    equal decoders the shared encoder gives both models one code per token, so each raw
    reconstruction is the other times the ratio of the models' normalising mean norms:
    the partisan variance ratio of the reconstructions is that ratio squared, exactly."""
    tied = (norm_instruct / norm_base) ** 2
    return {"variance_ratio_recon_tied": Estimate(tied, math.nan, math.nan, recon.n, "ratio",
                                                  "exact: (mean norm instruct / base)^2"),
            "variance_ratio_recon_over_tied": Estimate(
                recon.value / tied, recon.lo / tied, recon.hi / tied, recon.n, "ratio",
                recon.method + "; divided by the exact tied-decoder value")}


CONTEXT_TEXT = {"raw": "the bare statements", "chat": "the statements in instruct's chat "
                "template", "native": "the statements each in its own format (template and "
                "weights confounded)"}
"""How a diffing key's description names the ``diffing.context`` it was read in."""


def direction_agreement(summary: dict, directions_path) -> Estimate | None:
    """Cosine of the direction the latents were matched to (summary.json's
    ``partisan_direction``) with the partisan study's base direction at the diffing layer
    (``directions_path``, its directions.parquet), or None without both. No interval: two
    fitted directions; n: the labelled statements behind the first."""
    from rlhf_audit.diffing.inputs import cosine, partisan_direction

    pdir = summary.get("partisan_direction") or {}
    if not directions_path or pdir.get("direction") is None:
        return None
    study = partisan_direction(directions_path, summary["settings"]["layer"], pdir["method"])
    if study is None:
        return None
    return Estimate(cosine(np.asarray(pdir["direction"]), study), math.nan, math.nan,
                    int(pdir.get("n_left", 0)) + int(pdir.get("n_right", 0)), "cosine",
                    "none: two fitted directions")


def summarise_pair(summary_path, steering_path, out_path, n_boot: int = 1000,
                   seed: int = 0, statements_path=None, n_splits: int = 20,
                   directions_path=None) -> None:
    """Rule summarise_diffing: the pair's headline fragment from summary.json, the held-out
    statements' vectors (``statements_path``), steering and, when the partisan study ran on
    the pair, its directions (``directions_path``)."""
    import json

    from rlhf_audit.headline import write_fragment

    with open(summary_path, encoding="utf-8") as f:
        s = json.load(f)
    steering = pl.read_parquet(steering_path) if steering_path else None
    est = headline(s["per_seed"], s["statement_errors"], s["diff_sae"], steering,
                   nulls=s["nulls"], n_boot=n_boot, seed=seed)
    agree = direction_agreement(s, directions_path)
    if agree is not None:
        est["partisan_direction_cos_study"] = agree
    if statements_path:
        est |= partisan_variance_ratios(pl.read_parquet(statements_path), n_boot=n_boot,
                                        seed=seed, n_splits=n_splits)
        if "variance_ratio_recon" in est and s.get("mean_norms"):
            est |= tied_ratios(est["variance_ratio_recon"], *s["mean_norms"])
    docs = {k: v for k, v in HEADLINE_KEYS.items() if "{" not in k}
    docs |= {k: HEADLINE_KEYS["steer_slope_{feature}"] for k in est if k.startswith("steer_")}
    ctx = (s.get("context") or {}).get("context")
    if ctx in CONTEXT_TEXT:  # which inputs the crosscoder compared, on every key's line
        read = CONTEXT_TEXT[ctx]
        docs = {k: f"{v} [both models read {read}: diffing.context {ctx}]" if not
                k.startswith("steer_") else v for k, v in docs.items()}
    write_fragment(est, docs, out_path)
