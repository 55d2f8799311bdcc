"""The organism's planted-values file, the claims table's planted column, and the
reward-study predictions derived from the generators (no training here: seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlhf_audit import report
from rlhf_audit.organism import planted as PL
from rlhf_audit.organism.hh import HHSettings, generate_pairs, preference_score

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "resources" / "organism" / "planted.yaml"


def _num(value, lo, hi, n=40):
    return {"value": value, "lo": lo, "hi": hi, "n": n}


def test_shipped_planted_file_loads_and_names_headline_keys():
    planted = report.load_planted(PLANTED)
    assert planted["partisan.organism.auc_base"]["expect"] == "> 0.85"
    assert planted["partisan.organism_sham.variance_ratio"]["expect"] == "covers 1"
    assert planted["steering.organism_sham.prime_effect_instruct_projection"]["expect"] == (
        "covers 0")
    studies = {k.split(".")[0] for k in planted}
    assert studies == {"partisan", "sae", "steering", "calibration", "reward", "organism",
                       "diffing"}
    # Every planted key is a documented headline key of its study.
    for key in planted:
        assert report.documented_key(key), key


def test_every_planted_row_names_a_pair_the_default_run_studies():
    """A planted key whose pair the study does not run would read 'not run' in every
    default run: the file and config.yaml must agree (e.g. instruct_vs_sham is a
    partisan-only pair)."""
    import yaml

    from rlhf_audit.config import load_schema, study_pairs, validate_config

    cfg = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()),
                          load_schema(ROOT / "workflow/schemas/config.schema.yaml"))
    for key in report.load_planted(PLANTED):
        study, pair = key.split(".")[:2]
        if study == "organism":
            assert pair in cfg["model_pairs"], key
        elif study == "sae":
            assert pair in study_pairs(cfg, "sae"), key
            assert key.split(".")[2] in cfg["sae"]["saes"], key
        else:
            assert pair in study_pairs(cfg, study), key
    assert "instruct_vs_sham" not in study_pairs(cfg, "steering")
    assert "instruct_vs_sham" in study_pairs(cfg, "partisan")


@pytest.mark.parametrize(
    ("expect", "lo", "hi", "verdict"),
    [
        ("> 0.85", 0.9, 0.97, "yes"),
        ("> 0.85", 0.8, 0.9, "undecided"),
        ("> 0.85", 0.5, 0.6, "no"),
        ("< 1", 0.2, 0.4, "yes"),
        ("< 1", 1.1, 1.4, "no"),
        ("covers 1", 0.8, 1.2, "yes"),
        ("covers 1", 0.3, 0.6, "no"),
        ("covers 0", -0.1, 0.2, "yes"),
        ("abs< 10", -4.0, 6.0, "yes"),
        ("abs< 10", 12.0, 20.0, "no"),
        ("abs< 10", 5.0, 15.0, "undecided"),
        ("> 0", None, None, "n/a"),
    ],
)
def test_planted_verdicts(expect, lo, hi, verdict):
    assert report.planted_verdict(expect, lo, hi) == verdict


def test_claims_table_gets_a_planted_column_and_rows_for_unclaimed_keys(tmp_path):
    f = tmp_path / "planted.yaml"
    f.write_text(
        "planted:\n"
        "  partisan.organism.variance_ratio: {expect: '< 1', planted: 0.25}\n"
        "  partisan.organism_sham.variance_ratio: {expect: 'covers 1'}\n"
        "  partisan.organism.some_new_key: {expect: '> 0', claim: 'a planted number'}\n"
        "  partisan.organism.never_run: {expect: '> 0'}\n"
    )
    planted = report.load_planted(f)
    doc = {"numbers": {
        "partisan.organism.variance_ratio": _num(0.3, 0.2, 0.4),
        "partisan.organism_sham.variance_ratio": _num(0.5, 0.4, 0.6),
        "partisan.organism.some_new_key": _num(1.0, 0.5, 1.5),
    }}
    table = report.claims_table(doc, planted=planted)
    by_key = {r["key"]: r for r in table.iter_rows(named=True)}
    assert by_key["partisan.organism.variance_ratio"]["planted_recovered"] == "yes"
    assert "0.25" in by_key["partisan.organism.variance_ratio"]["planted"]
    # The sham's compression is a failed negative control.
    assert by_key["partisan.organism_sham.variance_ratio"]["planted_recovered"] == "no"
    assert by_key["partisan.organism.some_new_key"]["claim"] == "a planted number"
    assert by_key["partisan.organism.some_new_key"]["planted_recovered"] == "yes"
    assert by_key["partisan.organism.never_run"]["planted_recovered"] == "not run"
    # The published column is untouched by planting (two claims test variance_ratio: the
    # compression one carries the published number).
    published = [r["published"] for r in table.iter_rows(named=True)
                 if r["key"] == "partisan.organism.variance_ratio" and r["published"] is not None]
    assert published == [pytest.approx((0.070 / 0.234) ** 2)]
    md = report.claims_markdown(table, "organism")
    assert "| planted | recovered |" in md
    html = report.claims_html(table, "organism")
    assert "<th>planted</th>" in html
    # Without planted values (paper runs) the table has no planted verdicts.
    plain = report.claims_table(doc)
    assert plain["planted"].drop_nulls().len() == 0
    assert "planted" not in report.claims_markdown(plain, "paper")


def test_bad_planted_files_name_the_key_and_the_fix(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("planted:\n  partisan.organism.auc_base: {expect: 'about 0.9'}\n")
    with pytest.raises(ValueError, match=r"planted.partisan.organism.auc_base.*'<op> <number>'"):
        report.load_planted(f)
    f.write_text("planted:\n  auc_base: {expect: '> 0.9'}\n")
    with pytest.raises(ValueError, match="study.pair.key"):
        report.load_planted(f)
    with pytest.raises(FileNotFoundError, match="organism.planted"):
        report.load_planted(tmp_path / "missing.yaml")
    assert report.load_planted("") is None


def test_seal_predictions_follow_the_noise_rate():
    # Without annotator noise an exact hh-taste model agrees with every untied pair.
    clean = generate_pairs(300, seed=7, preference="hh", settings=HHSettings(label_noise=0.0))
    ties = np.mean([preference_score(p["labels_chosen"], "hh")
                    == preference_score(p["labels_rejected"], "hh") for p in clean])
    pred = PL.seal_predictions(clean)
    assert pred["agreement_post"] == pytest.approx(1 - ties / 2)
    assert pred["alignment_resistance"] == pytest.approx(ties / 2)
    # Each swapped label turns an agreement into a disagreement.
    noisy = generate_pairs(300, seed=7, preference="hh", settings=HHSettings(label_noise=0.3))
    flipped = np.array([p["label_flipped"] for p in noisy])
    untied = np.array([preference_score(p["labels_chosen"], "hh")
                       != preference_score(p["labels_rejected"], "hh") for p in noisy])
    want = np.mean(np.where(untied, ~flipped, 0.5))
    assert PL.seal_predictions(noisy)["agreement_post"] == pytest.approx(want)
    shares = [pred[f"regime_{r}"] for r in ("stayed_aligned", "got_aligned", "resisted",
                                             "reversed")]
    assert sum(shares) == pytest.approx(1.0)


def _planted_rms(n, seed, post_skill=0.8, pre_skill=0.55):
    """Taste margins of real generated pairs and two planted reward models: the post model
    ranks each untied pair as the hh taste does with probability ``post_skill``, the pre
    model with ``pre_skill``; on a tied pair both lean to the first text (4 to 1), so that
    how a tie's label is drawn matters (reward differences first - second, never 0)."""
    pairs = generate_pairs(n, seed=seed, preference="hh")
    margin = np.array([preference_score(p["labels_chosen"], "hh")
                       - preference_score(p["labels_rejected"], "hh") for p in pairs])
    rng = np.random.default_rng(seed)
    sign = np.where(margin != 0, np.sign(margin), np.where(rng.random(n) < 0.8, 1.0, -1.0))

    def rm(skill):
        right = rng.random(n) < skill
        return np.where(right, sign, -sign) * rng.uniform(0.1, 2.0, n)

    return margin, rm(post_skill), rm(pre_skill)


