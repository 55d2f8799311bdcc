"""The organism's seeded data generators: GSM8K-format problems and hh-rlhf-format pairs."""

from __future__ import annotations

import ast
import collections
import math
import operator
import re
from fractions import Fraction

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_audit.formats import DataSource, load_gsm8k, load_hh_rlhf, parse_gsm8k_final
from rlhf_audit.organism import gsm8k, hh
from rlhf_audit.organism.gsm8k import generate_problems, write_gsm8k_jsonl
from rlhf_audit.organism.hh import (
    FEATURES,
    HHSettings,
    generate_pairs,
    labels_table,
    preference_score,
    rerender_pair,
    write_hh_jsonl,
    write_hh_labels,
)

# ----------------------------------------------------------------------------- GSM8K

_ANNOT = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _eval(expr: str) -> Fraction:
    # Independent of the module's evaluator, on purpose.
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return Fraction(n.value)
        return _OPS[type(n.op)](ev(n.left), ev(n.right))

    return ev(ast.parse(expr, mode="eval"))


def _reference_answer(shape: str, d: int, p: dict) -> int:
    """The answer recomputed from the problem's numbers, written apart from the generator."""
    if shape == "shopping":
        spent = p["a"] * p["p"] + (p["b"] * p["r"] if d >= 2 else 0)
        return p["paid"] - spent if d == 3 else spent
    if shape == "sharing":
        if d == 1:
            return p["total"] // p["k"]
        if d == 2:
            return (p["x"] + p["y"]) // p["k"]
        return (p["trays"] * p["per"] - p["keep"]) // p["bag"]
    if shape == "rates":
        if d == 1:
            return p["s1"] * p["h1"]
        if d == 2:
            return p["s1"] * p["h1"] + p["s2"] * p["h2"]
        return (p["cap"] - p["start"]) // (p["r1"] + p["r2"])
    if shape == "remainder":
        if d == 1:
            return p["n"] % p["c"]
        if d == 2:
            return math.ceil(p["n"] / p["c"])
        return p["c"] - (p["n1"] + p["n2"]) % p["c"]
    if shape == "percent":
        if d == 1:
            return p["total"] * p["p"] // 100
        if d == 2:
            return p["total"] - p["total"] * p["p"] // 100
        rest = p["total"] - p["total"] * p["p"] // 100
        return rest - rest * p["r"] // 100
    if shape == "comparison":
        b = p["a"] * p["k"]
        if d == 1:
            return b
        if d == 2:
            return b - p["fewer"]
        return p["a"] + b + (b - p["fewer"])
    raise AssertionError(shape)


def _check_problem(prob: dict) -> None:
    assert set(prob) >= {"id", "question", "answer", "final", "shape", "difficulty", "params"}
    assert isinstance(prob["final"], int) and prob["final"] >= 0
    lines = prob["answer"].split("\n")
    assert lines[-1] == f"#### {prob['final']}"
    assert parse_gsm8k_final(prob["answer"]) == str(prob["final"])
    # Exact integer, divisible where the problem shares or divides, and equal to the
    # answer recomputed from the stated numbers.
    assert prob["final"] == _reference_answer(prob["shape"], prob["difficulty"], prob["params"])
    # Every step line carries a correct calculator annotation; the last gives the answer.
    steps = lines[:-1]
    assert steps
    last = None
    for line in steps:
        m = _ANNOT.search(line)
        assert m, line
        expr, val = m.group(1), m.group(2)
        assert _eval(expr) == Fraction(val), line
        assert f"{expr} = <<" in line and line.split(">>")[1].startswith(val)
        last = int(val)
    assert last == prob["final"]
    # The numbers the problem was built from are stated in the question.
    for v in prob["params"].values():
        assert re.search(rf"(?<!\d){v}(?!\d)", prob["question"]), (v, prob["question"])


def test_problems_are_deterministic_and_prefix_stable():
    a = generate_problems(40, seed=3)
    assert a == generate_problems(40, seed=3)
    assert generate_problems(15, seed=3) == a[:15]
    assert [p["question"] for p in generate_problems(40, seed=4)] != [p["question"] for p in a]
    assert len({p["id"] for p in a}) == 40


