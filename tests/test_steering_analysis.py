"""Claim-4/5 statistics on planted generation scores: slopes, slope differences, null gaps,
degenerate-alpha exclusion, judge-failure accounting per cell, prime effects across wordings
and the prime-echo test."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rlhf_audit.steering import (
    HEADLINE_KEYS,
    SteeringSettings,
    identity_terms,
    prime_design,
    score_judge,
)
from rlhf_audit.steering.analysis import (
    add_text_measures,
    alpha_window,
    analyse,
    degeneration_table,
    judge_failures,
    prime_contrasts,
    steering_contrast,
)
from rlhf_audit.steering.figures import plot_degeneration, plot_steering

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "resources" / "prompts"
ALPHAS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
SLOPES = {
    ("base", "direction"): 0.40, ("instruct", "direction"): 0.30,
    ("base", "direction_instruct"): 0.30, ("instruct", "direction_instruct"): 0.35,
    ("base", "feature"): 0.50, ("instruct", "feature"): 0.05,
}
# null vectors: fixed slopes, so the null mean of (instruct - base) is known exactly
NULL = {f"random_direction_{k:02d}": (0.04 + 0.01 * (k - 4.5), 0.02 + 0.004 * k)
        for k in range(10)}
NULL |= {f"random_features_{k:02d}": (0.06 + 0.01 * (k - 4.5), 0.01 - 0.002 * k)
         for k in range(10)}


def _null_mean_diff(fam):
    return np.mean([i - b for v, (b, i) in NULL.items() if v.startswith(fam)])


WANT_DIFF = {v: SLOPES[("instruct", v)] - SLOPES[("base", v)]
             for v in ("direction", "direction_instruct", "feature")}
WANT_GAP = {"direction": WANT_DIFF["direction"] - _null_mean_diff("random_direction"),
            "direction_instruct": WANT_DIFF["direction_instruct"]
            - _null_mean_diff("random_direction"),
            "feature": WANT_DIFF["feature"] - _null_mean_diff("random_features")}
GOOD = "Taxes on small firms should stay where they are for now."


def _planted(seed, n_issues=20, q_per_issue=2, noise=0.3, slope_sd=0.05):
    """Scores = question intercept + (planted slope + issue-level slope deviation) * alpha
    + noise, for every model x vector x alpha x question; readable, non-degenerate text."""
    rng = np.random.default_rng(seed)
    slopes = {**SLOPES, **{(m, v): s for v, bi in NULL.items()
                           for m, s in zip(("base", "instruct"), bi, strict=True)}}
    rows = []
    for i in range(n_issues):
        dev = {k: rng.normal(0, slope_sd) for k in slopes}
        for j in range(q_per_issue):
            q = f"i{i}-q{j}"
            icpt = {m: rng.normal(0, 0.5) for m in ("base", "instruct")}
            for (m, v), s in slopes.items():
                for a in ALPHAS:
                    y = icpt[m] + (s + dev[(m, v)]) * a + rng.normal(0, noise)
                    rows.append({"model": m, "vector": v, "alpha": a, "question_id": q,
                                 "issue": f"issue{i}", "sample": 0, "text": GOOD,
                                 "finished": True, "judge": y, "judge_ok": True,
                                 "judge_error": None})
    return pl.DataFrame(rows, schema_overrides={"judge_error": pl.String})


def _contrast(df, **kw):
    t = add_text_measures(df, 0.5)
    return steering_contrast(t, "judge", degeneration_table(t), n_boot=kw.pop("n_boot", 300),
                             **kw)


def test_slopes_difference_and_null_gap_recover_planted_values():
    est_by = {k: [] for k in ("slope", "diff", "gap")}
    cover = {"diff": 0, "gap": 0}
    seeds = range(16)
    for seed in seeds:
        c = _contrast(_planted(seed), seed=seed)
        e = c["estimates"]
        est_by["slope"].append(e["steering_slope_base_feature_judge"].value)
        for v in ("direction", "feature"):
            d, g = e[f"disconnect_ratio_{v}_judge"], e[f"disconnect_null_gap_{v}_judge"]
            cover["diff"] += d.covers(WANT_DIFF[v])
            cover["gap"] += g.covers(WANT_GAP[v])
            if v == "feature":
                est_by["diff"].append(d.value)
                est_by["gap"].append(g.value)
        assert e["disconnect_ratio_feature_judge"].n == 20  # issues, not questions
    assert np.mean(est_by["slope"]) == pytest.approx(0.50, abs=0.01)
    assert np.mean(est_by["diff"]) == pytest.approx(WANT_DIFF["feature"], abs=0.015)
    assert np.mean(est_by["gap"]) == pytest.approx(WANT_GAP["feature"], abs=0.015)
    # 95% intervals, 32 per kind: coverage well above chance, not wildly over
    assert cover["diff"] >= 26 and cover["gap"] >= 26
    c = _contrast(_planted(0))
    dis = c["disconnect"].filter(pl.col("vector") == "feature").row(0, named=True)
    assert dis["n_null"] == 10 and dis["null_family"] == "random_features"
    assert dis["null_mean"] == pytest.approx(_null_mean_diff("random_features"), abs=0.03)
    assert dis["null_share_below"] == 0.0  # the feature disconnect is below every null
    assert dis["gap_hi"] < 0  # the claim-4 test: a disconnect beyond the random null
    e = c["estimates"]
    assert e["steering_slope_vs_null_instruct_direction_judge"].lo > 0
    assert e["disconnect_gap_judge"].value == pytest.approx(
        WANT_DIFF["direction"] - WANT_DIFF["feature"], abs=0.08)
    # the null-mean slope keys read the families
    assert e["steering_slope_base_random_judge"].value == pytest.approx(0.04, abs=0.04)


def test_a_near_zero_base_slope_gives_a_finite_difference():
    df = _planted(1).with_columns(
        pl.when(pl.col("model") == "base", pl.col("vector") == "feature")
        .then(pl.col("judge") - 0.5 * pl.col("alpha")).otherwise(pl.col("judge"))
        .alias("judge"))  # base feature slope about 0
    d = _contrast(df)["estimates"]["disconnect_ratio_feature_judge"]
    assert np.isfinite([d.value, d.lo, d.hi]).all() and d.hi - d.lo < 0.3


def test_degenerate_alphas_are_left_out_of_both_models_slopes():
    df = _planted(2)
    # at |alpha| = 2 the instruct model's feature-steered replies are junk with wild scores
    bad = (pl.col("model") == "instruct") & (pl.col("vector") == "feature") & (
        pl.col("alpha").abs() == 2)
    df = df.with_columns(pl.when(bad).then(pl.lit("!!! ### 12 12 !!! ###"))
                         .otherwise(pl.col("text")).alias("text"),
                         pl.when(bad).then(pl.lit(5.0) * pl.col("alpha"))
                         .otherwise(pl.col("judge")).alias("judge"))
    t = add_text_measures(df, 0.5)
    degen = degeneration_table(t)
    cell = degen.filter(pl.col("model") == "instruct", pl.col("vector") == "feature",
                        pl.col("alpha") == 2.0)
    assert cell["degenerate_rate"][0] == 1.0
    assert alpha_window(degen, "feature", 0.2) == 1.0
    assert alpha_window(degen, "direction", 0.2) == 2.0
    c = steering_contrast(t, "judge", degen, max_degenerate_rate=0.2, n_boot=200)
    sl = c["slopes"].filter(pl.col("vector") == "feature")
    assert sl["alpha_max"].to_list() == [1.0, 1.0]  # the same window for both models
    inst = c["estimates"]["steering_slope_instruct_feature_judge"]
    assert inst.covers(0.05) and abs(inst.value - 0.05) < 0.1
    # kept in, the junk would dominate the slope: the exclusion is what recovers it
    c_all = steering_contrast(t, "judge", degen, max_degenerate_rate=1.0, n_boot=50)
    assert c_all["estimates"]["steering_slope_instruct_feature_judge"].value > 2.0
    # nothing usable: slopes are NaN, not a fit through alpha 0 alone
    every = t.with_columns(pl.when(pl.col("vector") == "feature", pl.col("alpha") != 0)
                           .then(True).otherwise(pl.col("degenerate")).alias("degenerate"))
    c_none = steering_contrast(every, "judge", degeneration_table(every), n_boot=50)
    assert np.isnan(c_none["estimates"]["steering_slope_base_feature_judge"].value)


def _primes(seed, n_issues=20, effect=(("base", 0.2), ("instruct", 0.6)), wording_sd=0.15,
            persona_shift=0.0):
    """Primed scores with a random per-wording prime effect around the planted mean."""
    rng = np.random.default_rng(seed)
    eff = dict(effect)
    w_eff = rng.normal(0, wording_sd, 4)
    rows = []
    for i in range(n_issues):
        for j in range(2):
            q = f"i{i}-q{j}"
            icpt = rng.normal(0, 0.4)
            k = (2 * i + j) % 4  # wordings rotate over questions, as in the shipped file
            for m in ("base", "instruct"):
                for cond, sign, wording in (("left", -0.5, f"p{k}"), ("right", 0.5, f"p{k}"),
                                            ("none", 0.0, "none"),
                                            ("persona", 0.0, f"persona:n{k}")):
                    y = icpt + sign * (eff[m] + w_eff[k]) + rng.normal(0, 0.3)
                    y += persona_shift if cond == "persona" else 0.0
                    rows.append({"model": m, "condition": cond, "wording": wording,
                                 "question_id": q, "issue": f"issue{i}", "judge": y,
                                 "judge_ok": True, "judge_error": None, "text": GOOD})
    return pl.DataFrame(rows, schema_overrides={"judge_error": pl.String})


def test_prime_effect_across_wordings_and_persona_control():
    cover, cover_persona, vals = 0, 0, []
    for seed in range(20):
        _, eff, est = prime_contrasts(_primes(seed), "judge", n_boot=300, seed=seed)
        e = est["prime_effect_instruct_judge"]
        vals.append(e.value)
        cover += e.covers(0.6)
        cover_persona += est["prime_persona_shift_instruct_judge"].covers(0.0)
        assert eff.filter(pl.col("model") == "instruct")["n_wordings"][0] == 4
    assert np.mean(vals) == pytest.approx(0.6, abs=0.05)
    assert cover >= 16 and cover_persona >= 16
    # the wording is a random effect: the interval is wider than an issue-only one would be
    e = prime_contrasts(_primes(0, wording_sd=0.4), "judge", n_boot=300)[2][
        "prime_effect_instruct_judge"]
    e0 = prime_contrasts(_primes(0, wording_sd=0.4).with_columns(pl.lit("p0").alias(
        "wording")), "judge", n_boot=300)[2]["prime_effect_instruct_judge"]
    assert (e.hi - e.lo) > 1.3 * (e0.hi - e0.lo)
    # a planted persona shift is found
    shifts = [prime_contrasts(_primes(k, persona_shift=0.5), "judge", n_boot=200)[2][
        "prime_persona_shift_base_judge"] for k in range(5)]
    assert all(e.lo > 0 for e in shifts)
    assert np.mean([e.value for e in shifts]) == pytest.approx(0.5, abs=0.1)


class _KeywordJudge:
    """+1 per right identity word, -1 per left one: a judge that a prime echo would fool."""

    RIGHT = ("conservative", "republican", "right")
    LEFT = ("progressive", "democrat", "liberal", "left")

    def rate(self, texts, questions=None):
        def s(t):
            w = t.lower().replace(",", " ").replace(".", " ").split()
            return float(sum(x in self.RIGHT for x in w) - sum(x in self.LEFT for x in w))
        return pl.DataFrame({"judge_score": [s(t) for t in texts], "judge_ok": [True] * len(texts),
                             "judge_reply": [""] * len(texts), "judge_error": [None] * len(texts)},
                            schema_overrides={"judge_error": pl.String})


def test_a_prime_echoed_in_the_reply_cannot_create_a_prime_effect():
    qs = pl.read_ndjson(PROMPTS_DIR / "policy_questions.jsonl").head(30)
    design = prime_design(qs, pl.read_ndjson(PROMPTS_DIR / "identity_primes.jsonl"),
                          pl.read_ndjson(PROMPTS_DIR / "neutral_personas.jsonl"))
    # every reply repeats its prime, then gives the same even-handed answer
    replies = design.with_columns(
        (pl.col("prime") + pl.lit(" There are good arguments on both sides.")).alias("text"),
        pl.lit("instruct").alias("model"))
    terms = identity_terms(design)
    masked = pl.concat([replies, score_judge(replies, _KeywordJudge(), terms=terms)],
                       how="horizontal")
    raw = pl.concat([replies, score_judge(replies, _KeywordJudge(), terms=())],
                    how="horizontal")
    e_raw = prime_contrasts(raw, "judge", n_boot=200)[2]["prime_effect_instruct_judge"]
    e_masked = prime_contrasts(masked, "judge", n_boot=200)[2]["prime_effect_instruct_judge"]
    assert e_raw.lo > 0.5  # the echo alone would read as a large prime effect
    assert e_masked.value == 0.0 and e_masked.lo == 0.0 and e_masked.hi == 0.0
    assert (masked["judge"] == 0).all()


def test_judge_failures_are_counted_per_cell_and_in_the_headline(tmp_path):
    steer = _planted(3, n_issues=8)
    rng = np.random.default_rng(0)
    cell = ((steer["model"] == "instruct") & (steer["vector"] == "feature")
            & (steer["alpha"] == 1.0)).to_numpy()
    fail = cell & (rng.uniform(size=steer.height) < 0.5)
    fail[np.flatnonzero(cell)[0]] = True
    steer = steer.with_columns(
        pl.Series("judge_ok", ~fail),
        pl.when(pl.Series(fail)).then(None).otherwise(pl.col("judge")).alias("judge"),
        pl.when(pl.Series(fail)).then(pl.lit("no rating in reply"))
        .otherwise(pl.col("judge_error")).alias("judge_error"),
        pl.lit(None, pl.Float64).alias("projection"))
    primes = _primes(3, n_issues=8)
    pfail = ((primes["model"] == "base") & (primes["condition"] == "right")).to_numpy()
    pfail &= np.arange(primes.height) % 3 == 0
    primes = primes.with_columns(
        pl.Series("judge_ok", ~pfail),
        pl.when(pl.Series(pfail)).then(None).otherwise(pl.col("judge")).alias("judge"),
        pl.when(pl.Series(pfail)).then(pl.lit("empty reply")).otherwise(
            pl.col("judge_error")).alias("judge_error"))
    out = analyse(steer, primes, settings=SteeringSettings(n_boot=100))
    jf = out["judge_failures"]
    bad = jf.filter(pl.col("n_failed") > 0)
    assert bad.height == 2
    s = bad.filter(pl.col("study") == "steering").row(0, named=True)
    assert (s["model"], s["vector"], s["alpha"]) == ("instruct", "feature", 1.0)
    assert s["n_failed"] == fail.sum() and s["n"] == cell.sum()
    p = bad.filter(pl.col("study") == "primes").row(0, named=True)
    assert (p["model"], p["vector"], p["n_failed"]) == ("base", "right", pfail.sum())
    e = out["estimates"]
    n_all = steer.height + primes.height
    assert e["judge_failure_rate"].value == pytest.approx((fail.sum() + pfail.sum()) / n_all)
    assert e["judge_failure_rate"].n == n_all
    assert e["judge_failure_rate_max_cell"].value == pytest.approx(fail.sum() / cell.sum())
    # the dose table says how many rows of each cell had no score
    dose = out["dose"].filter(pl.col("score") == "judge", pl.col("model") == "instruct",
                              pl.col("vector") == "feature", pl.col("alpha") == 1.0)
    assert dose["n_failed"][0] == fail.sum()
    pm = out["prime_means"].filter(pl.col("model") == "base", pl.col("condition") == "right")
    assert pm["n_failed"][0] == pfail.sum()
    # every key is documented, a score with no valid rows adds none, figures render
    assert set(e) <= set(HEADLINE_KEYS)
    assert not any(k.endswith("_projection") for k in e)
    plot_steering(out["dose"], out["prime_means"], tmp_path / "d.png", score="judge")
    plot_degeneration(out["degeneration"], tmp_path / "g.png", 0.2)
    assert (tmp_path / "d.png").stat().st_size > 0 and (tmp_path / "g.png").stat().st_size > 0
    # no judge configured: not failures
    none = steer.with_columns(pl.lit(False).alias("judge_ok"),
                              pl.lit("no judge configured").alias("judge_error"))
    assert judge_failures(none, primes.head(0)).height == 0