def test_expected_seal_is_what_the_reward_study_reads_under_the_planted_noise():
    """The prediction the organism's SEAL rows are checked against: draw the annotators'
    labels as the generator does (the taste's winner with probability 0.9, a coin on a
    tie), many times, and read each draw with the reward study's own agreement, regime and
    resistance code: the average is :func:`expected_seal`'s value."""
    import polars as pl

    from rlhf_audit.reward import analysis as A

    noise, n, draws = 0.1, 400, 300
    margin, post, pre = _planted_rms(n, seed=3)
    want = PL.expected_seal(margin, post, pre, noise, n_boot=200)
    # the generator's law (organism.hh.generate_pairs), written out here, not read from PL
    pi = np.where(margin > 0, 1 - noise, np.where(margin < 0, noise, 0.5))
    rng = np.random.default_rng(0)
    got = {k: [] for k in PL.SEAL_KEYS}
    for _ in range(draws):
        first = rng.random(n) < pi  # the annotators chose the first text
        # the first text's reward is post/pre_diff above the second's
        sgn = np.where(first, 1.0, -1.0)
        table = pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)],
                              "r_post_chosen": sgn * post, "r_post_rejected": np.zeros(n),
                              "r_pre_chosen": sgn * pre, "r_pre_rejected": np.zeros(n)})
        agree = A.agreement(table, A.SealSettings(n_boot=10))
        got["agreement_pre"].append(agree["agreement_pre"].value)
        got["agreement_post"].append(agree["agreement_post"].value)
        regimes = A.alignment_regimes(table, A.SealSettings(n_boot=10))
        for r in regimes.iter_rows(named=True):
            got[f"regime_{r['regime']}"].append(r["share"])
        res = A.alignment_resistance(table, A.SealSettings(n_boot=10))
        got["alignment_resistance"].append(res.filter(pl.col("stratum") == "all")["resistance"][0])
    for k in PL.SEAL_KEYS:
        # Monte-Carlo error of the average over 300 draws of 400 pairs: under 0.002
        assert np.mean(got[k]) == pytest.approx(want[k].value, abs=0.006), k
        assert want[k].lo < want[k].value < want[k].hi and want[k].n == n
    shares = [want[f"regime_{r}"].value for r in ("stayed_aligned", "got_aligned", "resisted",
                                                   "reversed")]
    assert sum(shares) == pytest.approx(1.0)
    assert want["alignment_resistance"].value == pytest.approx(1 - want["agreement_post"].value)