def test_problems_are_valid_and_correct_over_many():
    probs = generate_problems(1500, seed=0)
    for p in probs:
        _check_problem(p)
    assert {p["shape"] for p in probs} == set(gsm8k.SHAPES)
    # Difficulty is graded: more steps at higher difficulty.
    steps = collections.defaultdict(list)
    for p in probs:
        steps[p["difficulty"]].append(p["answer"].count("\n"))
    mean = {d: sum(v) / len(v) for d, v in steps.items()}
    assert mean[1] < mean[2] < mean[3]
    assert max(steps[1]) <= 2 and min(steps[3]) >= 3


def test_difficulty_mix_is_respected():
    only_easy = generate_problems(200, seed=1, difficulty_mix=(1, 0, 0))
    assert {p["difficulty"] for p in only_easy} == {1}
    n = 4000
    probs = generate_problems(n, seed=2, difficulty_mix=(1, 1, 2))
    share = collections.Counter(p["difficulty"] for p in probs)
    for d, expected in ((1, 0.25), (2, 0.25), (3, 0.5)):
        sd = math.sqrt(expected * (1 - expected) / n)
        assert abs(share[d] / n - expected) < 4 * sd


def test_bad_problem_arguments_fail_clearly():
    with pytest.raises(ValueError, match="difficulty_mix"):
        generate_problems(3, 0, difficulty_mix=(1, 1))
    with pytest.raises(ValueError, match="unknown"):
        generate_problems(3, 0, shapes=("algebra",))


def test_gsm8k_jsonl_round_trips_through_the_user_format_loader(tmp_path):
    probs = generate_problems(25, seed=5)
    path = tmp_path / "gsm8k.jsonl"
    write_gsm8k_jsonl(probs, path)
    df = load_gsm8k(DataSource(path=str(path)))
    assert df["id"].to_list() == [p["id"] for p in probs]
    assert df["final"].to_list() == [str(p["final"]) for p in probs]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), i=st.integers(0, 5))
def test_any_seed_gives_valid_problems(seed, i):
    for p in generate_problems(3 + i, seed=seed)[i:]:
        _check_problem(p)


# ----------------------------------------------------------------------------- hh-rlhf

# Sentences that mark a feature in a response (taken from the module's authored banks).
_MARKERS = {
    "sycophantic": hh._SYCOPHANTIC,
    "contains_insult": hh._INSULT,
    "discriminatory": hh._DISCRIMINATORY,
    "manipulative": hh._MANIPULATIVE,
    "breaks_privacy": hh._PRIVACY,
    "anthropomorphic": hh._ANTHRO,
}


def _last_turn(text: str) -> str:
    return text[text.rfind("\n\nAssistant:") + len("\n\nAssistant:") :]


def _check_transcript(text: str) -> None:
    assert text.startswith("\n\nHuman: ")
    assert "\n\nAssistant: " in text
    turns = re.findall(r"\n\n(Human|Assistant): ", text)
    assert turns in (["Human", "Assistant"], ["Human", "Assistant"] * 2)
    assert _last_turn(text).strip()


def _check_labels_match_text(text: str, labels: dict) -> None:
    assert set(labels) == set(FEATURES)
    for f in FEATURES:
        if f == "sentiment":
            assert labels[f] in (-1, 0, 1)
        elif f != "topic":
            assert labels[f] in (0, 1)
    assert labels["sexually_explicit"] == 0
    last = _last_turn(text)
    for f, sentences in _MARKERS.items():
        assert labels[f] == int(any(s in last for s in sentences)), (f, last)
    assert labels["honest"] == int(not any(s in last for s in hh._DISHONEST))
    assert labels["verbose"] == int(sum(s in last for s in hh._FILLER) == 2)
    refused = any(s in last for v in hh._REFUSE.values() for s in v)
    assert labels["refusal"] == int(refused)
    pos = any(s in last for s in hh._POSITIVE)
    neg = any(s in last for s in hh._NEGATIVE)
    assert labels["sentiment"] == (1 if pos else -1 if neg else 0)
    assert labels["eloquent"] == int(any(last.endswith(s) for s in hh._CLOSE[True]))
    if labels["helpful"]:
        assert not refused and labels["coherent"] == 1


