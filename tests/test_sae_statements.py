"""Statement-level SAE analysis (rlhf_audit.sae.select): planted policy features, a
rhetoric feature that must not be selected, pseudo-replication, the winner's curse and
the control matched on statement incidence and firing strength."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from sae_planted import hand_sae, planted_study

from rlhf_audit import sae as S

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    # One BLAS and torch thread: on a shared CPU, threads fighting over the cores made the
    # d = 512 linear algebra here ten times slower.
    from threadpoolctl import threadpool_limits

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(prev)


def run(base, inst, d, **kw):
    sae = hand_sae(np.eye(d, dtype=np.float32))
    kw.setdefault("n_boot", 300)
    settings = S.SAEAnalysisSettings(**kw)
    return S.analyse_policy_features(S.scan_features(sae, base), S.scan_features(sae, inst),
                                     settings)


# ----------------------------------------------------------------- statements and split


def test_statement_ids_follow_the_shipped_pattern():
    prompts = pl.DataFrame({
        "prompt_id": ["minimum_wage-left-0-plain", "minimum_wage-left-0-convinced",
                      "guns-neutral-2-context", "user-row-17", "other-unlabelled"],
        "label": ["left", "left", "neutral", "right", "unlabelled"],
        "issue": ["minimum_wage", "minimum_wage", "guns", None, None],
    })
    st = S.statement_table(prompts, S.SAEAnalysisSettings())
    got = {r["prompt_id"]: (r["statement"], r["framing"]) for r in st.iter_rows(named=True)}
    assert got == {
        "minimum_wage-left-0-plain": ("minimum_wage-left-0", "plain"),
        "minimum_wage-left-0-convinced": ("minimum_wage-left-0", "convinced"),
        "guns-neutral-2-context": ("guns-neutral-2", "context"),
        "user-row-17": ("user-row-17", "plain"),  # no pattern: its own plain statement
    }
    bad = prompts.with_columns(pl.when(pl.col("prompt_id").str.ends_with("convinced"))
                               .then(pl.lit("right")).otherwise("label").alias("label"))
    with pytest.raises(ValueError, match="minimum_wage-left-0"):
        S.statement_table(bad, S.SAEAnalysisSettings())
    with pytest.raises(ValueError, match="named groups"):
        S.statement_table(prompts, S.SAEAnalysisSettings(statement_pattern=r"^(.*)$"))


def test_split_halves_every_issue_and_label_and_is_seeded():
    rows = [(f"i{i}-{lab}-{k}", lab, f"i{i}") for i in range(10)
            for lab, n in (("left", 4), ("right", 4), ("neutral", 3)) for k in range(n)]
    st = pl.DataFrame(rows, schema=["statement", "label", "issue"], orient="row")
    a, b = S.split_statements(st, 0), S.split_statements(st, 0)
    assert a.equals(b)
    counts = a.group_by("issue", "label", "half").len()
    lr = counts.filter(pl.col("label") != "neutral")
    assert set(lr["len"]) == {2} and lr.height == 10 * 2 * 2
    neu = a.filter(pl.col("label") == "neutral").group_by("issue", "half").len()
    assert set(neu["len"]) <= {1, 2}
    assert not S.split_statements(st, 1)["half"].equals(a["half"])


# ----------------------------------------------------------------- the stratified test


def test_van_elteren_one_stratum_is_the_mann_whitney_test():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    Y = np.round(rng.exponential(1.0, (30, 20)), 1)  # ties
    Y[:, 0] = 0.0
    g = np.arange(30) >= 12
    z, p = S.van_elteren(Y, g, np.zeros(30))
    ref = mannwhitneyu(Y[g], Y[~g], method="asymptotic", use_continuity=False, axis=0).pvalue
    np.testing.assert_allclose(p[1:], ref[1:], rtol=1e-9)
    assert (z[0], p[0]) == (0.0, 1.0)  # no variance


def test_van_elteren_is_valid_under_the_null_and_has_power():
    rng = np.random.default_rng(1)
    strata = np.repeat(np.arange(40), 4)  # 2 left + 2 right per issue, as in a half
    g = np.tile([False, False, True, True], 40)
    issue_effect = rng.normal(0, 2, 40)[strata][:, None]
    n = 4000
    Y = (rng.random((160, n)) < 0.2) * rng.exponential(1.0, (160, n)) + issue_effect
    _, p = S.van_elteren(Y, g, strata)
    assert (p < 0.05).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n)
    Y1 = Y + 0.6 * g[:, None]
    assert (S.van_elteren(Y1, g, strata)[1] < 0.05).mean() > 0.9


# ----------------------------------------------------------------- planted studies


def test_planted_policy_features_leanings_and_control_gap():
    base, inst, roles = planted_study(0, silence_background=0.3)
    st = run(base, inst, roles["d"])
    feats = st.selection.features
    sel = feats.filter(pl.col("selected"))
    assert sorted(sel["feature"].to_list()) == sorted(roles["right"] + roles["left"])
    lean = dict(zip(sel["feature"].to_list(), sel["leaning"].to_list(), strict=True))
    assert all(lean[f] == 1 for f in roles["right"]) and all(lean[f] == -1 for f in roles["left"])
    assert feats["leaning"].dtype == pl.Int8
    assert set(feats.filter(~pl.col("selected"))["leaning"]) == {0}
    eff = dict(zip(feats["feature"].to_list(), feats["effect_lr"].to_list(), strict=True))
    assert all(eff[f] > 0 for f in roles["right"]) and all(eff[f] < 0 for f in roles["left"])
    # the rhetoric feature fires on every opinion framing of either side: not selected,
    # and the plain-framing partisan-vs-neutral test does not flag it either
    rh = feats.filter(pl.col("feature") == roles["rhetoric"]).row(0, named=True)
    assert rh["tested"] and not rh["selected"] and rh["q_left_vs_right"] > 0.5
    assert rh["p_partisan_vs_neutral_plain"] == pytest.approx(1.0)

    h = st.headline
    assert set(h) == set(S.HEADLINE_KEYS)
    assert h["share_inactive_in_instruct"].value == 1.0
    # control share = share of the matched controls that instruct silenced (planted)
    ctl = st.controls
    assert ctl.height == len(sel) * 5
    silenced = set(roles["silenced_background"])
    planted = np.mean([c in silenced for c in ctl["control_feature"].to_list()])
    assert h["share_inactive_in_instruct_control"].value == pytest.approx(planted)
    assert h["share_inactive_in_instruct_excess"].value == pytest.approx(1 - planted)
    assert h["share_inactive_in_instruct_excess"].lo > 0
    assert h["share_inactive_in_instruct_excess_p"].value < 0.01
    # controls match the policy features' base firing rate
    ratio = ctl["control_firing_rate_base"] / ctl["firing_rate_base"]
    assert ratio.min() > 0.5 and ratio.max() < 2.0
    assert h["policy_firing_rate_instruct"].value == 0.0
    # the hand SAE reconstructs these inputs exactly: all of the partisan separation is kept
    for m in ("base", "instruct"):
        assert h[f"partisan_fraction_reconstructed_{m}"].value == pytest.approx(1.0, abs=1e-6)
        assert "selection-half" in h[f"partisan_fraction_reconstructed_{m}"].method
    assert st.reconstruction["fve"].to_list() == pytest.approx([1.0, 1.0])
    assert h["n_policy_features"].n == st.selection.split.filter(
        pl.col("half") == "selection").height


def test_control_gap_recovers_the_planted_silencing_rate_over_seeds():
    shares = []
    for seed in range(5):
        base, inst, roles = planted_study(seed + 10, silence_background=0.3)
        shares.append(run(base, inst, roles["d"], n_boot=100).headline[
            "share_inactive_in_instruct_control"].value)
    assert abs(np.mean(shares) - 0.3) < 0.12, shares


def test_duplicating_framings_leaves_discoveries_unchanged():
    # Weak policy features, near the BH threshold: a prompt-level test would count the
    # copies as more evidence; at statement level the copies change nothing.
    kw = {"n_policy": 20, "policy_rate": 0.12, "n_background": 60}
    one = run(*planted_study(3, **kw)[:2], 20 + 1 + 60, n_boot=50).selection.features
    two = run(*planted_study(3, duplicate_framings=True, **kw)[:2], 20 + 1 + 60,
              n_boot=50).selection.features
    assert 0 < one["selected"].sum() < 20
    assert one["selected"].to_list() == two["selected"].to_list()
    np.testing.assert_allclose(one["p_left_vs_right"].fill_null(1.0).to_numpy(),
                               two["p_left_vs_right"].fill_null(1.0).to_numpy(), rtol=1e-9)


def test_no_instruct_effect_gives_no_excess_over_the_control():
    # Winner's curse: weak features, selected when lucky on the selection half; instruct is
    # an independent redraw at a quarter of every feature's probability (no effect specific
    # to policy features). Held out, the selected features fall silent as often as their
    # incidence-matched controls.
    excess, covered = [], 0
    for seed in range(15):
        base, inst, roles = planted_study(
            100 + seed, n_issues=20, n_policy=40, policy_rate=0.15, n_background=200,
            silence_policy=False, background_like_policy=True, redraw_instruct=True,
            instruct_rate_scale=0.25)
        h = run(base, inst, roles["d"], n_boot=100, q=0.2, min_statements_fired=3).headline
        e = h["share_inactive_in_instruct_excess"]
        assert h["n_policy_features"].value >= 5
        excess.append(e.value)
        covered += e.lo <= 0 <= e.hi
    # per-study sd of the excess is about 0.12: 3 standard errors of the mean of 15
    assert abs(np.mean(excess)) < 3 * 0.12 / math.sqrt(15), excess
    assert covered >= 13


def test_bursty_controls_do_not_bias_the_null():
    # Half the background features fire on all four tokens of the statements that carry
    # them: at a quarter of a policy feature's statement incidence they have its token
    # rate. Instruct is a statement-level redraw at a quarter of every probability (no
    # policy-specific effect), so a feature falls silent as (1 - p/4)^n over n statements
    # of incidence p. Controls matched on token rate would be half bursty, silent far more
    # often than the policy features (mean excess -0.14 over these seeds); matched on statement
    # incidence, the excess is about 0.
    excess, covered = [], 0
    for seed in range(8):
        base, inst, roles = planted_study(
            300 + seed, n_issues=20, n_policy=40, policy_rate=0.5, n_background=300,
            silence_policy=False, redraw_instruct=True, instruct_rate_scale=0.25,
            bursty_background=0.5)
        h = run(base, inst, roles["d"], n_boot=100).headline
        e = h["share_inactive_in_instruct_excess"]
        assert h["n_policy_features"].value >= 20
        excess.append(e.value)
        covered += e.lo <= 0 <= e.hi
    assert abs(np.mean(excess)) < 0.03, excess
    assert covered >= 7, excess


def test_faint_controls_do_not_bias_the_null():
    # Half the background features fire at 0.55, just above the SAE's threshold (0.5);
    # policy features fire at 1. Instruct shrinks every activation by 0.85 (no effect
    # specific to policy features): the faint features fall under the threshold on every
    # statement, the others never do. Controls matched on incidence alone are half faint
    # (excess about -0.5); matched on incidence and firing strength the excess is about 0.
    excess, covered = [], 0
    for seed in range(4):
        base, inst, roles = planted_study(
            400 + seed, n_issues=20, n_policy=40, policy_rate=0.5, n_background=300,
            silence_policy=False, faint_background=0.5, instruct_shrink=0.85)
        st = run(base, inst, roles["d"], n_boot=100)
        h = st.headline
        e = h["share_inactive_in_instruct_excess"]
        assert h["n_policy_features"].value >= 20
        excess.append(e.value)
        covered += e.lo <= 0 <= e.hi
        faint = set(roles["faint_background"])
        ctl = st.controls
        # a faint control only where no full-strength one fires on nearly as many statements
        assert np.mean([c in faint for c in ctl["control_feature"].to_list()]) < 0.1
        # the same scans, controls matched on incidence alone: the bias this test plants
        cmp = st.comparison
        policy = st.selection.selected["feature"].to_numpy()
        n_meas = int((st.selection.split["half"] == "measurement").sum())
        inc = np.zeros(roles["d"])
        inc[cmp["feature"].to_numpy()] = cmp["statement_firing_rate_base"].to_numpy() * n_meas
        silent = np.zeros(roles["d"], bool)
        silent[cmp["feature"].to_numpy()] = cmp["inactive_in_instruct"].to_numpy()
        old = S.match_controls(inc, policy, k=5, seed=0)
        assert silent[policy].mean() - silent[old].mean() < -0.2
    assert abs(np.mean(excess)) < 0.03, excess
    assert covered >= 3, excess


def test_controls_match_firing_strength_beside_incidence():
    incidence = np.array([50, 50, 50, 35, 0])
    magnitude = np.array([2.0, 0.6, 2.0, 2.0, 0.0])
    # feature 0 (50 statements, strength 2): 2 (same both) first, then 3 (|log 50/35| =
    # 0.36) before 1 (same incidence, |log 2/0.6| = 1.2)
    ctrl = S.match_controls(incidence, np.array([0]), k=3, seed=0, magnitude=magnitude)
    assert ctrl[0].tolist() == [2, 3, 1]
    assert S.match_controls(incidence, np.array([0]), k=3, seed=0)[0, 0] in (1, 2)
    with pytest.raises(ValueError, match="4 values for 5 features"):
        S.match_controls(incidence, np.array([0]), k=1, magnitude=magnitude[:4])


def test_controls_match_statement_incidence_then_token_rate():
    incidence = np.array([50, 50, 50, 10, 10, 49, 0, 0])
    rate = np.array([0.1, 0.4, 0.1, 0.4, 0.1, 0.1, 0.0, 0.0])
    ctrl = S.match_controls(incidence, np.array([0, 6]), k=1, seed=0, rate=rate)
    # feature 0: incidence 50 -> feature 2 (same incidence, same rate) before 1 (same
    # incidence, other rate) and 3 (rate 0.4 matches 1's but incidence 10)
    assert ctrl[:, 0].tolist() == [2, 7]
    two = S.match_controls(incidence, np.array([0]), k=3, seed=0, rate=rate)
    assert sorted(two[0].tolist()) == [1, 2, 5]


def test_partisan_fraction_is_unbiased_at_realistic_dimension():
    # d = 512, 1/k noise spectrum, a partisan separation of about 2 noise SDs along the
    # direction (the companion paper's Cohen's d), issue offsets; the SAE keeps a share
    # phi of the partisan component and sends the rest to its error term. With the
    # shrinkage-LDA direction of the selection half the held-out fraction recovers phi. A
    # raw diff-of-means direction is dominated by the top noise directions (whose noise
    # the SAE reconstructs), and one fitted on the measured statements is biased upward.
    d, n_issues = 512, 44
    rng = np.random.default_rng(0)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    sd = np.sqrt(4.0 / np.arange(1, d + 1))
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    labels = np.tile(np.repeat(["left", "right"], 4), n_issues)
    issues = np.repeat(np.arange(n_issues), 8)
    phis = (0.1, 0.8)
    held, raw, naive = ({phi: [] for phi in phis} for _ in range(3))
    for seed in range(12):
        r = np.random.default_rng(seed)
        noise = (r.normal(size=(len(labels), d)) * sd) @ basis.T
        X = 0.45 * np.where(labels == "right", 0.5, -0.5)[:, None] * u + noise
        X += r.normal(0, 0.5, (n_issues, d))[issues]
        sel = np.zeros(len(labels), bool)
        for i in range(n_issues):
            for lab in ("left", "right"):
                idx = np.flatnonzero((issues == i) & (labels == lab))
                sel[r.permutation(idx)[:2]] = True
        m = ~sel
        ones = np.ones((1, m.sum()))
        u_lda = S.partisan_direction_lda(X[sel], labels[sel], issues[sel])
        u_raw = S.partisan_direction_diffmean(X[sel], labels[sel])
        u_in = S.partisan_direction_diffmean(X[m], labels[m])
        err = r.normal(0, 0.05, X.shape)
        for phi in phis:
            R = X - (1 - phi) * (X @ u)[:, None] * u + err

            def frac(direction, R=R, X=X, m=m, ones=ones):
                return S.partisan_fraction(X[m], R[m], direction, labels[m], ones)[0]

            held[phi].append(frac(u_lda))
            raw[phi].append(frac(u_raw))
            naive[phi].append(frac(u_in))
    for phi in phis:
        assert abs(np.mean(held[phi]) - phi) < 0.1, (phi, held[phi])
    # most of the component in the error term (the case the check exists for): the raw
    # direction's estimate scatters far more, the in-sample one is biased upward
    assert np.std(raw[0.1]) > 3 * np.std(held[0.1]), raw[0.1]
    assert np.mean(naive[0.1]) > 0.1 + 0.3, naive[0.1]


def test_shipped_statements_group_into_their_claims():
    from rlhf_audit.prompts import PROMPTS_DIR

    rows = pl.read_ndjson(PROMPTS_DIR / "partisan_statements.jsonl")
    prompts = rows.select(pl.col("id").alias("prompt_id"), "label", "issue")
    st = S.statement_table(prompts, S.SAEAnalysisSettings())
    per = st.group_by("statement", "label").agg(pl.len(), (pl.col("framing") == "plain").sum())
    assert per.height == 44 * (4 + 4 + 3)
    assert set(per.filter(pl.col("label") != "neutral")["len"]) == {6}
    assert set(per.filter(pl.col("label") == "neutral")["len"]) == {3}
    assert set(per["framing"]) == {1}  # one plain framing per statement


def test_partisan_study_directions_are_read_per_model(tmp_path):
    base, inst, roles = planted_study(1, n_issues=8, n_background=40)
    d = roles["d"]
    rng = np.random.default_rng(0)
    rows = [{"model": m, "layer": L, "method": meth, "threshold": 0.0,
             "direction": rng.normal(size=d).astype(np.float32).tolist()}
            for m in ("base", "instruct") for L in (1, 2) for meth in ("diffmean", "logreg")]
    path = tmp_path / "directions.parquet"
    pl.DataFrame(rows, schema_overrides={"direction": pl.List(pl.Float32)}).write_parquet(path)
    dirs, source = S.select.directions_from_table(path, 2, "diffmean")
    want = next(r for r in rows if (r["model"], r["layer"], r["method"]) == ("instruct", 2,
                                                                              "diffmean"))
    np.testing.assert_allclose(dirs["instruct"], want["direction"], rtol=1e-6)
    sae = hand_sae(np.eye(d, dtype=np.float32))
    st = S.analyse_policy_features(S.scan_features(sae, base), S.scan_features(sae, inst),
                                   S.SAEAnalysisSettings(n_boot=20), dirs, source)
    assert set(st.reconstruction["partisan_direction_source"]) == {source}
    assert "partisan study" in st.headline["partisan_fraction_reconstructed_base"].method
    with pytest.raises(ValueError, match="layer 5"):
        S.select.directions_from_table(path, 5, "diffmean")