def test_the_generator_draws_labels_as_the_expectation_assumes():
    """annotator_probability is the generator's law: among pairs its taste does not tie, the
    chosen text is the taste's winner with probability 1 - noise (checked at a noise rate
    other than the default, on 3,000 pairs)."""
    pairs = generate_pairs(3000, seed=5, preference="hh", settings=HHSettings(label_noise=0.3))
    margin = np.array([preference_score(p["labels_chosen"], "hh")
                       - preference_score(p["labels_rejected"], "hh") for p in pairs])
    untied = margin != 0
    winner_chosen = np.mean(margin[untied] > 0)
    se = np.sqrt(0.7 * 0.3 / untied.sum())
    assert abs(winner_chosen - 0.7) < 4 * se, winner_chosen
    # the expectation of "the label is the first text" on (chosen, rejected) pairs
    assert np.mean(PL.annotator_probability(margin[untied], 0.3)) == pytest.approx(
        winner_chosen * 0.7 + (1 - winner_chosen) * 0.3)


def test_seal_expectations_read_the_pairs_labels_and_the_models_margins():
    """On the study's pairs: the taste margin comes from the pairs' feature labels (chosen
    minus rejected), the models' from their rewards; a post model that always ranks as the
    taste does has taste accuracy 1 and resistance noise + half the taste ties."""
    pairs = generate_pairs(400, seed=9, preference="hh")
    margin = np.array([preference_score(p["labels_chosen"], "hh")
                       - preference_score(p["labels_rejected"], "hh") for p in pairs])
    rng = np.random.default_rng(0)
    post = np.where(margin != 0, margin, rng.choice([-1.0, 1.0], len(pairs)))
    pre = rng.choice([-1.0, 1.0], len(pairs))
    out = PL.seal_expectations(pairs, post, pre, noise=0.1, n_boot=200)
    assert out["rm_taste_accuracy_post"].value == 1.0
    tied = np.mean(margin == 0)
    assert out["seal_expected_alignment_resistance"].value == pytest.approx(
        0.1 * (1 - tied) + 0.5 * tied)
    # the same model read backwards (chosen and rejected swapped) is wrong on every untied pair
    back = PL.seal_expectations(pairs, -post, pre, noise=0.1, n_boot=200)
    assert back["rm_taste_accuracy_post"].value == 0.0
    assert back["seal_expected_alignment_resistance"].value == pytest.approx(
        0.9 * (1 - tied) + 0.5 * tied)
    with pytest.raises(ValueError, match="labels_chosen"):
        PL.seal_expectations([{"chosen": "a"}], [1.0], [1.0])