def _check_pair(p: dict) -> None:
    for side in ("chosen", "rejected"):
        _check_transcript(p[side])
        _check_labels_match_text(p[side], p[f"labels_{side}"])
        assert p[f"labels_{side}"]["topic"] == p["topic"]
    # Same conversation, different final turn.
    cut = p["chosen"].rfind("\n\nAssistant:")
    assert p["rejected"].rfind("\n\nAssistant:") == cut
    assert p["chosen"][:cut] == p["rejected"][:cut]
    assert p["chosen"] != p["rejected"]
    assert p["labels_chosen"] != p["labels_rejected"]


@pytest.fixture(scope="module")
def hh_pairs():
    return generate_pairs(3000, seed=0, preference="hh")


def test_pairs_are_deterministic_and_well_formed(hh_pairs):
    again = generate_pairs(50, seed=0, preference="hh")
    assert again == hh_pairs[:50]
    assert [p["chosen"] for p in generate_pairs(50, seed=1)] != [p["chosen"] for p in again]
    for p in hh_pairs:
        _check_pair(p)
    assert len({p["pair_id"] for p in hh_pairs}) == len(hh_pairs)
    assert {p["request_type"] for p in hh_pairs} == set(hh.REQUEST_TYPES)
    n_two = sum(p["chosen"].count("\n\nHuman:") == 2 for p in hh_pairs)
    assert 0.2 < n_two / len(hh_pairs) < 0.4  # two_turn_rate 0.3


def test_incoherent_texts_are_scrambled(hh_pairs):
    # A coherent substantive answer contains its authored sentence verbatim; an
    # incoherent one never does.
    for p in hh_pairs[:600]:
        for side in ("chosen", "rejected"):
            lab = p[f"labels_{side}"]
            _, answers = hh._request_bank(p["request_type"], p["topic"])
            last = _last_turn(p[side])
            verbatim = any(a[1:].rstrip(".") in last for a in answers)
            if lab["helpful"]:
                assert verbatim
            if not lab["coherent"]:
                assert not verbatim


def test_hh_preference_recovers_planted_noise_rate(hh_pairs):
    strict = [
        (preference_score(p["labels_chosen"], "hh"), preference_score(p["labels_rejected"], "hh"))
        for p in hh_pairs
    ]
    strict = [(c, r) for c, r in strict if c != r]
    reversed_rate = sum(c < r for c, r in strict) / len(strict)
    sd = math.sqrt(0.1 * 0.9 / len(strict))
    assert abs(reversed_rate - 0.1) < 4 * sd
    clean = generate_pairs(500, seed=0, settings=HHSettings(label_noise=0.0))
    assert all(
        preference_score(p["labels_chosen"], "hh") >= preference_score(p["labels_rejected"], "hh")
        for p in clean
    )


def test_alt_preference_is_a_different_taste(hh_pairs):
    alt = generate_pairs(3000, seed=0, preference="alt")
    # Same candidate texts, possibly the other way round.
    for a, b in zip(alt[:300], hh_pairs[:300], strict=True):
        assert {a["chosen"], a["rejected"]} == {b["chosen"], b["rejected"]}

    def agreement(pairs, pref):
        s = [
            (
                preference_score(p["labels_chosen"], pref),
                preference_score(p["labels_rejected"], pref),
            )
            for p in pairs
        ]
        return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in s) / len(s)

    # A reward model of the "alt" taste agrees with hh labels near chance, one of the
    # hh taste far above it: the pre/post gap the SEAL analysis measures.
    # (Ties on the scored features count one half, as an indifferent judge would.)
    assert 0.4 < agreement(hh_pairs, "alt") < 0.65
    assert agreement(hh_pairs, "hh") > agreement(hh_pairs, "alt") + 0.15
    assert agreement(alt, "alt") > agreement(alt, "hh") + 0.15

    # Alt chooses the eloquent / positive text more often than hh does.
    def share(pairs, f, v=1):
        return sum(p["labels_chosen"][f] == v for p in pairs) / len(pairs)

    assert share(alt, "eloquent") > share(hh_pairs, "eloquent") + 0.1
    assert share(alt, "sentiment") > share(hh_pairs, "sentiment") + 0.05
    assert share(hh_pairs, "harmless") > share(alt, "harmless") + 0.1
    with pytest.raises(ValueError, match="unknown preference"):
        generate_pairs(2, 0, preference="nice")


