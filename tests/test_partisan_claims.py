"""The partisan rows of the claims table are tested statements with verdicts."""

from __future__ import annotations

import polars as pl

from rlhf_audit import partisan
from rlhf_audit.report import CLAIMS, claims_markdown, claims_table


def rec(value, lo, hi, n=44):
    return {"value": value, "lo": lo, "hi": hi, "n": n, "unit": "", "description": "x"}


def doc(numbers):
    return {"run_label": "paper", "numbers": {f"partisan.p.{k}": v for k, v in numbers.items()}}


def rows(t: pl.DataFrame, key: str) -> list[dict]:
    return t.filter(pl.col("key") == f"partisan.p.{key}").to_dicts()


def test_every_partisan_claim_states_a_test_on_a_scale_free_key():
    part = [c for c in CLAIMS if c.study == "partisan"]
    assert part and all(c.expectation and c.null for c in part)
    for c in part:
        assert c.key in partisan.HEADLINE_KEYS
        bound = c.expectation.split()[1]
        if bound.startswith("@"):
            assert bound[1:] in partisan.HEADLINE_KEYS
    # raw-unit SDs and ranges are descriptive: never compared with the paper's
    assert not {c.key for c in part} & {"sd_base", "sd_instruct", "range_base", "range_instruct"}


def test_compression_verdicts_follow_the_interval_and_the_noise_floor():
    strong = doc({"variance_ratio": rec(0.09, 0.07, 0.12), "sd_ratio": rec(0.3, 0.26, 0.35),
                  "variance_ratio_noise_floor": rec(0.01, None, None)})
    t = claims_table(strong)
    compress, present = rows(t, "variance_ratio")
    assert compress["expectation"] == "< 1" and compress["verdict"] == "supported"
    assert compress["published_in_interval"] == "yes"  # 0.0895 inside [0.07, 0.12]
    assert "null: no compression" in compress["test"]
    assert present["verdict"] == "supported"
    assert "variance_ratio_noise_floor (0.01)" in present["test"]

    # an instruct model with no partisan variance left: compressed, but not "still there"
    gone = doc({"variance_ratio": rec(0.004, -0.002, 0.012),
                "variance_ratio_noise_floor": rec(0.015, None, None)})
    compress, present = rows(claims_table(gone), "variance_ratio")
    assert compress["verdict"] == "supported" and present["verdict"] == "not supported"
    compress, present = rows(claims_table(doc({"variance_ratio": rec(0.9, 0.6, 1.3),
                                               "variance_ratio_noise_floor": rec(0.8, None,
                                                                                None)})),
                             "variance_ratio")
    assert compress["verdict"] == "undecided" and present["verdict"] == "undecided"
    # without the floor in the run the test cannot be made
    _, present = rows(claims_table(doc({"variance_ratio": rec(0.09, 0.07, 0.12)})),
                      "variance_ratio")
    assert present["verdict"] == "n/a"


def test_probe_claims_are_tested_against_chance_and_listed_when_not_run():
    t = claims_table(doc({"auc_base": rec(0.93, 0.9, 0.96),
                          "transfer_auc_base_to_instruct": rec(0.52, 0.45, 0.6),
                          "cosine_base_instruct": rec(-0.4, -0.6, -0.2)}))
    assert rows(t, "auc_base")[0]["verdict"] == "supported"
    assert rows(t, "transfer_auc_base_to_instruct")[0]["verdict"] == "undecided"
    assert rows(t, "cosine_base_instruct")[0]["verdict"] == "not supported"
    missing = t.filter((pl.col("study") == "partisan") & (pl.col("key") == "cohens_d_base"))
    assert missing["verdict"].to_list() == ["not run"]
    md = claims_markdown(t, "paper")
    assert "| test | verdict |" in md and "null: chance" in md