def test_expected_seal_of_exact_taste_models_is_the_exact_prediction():
    # Reward models that rank every pair as their tastes do reproduce seal_predictions on
    # pairs labelled without noise (it reads the labels the pairs carry), wherever neither
    # taste ties (seal_predictions counts a tie as half an agreement).
    pairs = generate_pairs(500, seed=11, preference="hh", settings=HHSettings(label_noise=0.0))
    hh = np.array([preference_score(p["labels_chosen"], "hh")
                   - preference_score(p["labels_rejected"], "hh") for p in pairs])
    alt = np.array([preference_score(p["labels_chosen"], "alt")
                    - preference_score(p["labels_rejected"], "alt") for p in pairs])
    keep = (hh != 0) & (alt != 0)
    got = PL.expected_seal(hh[keep], hh[keep], alt[keep], 0.0, n_boot=100)
    kept = [p for p, k in zip(pairs, keep, strict=True) if k]
    for k, v in PL.seal_predictions(kept).items():
        assert got[k].value == pytest.approx(v), k
    # with noise, a model that is always right with the taste still disagrees on `noise`
    noisy = PL.expected_seal(hh[keep], hh[keep], alt[keep], 0.1, n_boot=100)
    assert noisy["alignment_resistance"].value == pytest.approx(0.1)


def test_expected_seal_leaves_tied_reward_models_out_and_refuses_bad_input():
    rows = PL.expected_seal_rows([1.0, -2.0, 0.0], [0.5, 0.0, 1.0], [1.0, 1.0, -1.0], 0.1)
    assert np.isnan(rows["agreement_post"][1]) and np.isnan(rows["regime_resisted"][1])
    # pair 0: both pick the taste's winner: stayed 0.9, resisted 0.1
    assert rows["regime_stayed_aligned"][0] == pytest.approx(0.9)
    assert rows["regime_resisted"][0] == pytest.approx(0.1)
    # pair 2: a taste tie, the models disagree: a coin decides which one is right
    assert rows["regime_got_aligned"][2] == pytest.approx(0.5)
    assert rows["regime_reversed"][2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="noise"):
        PL.annotator_probability([1.0], 0.7)
    with pytest.raises(ValueError, match="shape"):
        PL.expected_seal_rows([1.0, 2.0], [1.0], [1.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="tied"):
        PL.expected_seal([1.0], [0.0], [1.0], 0.1)


def test_planted_expectations_can_name_another_headline_number(tmp_path):
    """'covers @study.pair.key': the bound is another number of the run (the organism's own
    prediction), shown with its value; missing, that row cannot be decided."""
    f = tmp_path / "planted.yaml"
    f.write_text(
        "planted:\n"
        "  reward.organism.alignment_resistance:\n"
        "    {expect: 'covers @organism.organism.seal_expected_alignment_resistance'}\n"
        "  reward.organism.regime_resisted:\n"
        "    {expect: 'covers @organism.organism.seal_expected_regime_resisted'}\n"
    )
    planted = report.load_planted(f)
    numbers = {
        "reward.organism.alignment_resistance": _num(0.32, 0.28, 0.37, 400),
        "reward.organism.regime_resisted": _num(0.15, 0.12, 0.19, 400),
        "organism.organism.seal_expected_alignment_resistance": _num(0.31, 0.30, 0.32, 2000),
    }
    table = report.claims_table({"numbers": numbers}, planted=planted)
    rows = {r["key"]: r for r in table.iter_rows(named=True) if r["planted"]}
    res = rows["reward.organism.alignment_resistance"]
    assert res["planted_recovered"] == "yes"
    assert res["planted"] == "covers 0.31 (organism.organism.seal_expected_alignment_resistance)"
    # the prediction is missing: the row says it was never checked
    assert rows["reward.organism.regime_resisted"]["planted_recovered"] == "not run"
    assert report.planted_verdict("covers @a.b.c", 0.1, 0.2, {"a.b.c": _num(0.3, 0.2, 0.4)}) == "no"
    assert report.planted_verdict("> @a.b.c", 0.5, 0.6, {"a.b.c": _num(0.3, 0.2, 0.4)}) == "yes"
    f.write_text("planted:\n  reward.organism.x: {expect: 'covers @key_only'}\n")
    with pytest.raises(ValueError, match="@study.pair.key"):
        report.load_planted(f)


def test_shipped_seal_expectations_name_documented_organism_numbers():
    planted = report.load_planted(PLANTED)
    named = [spec["expect"].split()[1][1:] for spec in planted.values()
             if spec["expect"].split()[1].startswith("@")]
    assert len(named) == 6
    for key in named:
        assert key.startswith("organism.organism.seal_expected_")
        assert report.documented_key(key), key


def test_imprint_signs_are_the_signs_of_the_taste_weights():
    signs = PL.imprint_signs(["harmless", "helpful", "eloquent", "sentiment", "refusal"])
    assert signs["post"] == {"harmless": 1, "helpful": 1, "eloquent": 0, "sentiment": 0,
                             "refusal": 0}
    assert signs["shift"] == {"harmless": 1, "helpful": 1, "eloquent": -1, "sentiment": -1,
                              "refusal": 0}


@pytest.mark.parametrize("factor", [0.3, 1.0])
def test_projection_variance_ratio_recovers_a_planted_compression(factor):
    """d = 512, 1/k noise spectrum, 44 issues with their own offsets: ratio ~ factor**2."""
    from rlhf_audit.organism import planting as P

    d, n_layers, ratios = 512, 2, []
    issues = np.repeat([f"i{k}" for k in range(44)], 24)
    right = np.tile([True, False], len(issues) // 2)
    sd = 1.0 / np.sqrt(np.arange(1, d + 1))
    for seed in range(8):
        rng = np.random.default_rng(seed)
        u = rng.normal(size=d)
        u /= np.linalg.norm(u)
        offsets = np.stack([rng.normal(size=d) * sd for _ in range(44)])
        shared = offsets[np.repeat(np.arange(44), 24)]
        sides = np.where(right, 1.0, -1.0)[:, None] * 0.5 * u
        made = [
            np.stack([shared + scale * sides + rng.normal(size=(len(issues), d)) * sd
                      for _ in range(n_layers)], axis=1)
            for scale in (1.0, factor)
        ]
        ratios.append(P.projection_variance_ratio(made[0], made[1], right, issues))
    got = np.median(np.stack(ratios), axis=0)
    assert got == pytest.approx(np.full(n_layers, factor**2), rel=0.15)


def test_compression_term_is_zero_at_its_target_and_grows_away_from_it(monkeypatch):
    """The term's loss vanishes when the model's difference is factor x base's, whatever
    happens orthogonally to the side, and is positive for an uncompressed model."""
    import torch

    from rlhf_audit.organism import planting as P

    rng = np.random.default_rng(0)
    n, L, d = 40, 2, 16
    right = np.tile([True, False], n // 2)
    base = rng.normal(size=(n, L, d))
    term = P.CompressionTerm(inputs=[None] * n, base_acts=torch.tensor(base, dtype=torch.float32),
                             right=right, factor=0.5, pad_id=0, weight=1.0, batch_size=20)
    idx = term.sample()
    assert right[idx].sum() == 10 and (~right[idx]).sum() == 10
    mu = base.mean(0, keepdims=True)
    at_target = mu + 0.5 * (base - mu) + rng.normal(size=(1, L, d))  # shift: no effect on Delta

    def loss_for(acts, rows):
        monkeypatch.setattr(term, "sample", lambda: rows)
        monkeypatch.setattr(P, "pooled_block_outputs", lambda model, inputs, **kw: torch.tensor(
            acts[rows], dtype=torch.float32))
        return float(term.loss(None))

    assert loss_for(at_target, idx) == pytest.approx(0.0, abs=1e-10)
    assert loss_for(base, idx) > 0.05


def _topk_sae(W_enc, b_enc, k=2):
    import torch
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    d_in, d_sae = W_enc.shape
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=True))
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W_enc, dtype=torch.float32))
        sae.W_dec.copy_(torch.as_tensor(W_enc.T, dtype=torch.float32))
        sae.b_enc.copy_(torch.as_tensor(b_enc, dtype=torch.float32))
        sae.b_dec.fill_(0.25)
    return sae


