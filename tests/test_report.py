"""Claims table and headline merging on planted headline numbers."""

import json

from rlhf_audit.headline import fragment, merge
from rlhf_audit.report import claims_markdown, claims_table, documented_key
from rlhf_audit.stats import Estimate


def doc_with(numbers):
    return {"run_label": "paper", "numbers": numbers}


def rec(value, lo, hi, n=100):
    return {"value": value, "lo": lo, "hi": hi, "n": n, "unit": "", "description": "x"}


def test_published_inside_and_outside_interval():
    doc = doc_with({"partisan.p.auc_base": rec(0.94, 0.93, 0.96),
                    "partisan.p.sd_ratio": rec(0.5, 0.45, 0.55)})
    t = claims_table(doc)
    row = {r["key"]: r for r in t.iter_rows(named=True)}
    assert row["partisan.p.auc_base"]["published_in_interval"] == "yes"
    assert row["partisan.p.sd_ratio"]["published_in_interval"] == "no"
    # claims of studies that did not run are listed as such, not dropped
    assert "not run" in t.filter(t["study"] == "reward")["published_in_interval"].to_list()


def test_qualitative_claims_use_their_bound():
    key = "steering.p.prime_effect_instruct_judge"
    for (lo, hi), verdict in (((0.1, 0.3), "yes"), ((-0.3, -0.1), "no"), ((-0.1, 0.2),
                                                                          "undecided")):
        t = claims_table(doc_with({key: rec(0.0, lo, hi)}))
        assert t.filter(t["key"] == key)["published_in_interval"].item() == verdict


def test_sae_keys_carry_pair_and_sae_and_organism_label():
    t = claims_table(doc_with({"sae.org.my_sae.share_inactive_in_instruct": rec(1, 1, 1)}))
    r = t.filter(t["key"] == "sae.org.my_sae.share_inactive_in_instruct").row(0, named=True)
    assert r["pair"] == "org.my_sae" and r["published_in_interval"] == "yes"
    assert claims_markdown(t, "organism").startswith("# Claims table — ORGANISM RESULTS")


def test_merge_prefixes_study_and_pair(tmp_path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps(fragment({"auc_base": Estimate(0.9, 0.8, 0.95, 40, "AUC")},
                                     {"auc_base": "probe AUC"})))
    doc = merge({("partisan", "llama"): p}, "paper")
    assert doc["numbers"]["partisan.llama.auc_base"]["description"] == "probe AUC"
    assert doc["n_numbers"] == 1


def test_documented_keys_including_feature_templates():
    assert documented_key("partisan.llama.auc_base")
    assert documented_key("reward.oa.imprint_post_helpful")
    assert documented_key("sae.llama.llama_scope.share_inactive_in_instruct")
    assert not documented_key("partisan.llama.made_up_number")


def test_html_shows_provenance():
    from rlhf_audit.report import claims_html

    t = claims_table(doc_with({}))
    page = claims_html(t, "paper", {"git_commit": "abc123", "models": {"m": {"hf": "x/y"}}})
    assert "Provenance" in page and "abc123" in page and "x/y" in page


def test_steering_claims_are_tests_against_their_null():
    from rlhf_audit.report import CLAIMS

    rows = [c for c in CLAIMS if c.study == "steering"]
    assert len(rows) >= 4
    for c in rows:
        assert "test:" in c.claim and c.expectation.split()[0] in "<>"
        assert c.key.endswith("_judge")  # the judge is the primary scorer of claims 4-5
        assert documented_key(f"steering.p.{c.key}")
    key = "steering.p.disconnect_null_gap_feature_judge"
    t = claims_table(doc_with({key: rec(-0.3, -0.4, -0.2, n=16)}))
    assert t.filter(t["key"] == key)["published_in_interval"].item() == "yes"