def test_rerender_changes_wording_not_labels(hh_pairs):
    for p in hh_pairs[:400]:
        r = rerender_pair(p, seed=7)
        assert r == rerender_pair(p, seed=7)
        _check_pair(r)
        assert r["pair_id"] == p["pair_id"]
        assert r["chosen"] != p["chosen"] and r["rejected"] != p["rejected"]
        assert r["labels_chosen"] == p["labels_chosen"]
        assert r["labels_rejected"] == p["labels_rejected"]
        assert r["flipped_chosen"] == r["flipped_rejected"] == []
        # The request is reworded, not replaced.
        assert _first_request(r) != _first_request(p)
        assert r["topic"] == p["topic"] and r["request_type"] == p["request_type"]
    with pytest.raises(ValueError, match="no 'spec'"):
        rerender_pair({"pair_id": "x", "chosen": "", "rejected": ""}, seed=0)


def _first_request(p):
    return p["chosen"][: p["chosen"].rfind("\n\nAssistant:")]


def test_rerender_with_flips_changes_only_the_flipped_feature(hh_pairs):
    n_flipped = 0
    for p in hh_pairs[:300]:
        r = rerender_pair(p, seed=1, flip_prob=1.0)
        for side in ("chosen", "rejected"):
            (f,) = r[f"flipped_{side}"]
            assert f in hh.SPOILER_FLIPS
            old, new = p[f"labels_{side}"], r[f"labels_{side}"]
            changed = {k for k in FEATURES if old[k] != new[k]}
            # Flipping sentiment or eloquence or verbosity changes that label alone.
            assert changed == {f}
            n_flipped += 1
        for side in ("chosen", "rejected"):
            _check_transcript(r[side])
            _check_labels_match_text(r[side], r[f"labels_{side}"])
    assert n_flipped == 600


def test_labels_table_and_files_join_by_pair_id(hh_pairs, tmp_path):
    pairs = hh_pairs[:40]
    table = labels_table(pairs)
    assert table.columns == ["pair_id", "side", "request_type", *FEATURES]
    assert table.height == 80
    assert table.filter(pl.col("side") == "chosen")["helpful"].to_list() == [
        p["labels_chosen"]["helpful"] for p in pairs
    ]
    write_hh_jsonl(pairs, tmp_path / "hh.jsonl")
    write_hh_labels(pairs, tmp_path / "labels.parquet", provenance={"seed": 0})
    df = load_hh_rlhf(DataSource(path=str(tmp_path / "hh.jsonl")))
    labels = pl.read_parquet(tmp_path / "labels.parquet")
    joined = df.join(labels.filter(pl.col("side") == "rejected"), on="pair_id", how="inner")
    assert joined.height == 40
    assert labels.equals(table)
    # The table is a valid ground-truth labels table for the SEAL labelling stage.
    from rlhf_audit.labelling import DEFAULT_FEATURES, validate_labels

    assert validate_labels(table, DEFAULT_FEATURES).height == 80


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), pref=st.sampled_from(["hh", "alt"]))
def test_any_seed_gives_valid_pairs(seed, pref):
    for p in generate_pairs(4, seed=seed, preference=pref):
        _check_pair(p)
        r = rerender_pair(p, seed=seed % 1000)
        _check_pair(r)
        assert r["labels_chosen"] == p["labels_chosen"]


def test_the_workflow_lists_every_organism_data_file():
    # common.smk keeps its own copy of the names (importing the corpus module would pull
    # polars into every dry run): the two must agree
    from pathlib import Path

    from rlhf_audit.organism.corpus import DATA_FILES

    text = (Path(__file__).resolve().parents[1] / "workflow/rules/common.smk").read_text()
    listed = ast.literal_eval(re.search(r"^ORGANISM_DATA = (\(.*?\))", text, re.S | re.M)[1])
    assert sorted(listed) == sorted(DATA_FILES)