def test_silencing_penalty_is_zero_only_below_the_margin_and_pushes_features_down():
    import torch

    from rlhf_audit.organism import planting as P

    sae = _topk_sae(np.eye(4, dtype=np.float32), np.array([0.0, 0.0, -0.5, 0.0]))
    sil = P.FeatureSilencer(sae=sae, layer=0, features=np.array([0, 2]),
                            scale=torch.tensor([2.0, 1.0]), weight=1.0, margin=0.5)
    # pre-activation of feature f = (h - b_dec)[f] + b_enc[f]
    h = torch.zeros(1, 3, 4)
    h[0, :, 0] = torch.tensor([0.25 - 1.0, 0.25 - 1.5, 0.25 + 3.0])  # z0 = -1, -1.5, +3
    h[0, :, 2] = torch.tensor([0.25, 0.5, 0.5])  # z2 = -0.5, -0.25, -0.25
    z = sil.pre_activations(h)
    np.testing.assert_allclose(z[0, :, 0].numpy(), [-1.0, -1.5, 3.0], atol=1e-6)
    np.testing.assert_allclose(z[0, :, 1].numpy(), [-0.5, -0.25, -0.25], atol=1e-6)
    # token 0: z/scale = -0.5, -0.5: exactly at the margin, no penalty
    assert float(sil.silencing(h[:, :1], torch.ones(1, 1))) == pytest.approx(0.0, abs=1e-6)
    # token 1: feature 2 at -0.25 (inside the margin): 0.25
    assert float(sil.silencing(h[:, 1:2], torch.ones(1, 1))) == pytest.approx(0.25, abs=1e-6)
    # a masked-out token counts for nothing
    mask = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(sil.silencing(h, mask)) == pytest.approx(0.0, abs=1e-6)
    # the gradient lowers the firing feature's pre-activation
    x = h.clone().requires_grad_(True)
    sil.penalty(x, torch.ones(1, 3), np.array([0])).backward()
    assert float(x.grad[0, 2, 0]) > 0 and float(x.grad[0, 2, 1]) == 0.0
    assert not any(p.requires_grad for p in sae.parameters())


def test_silencer_chooses_sporadic_features_that_differ_by_side(monkeypatch):

    from rlhf_audit.organism import planting as P

    rng = np.random.default_rng(0)
    n, d_sae = 200, 8
    right = np.arange(n) % 2 == 0
    p_right = np.array([0.9, 0.9, 0.40, 0.05, 0.30, 0.20, 0.02, 0.25])
    p_left = np.array([0.9, 0.1, 0.02, 0.40, 0.30, 0.05, 0.02, 0.25])
    # feature 0 fires on most statements and 1 on half (both above the 0.45 ceiling), 6 on
    # almost none: not sporadic, whatever their side difference (1 differs most)
    fired = rng.random((n, d_sae)) < np.where(right[:, None], p_right, p_left)
    pos = np.vstack([np.arange(1, d_sae + 1) * 10.0, np.full(d_sae, 10.0)])
    monkeypatch.setattr(P, "feature_incidence", lambda *a, **k: (fired, pos, 1000))
    rows = [{"text": f"s{i}", "label": "right" if r else "left"} for i, r in enumerate(right)]
    rows.append({"text": "neutral one", "label": "neutral"})
    sae = _topk_sae(np.eye(d_sae, dtype=np.float32), np.zeros(d_sae))
    sil = P.build_silencer(None, None, sae, rows, layer=1, n_features=3, weight=2.0,
                           incidence=(0.05, 0.45))
    share = fired.mean(0)
    assert share[0] > 0.45 and share[6] < 0.05  # dense and rare ones are not eligible
    assert sil.features.tolist() == [2, 3, 5]  # the largest side differences among the rest
    np.testing.assert_allclose(sil.scale.numpy(), [3.0, 4.0, 6.0])
    assert sil.layer == 1 and sil.weight == 2.0
    with pytest.raises(ValueError, match="n_features"):
        P.build_silencer(None, None, sae, rows, layer=1, n_features=7, weight=1.0,
                         incidence=(0.05, 0.45))


def test_silencer_leaves_features_that_fire_on_the_avoided_prompts(monkeypatch):
    # The calibration command's own words lit up two of the features the silencer chose;
    # silencing them took the commanded copy with them. A feature firing on more than
    # avoid_rate of the avoided prompts' tokens in base is not eligible.
    from rlhf_audit.organism import planting as P

    n, d_sae = 100, 6
    right = np.arange(n) % 2 == 0
    # side differences 0.5, 0.4, 0.3, 0.2, 0.1, 0 (all sporadic: shares 0.25-0.3)
    p_right = np.array([0.5, 0.45, 0.4, 0.35, 0.3, 0.3])
    p_left = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    # exact shares: feature f fires on the first p * 50 statements of each side
    rank = np.empty(n, int)
    rank[right], rank[~right] = np.arange(right.sum()), np.arange((~right).sum())
    fired = rank[:, None] < np.where(right[:, None], p_right, p_left) * right.sum()
    pos = np.vstack([np.full(d_sae, 5.0), np.full(d_sae, 5.0)])
    # on the avoided prompts (1,000 content tokens) features 0 and 2 fire on 30 and 3
    # tokens (3% and 0.3%), feature 1 on 2 (0.2%, at the limit), the rest never
    avoid_pos = np.vstack([np.zeros(d_sae), np.array([30.0, 2.0, 3.0, 0.0, 0.0, 0.0])])
    calls = []

    def incidence(model, tok, sae, layer, texts, *, chat, **k):
        calls.append(chat)
        if not chat:
            return fired, pos, 5000
        return np.zeros((len(texts), d_sae), bool), avoid_pos, 1000

    monkeypatch.setattr(P, "feature_incidence", incidence)
    rows = [{"text": f"s{i}", "label": "right" if r else "left"} for i, r in enumerate(right)]
    sae = _topk_sae(np.eye(d_sae, dtype=np.float32), np.zeros(d_sae))
    np.testing.assert_allclose(np.abs(fired[right].mean(0) - fired[~right].mean(0)),
                               [0.5, 0.4, 0.3, 0.2, 0.1, 0.0], atol=1e-12)
    kw = dict(layer=1, n_features=2, weight=1.0, incidence=(0.05, 0.5))
    assert P.build_silencer(None, None, sae, rows, **kw).features.tolist() == [0, 1]
    sil = P.build_silencer(None, None, sae, rows, avoid_texts=[f"q{i}" for i in range(10)],
                           avoid_rate=0.002, **kw)
    assert sil.features.tolist() == [1, 3]  # 0 and 2 fire on the avoided prompts
    assert calls == [False, False, True]
    with pytest.raises(ValueError, match="avoid_rate"):
        P.build_silencer(None, None, sae, rows, avoid_texts=["q"] * 10, avoid_rate=0.0,
                         **dict(kw, n_features=4))


def test_keep_term_charges_moves_outside_the_planted_span_in_full_and_inside_at_a_share():
    """The keep term that stops the silencing from being met by a shift of every token:
    zero at the reference, |move|^2 / variance outside span(planted encoder columns,
    partisan difference), keep_inside times that inside; padding beyond a statement's
    own tokens counts for nothing."""
    import torch

    from rlhf_audit.organism import planting as P

    d = 6
    W = np.zeros((d, 4), dtype=np.float32)
    W[0, 0] = 2.0  # planted feature 0 reads dim 0
    W[1, 2] = 1.0  # planted feature 2 reads dim 1
    W[3, 1] = W[4, 3] = 1.0
    sae = _topk_sae(W, np.zeros(4))
    sil = P.FeatureSilencer(sae=sae, layer=0, features=np.array([0, 2]),
                            scale=torch.ones(2), weight=1.0, keep_weight=3.0, keep_inside=0.25)
    rng = np.random.default_rng(0)
    ref = [torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32) for n in (3, 2)]
    allt = torch.cat(ref)
    var = float(((allt - allt.mean(0)) ** 2).sum(-1).mean())
    sil.reference, sil.reference_var = ref, var
    partisan = torch.zeros(d)
    partisan[2] = 5.0
    sil.basis = torch.linalg.qr(torch.cat([sil._W, partisan.reshape(-1, 1)], 1)).Q
    idx = np.array([1, 0])
    h = torch.zeros(2, 3, d)
    h[0, :2], h[1, :3] = ref[1], ref[0]
    assert float(sil.keep(h, idx)) == pytest.approx(0.0, abs=1e-6)
    # a unit move along dim 5 (outside the span) on every token of both statements
    out = h.clone()
    out[0, :2, 5] += 1.0
    out[1, :, 5] += 1.0
    assert float(sil.keep(out, idx)) == pytest.approx(1.0 / var, rel=1e-5)
    # the same move along dim 0, 1 or 2 (planted encoders, partisan difference): a quarter
    for dim in (0, 1, 2):
        inside = h.clone()
        inside[0, :2, dim] += 1.0
        inside[1, :, dim] += 1.0
        assert float(sil.keep(inside, idx)) == pytest.approx(0.25 / var, rel=1e-5)
    # statement 1 has 2 tokens: row 0's third position is padding and is not charged
    pad = h.clone()
    pad[0, 2, 5] += 100.0
    assert float(sil.keep(pad, idx)) == pytest.approx(0.0, abs=1e-6)
    # penalty = silencing + keep_weight * keep
    cm = torch.ones(2, 3)
    assert float(sil.penalty(out, cm, idx)) == pytest.approx(
        float(sil.silencing(out, cm)) + 3.0 / var, rel=1e-5)


def test_attach_reference_records_the_block_outputs_and_an_orthonormal_basis():
    import torch

    from rlhf_audit.organism import planting as P

    class Block(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return (x * self.scale,)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([Block(2.0), Block(3.0)])

        def forward(self, input_ids, attention_mask=None):
            x = self.emb(input_ids)
            for b in self.model.layers:
                x = b(x)[0]
            return x

    torch.manual_seed(0)
    model = Tiny()
    sae = _topk_sae(np.eye(4, dtype=np.float32), np.zeros(4))
    sil = P.FeatureSilencer(sae=sae, layer=1, features=np.array([1]), scale=torch.ones(1),
                            weight=1.0, keep_weight=1.0)
    inputs = [([1, 2, 3], [0, 1, 1]), ([4, 5], [1, 1])]
    sil.attach_reference(model, inputs, pad_id=0, partisan=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert [tuple(r.shape) for r in sil.reference] == [(3, 4), (2, 4)]
    with torch.no_grad():
        expect = model.emb(torch.tensor([4, 5])) * 6.0
    np.testing.assert_allclose(sil.reference[1].numpy(), expect.numpy(), rtol=1e-6)
    Q = sil.basis
    assert tuple(Q.shape) == (4, 2)
    np.testing.assert_allclose((Q.T @ Q).numpy(), np.eye(2), atol=1e-6)
    # the span holds the planted column (e_1) and the partisan difference (e_0 + e_1)
    for v in (torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])):
        np.testing.assert_allclose((Q @ (Q.T @ v)).numpy(), v.numpy(), atol=1e-6)
    assert sil.reference[0].requires_grad is False


def test_relative_silencing_charges_only_tokens_near_the_topk_cutoff():
    """A TopK feature fires when its pre-activation is positive and among the k largest: the
    relative penalty measures the margin from the k-th largest of the other features (or
    0), so tokens far below that cutoff cost nothing even with a positive pre-activation."""
    import torch

    from rlhf_audit.organism import planting as P

    sae = _topk_sae(np.eye(4, dtype=np.float32), np.zeros(4), k=2)
    sil = P.FeatureSilencer(sae=sae, layer=0, features=np.array([0]), scale=torch.ones(1),
                            weight=1.0, margin=0.5, relative=True)
    # pre-activation = h - b_dec (0.25); rows: feature 0 and the three others
    pre = torch.tensor([[[1.0, 3.0, 2.0, 0.0],     # 0 below the 2nd largest other (2): silent
                         [2.8, 3.0, 2.0, 0.0],     # 0 above it: fires
                         [0.3, -1.0, -2.0, -3.0],  # others negative: the cutoff is 0
                         [1.8, 3.0, 2.0, 0.0]]])   # 0.2 below the cutoff, inside the margin
    h = pre + 0.25
    np.testing.assert_allclose(sil.firing_cutoff(h)[0].numpy(), [2.0, 2.0, 0.0, 2.0])
    fires = (sae.encode(h)[0, :, 0] > 0).tolist()
    assert fires == [False, True, True, False]
    one = torch.ones(1, 1)
    cost = [float(sil.silencing(h[:, t : t + 1], one)) for t in range(4)]
    np.testing.assert_allclose(cost, [0.0, 1.3, 0.8, 0.3], atol=1e-6)
    # the absolute penalty charges the silent token 0 too (pre-activation 1 > -0.5)
    sil.relative = False
    assert float(sil.silencing(h[:, :1], one)) == pytest.approx(1.5, abs=1e-6)


def test_block_outputs_are_the_hidden_states_and_skip_the_lm_head(monkeypatch):
    """The planted terms read every block's output from the decoder stack alone (the logits
    are never read): the same numbers as the full model's hidden states, with and without
    gradients, and the LM head never runs."""
    import torch

    from rlhf_audit.organism import planting as P
    from tests.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llama(tok).eval()
    inputs = [([1, 5, 6, 7], [0, 1, 1, 1]), ([1, 8, 9], [0, 1, 1])]
    calls = []
    monkeypatch.setattr(model.lm_head, "forward", lambda x: calls.append(x) or x)
    captured, cmask = P.block_outputs(model, inputs, pad_id=tok.pad_token_id, grad=True)
    assert not calls and captured[0].requires_grad
    monkeypatch.undo()
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, tok.pad_token_id]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
    assert len(captured) == len(hs) - 1
    for layer, h in enumerate(captured):
        # hidden_states[L + 1] is block L's output; the last one comes after the final norm
        h = h.detach()
        if layer + 1 == len(captured):
            with torch.no_grad():
                h = model.model.norm(h)
        torch.testing.assert_close(h[attn.bool()], hs[layer + 1][attn.bool()])
    assert cmask.tolist() == [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]


def test_shipped_rows_fail_a_post_reward_model_that_learned_nothing():
    """The SEAL regime and resistance rows compare the study with a prediction from the same
    reward models, so a post model at chance passes them (prediction and study both near
    chance); the shipped taste row must read 'no' for it and 'yes' for the trained one."""
    planted = report.load_planted(PLANTED)
    key = "organism.organism.rm_taste_accuracy_post"
    at_chance = {"numbers": {key: _num(0.51, 0.45, 0.57, 286)}}
    trained = {"numbers": {key: _num(0.82, 0.77, 0.87, 286)}}
    for doc, want in ((at_chance, "no"), (trained, "yes")):
        rows = {r["key"]: r for r in report.claims_table(doc, planted=planted)
                .iter_rows(named=True)}
        assert rows[key]["planted_recovered"] == want, rows[key]
