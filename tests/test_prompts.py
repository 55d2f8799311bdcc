"""Authored partisan prompts: shipped files match the source, counts, balance, answers."""

from __future__ import annotations

import collections
import copy
import json

import pytest
import yaml

from rlhf_audit import prompts
from rlhf_audit.formats import DataSource, load_partisan
from rlhf_audit.prompts import (
    PromptBuildSettings,
    PromptSourceError,
    balanced_answer,
    build_identity_primes,
    build_policy_questions,
    build_statements,
    load_source,
    parse_source,
    partisan_answer,
)


@pytest.fixture(scope="module")
def source():
    return load_source()


@pytest.fixture(scope="module")
def raw_source():
    with open(prompts.default_source_path(), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _read_jsonl(name):
    with open(prompts.PROMPTS_DIR / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_shipped_files_are_exactly_the_builder_output(source):
    # The shipped JSONL can never drift from the authored source.
    assert prompts.stale_outputs(source, prompts.PROMPTS_DIR) == []
    for name, text in prompts.build_outputs(source).items():
        assert (prompts.PROMPTS_DIR / name).read_text(encoding="utf-8") == text


def test_check_cli_detects_a_stale_file(source, tmp_path):
    prompts.write_outputs(source, tmp_path)
    assert prompts.main(["--out-dir", str(tmp_path), "--check"]) == 0
    p = tmp_path / prompts.OUTPUT_NAMES["statements"]
    p.write_text(p.read_text(encoding="utf-8").replace("I'm convinced", "I think", 1))
    assert prompts.main(["--out-dir", str(tmp_path), "--check"]) == 1


def test_counts_and_balance(source):
    rows = _read_jsonl(prompts.OUTPUT_NAMES["statements"])
    assert len(source.issues) >= 40
    assert len(rows) >= 1000
    by_label = collections.Counter(r["label"] for r in rows)
    assert by_label["left"] == by_label["right"] >= 500
    assert by_label["neutral"] > 0
    # Balanced within every issue, and every template is used equally by both sides,
    # so neither the issue nor the phrasing frame predicts the side.
    per_issue = collections.Counter((r["issue"], r["label"]) for r in rows)
    for issue in source.issues:
        assert per_issue[(issue.id, "left")] == per_issue[(issue.id, "right")] > 0
        assert per_issue[(issue.id, "neutral")] > 0
    per_tpl = collections.Counter((r["id"].rsplit("-", 1)[1], r["label"]) for r in rows)
    for t in source.partisan_templates:
        assert per_tpl[(t.id, "left")] == per_tpl[(t.id, "right")] > 0


def test_statements_are_well_formed(source):
    rows = build_statements(source)
    assert len({r["id"] for r in rows}) == len(rows)
    issue_ids = {i.id for i in source.issues}
    for r in rows:
        assert list(r) == ["id", "text", "label", "issue"]
        assert r["label"] in ("left", "right", "neutral")
        assert r["issue"] in issue_ids
        assert r["text"][0].isupper() and r["text"].endswith(".")
        assert ".." not in r["text"]
        # The claim named in the id is in the text.
        issue, label, k, _ = r["id"].rsplit("-", 3)
        claim = source.issue(issue).claims(label)[int(k)]
        assert claim[1:] in r["text"]
    # Left and right claims never repeat one another.
    claims = [c for i in source.issues for s in ("left", "right", "neutral") for c in i.claims(s)]
    assert len(set(claims)) == len(claims)


def test_shipped_statements_load_through_the_user_format_loader():
    df = load_partisan(DataSource(path=str(prompts.PROMPTS_DIR / "partisan_statements.jsonl")))
    assert df.height >= 1000
    assert set(df["label"].unique()) == {"left", "right", "neutral"}


def test_policy_questions_and_identity_primes(source):
    qs = _read_jsonl(prompts.OUTPUT_NAMES["questions"])
    assert qs == build_policy_questions(source)
    assert {q["issue"] for q in qs} == {i.id for i in source.issues}
    assert all(q["question"].endswith("?") for q in qs)
    primes = _read_jsonl(prompts.OUTPUT_NAMES["identity_primes"])
    assert primes == build_identity_primes(source)
    by_q = collections.defaultdict(list)
    for p in primes:
        by_q[p["question_id"]].append(p)
    qtext = {q["id"]: q["question"] for q in qs}
    assert set(by_q) == set(qtext)
    used = set()
    for qid, rows in by_q.items():
        assert sorted(r["identity"] for r in rows) == ["left", "right"]
        left, right = sorted(rows, key=lambda r: r["identity"])
        assert left["text"].endswith(qtext[qid]) and right["text"].endswith(qtext[qid])
        # Parallel phrasings: same index on both sides, and the prime text differs.
        p_left, p_right = left["id"].rsplit("-p", 1)[1], right["id"].rsplit("-p", 1)[1]
        assert p_left == p_right
        assert left["text"] != right["text"]
        assert left["text"].startswith(source.identities["left"][int(p_left)])
        used.add(int(p_left))
    assert used == set(range(len(source.identities["left"])))


def test_more_identity_phrasings_per_question(source):
    rows = build_identity_primes(source, PromptBuildSettings(identity_phrasings_per_question=3))
    assert len(rows) == 3 * 2 * sum(len(i.questions) for i in source.issues)
    assert len({r["id"] for r in rows}) == len(rows)
    with pytest.raises(ValueError, match="identity_phrasings_per_question"):
        build_identity_primes(source, PromptBuildSettings(identity_phrasings_per_question=99))


def test_balanced_answer_uses_both_sides(source):
    first_side = collections.Counter()
    for issue in source.issues:
        for seed in range(5):
            text = balanced_answer(issue.id, n_per_side=2, seed=seed, source=source)
            assert text == balanced_answer(issue.id, n_per_side=2, seed=seed, source=source)
            left = [c for c in issue.left if c in text]
            right = [c for c in issue.right if c in text]
            assert len(left) == 2 and len(right) == 2
            assert any(n in text or n[:1].upper() + n[1:] in text for n in issue.neutral)
            first_side["left" if text.find(left[0]) < text.find(right[0]) else "right"] += 1
    # Side order is randomised: each side comes first in a fair share of answers.
    n = sum(first_side.values())
    assert 0.35 < first_side["left"] / n < 0.65


def test_partisan_answer_is_one_sided(source):
    for issue in source.issues:
        for side, other in (("left", "right"), ("right", "left")):
            text = partisan_answer(issue.id, side, n_claims=3, seed=1, source=source)
            assert sum(c[1:] in text for c in issue.claims(side)) == 3
            assert not any(c[1:] in text for c in issue.claims(other))
            assert not any(c[1:] in text for c in issue.neutral)
    assert partisan_answer("minimum_wage", "left", seed=0) != partisan_answer(
        "minimum_wage", "left", seed=3
    )
    with pytest.raises(ValueError, match="side"):
        partisan_answer("minimum_wage", "center")
    with pytest.raises(KeyError, match="unknown issue 'no_such_issue'"):
        balanced_answer("no_such_issue")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["issues"][0]["left"].__setitem__(0, "a claim with a period."), "punctuation"),
        (lambda d: d["issues"][0]["right"].pop(), "as many right claims"),
        (lambda d: d["issues"][1].update(id=d["issues"][0]["id"]), "duplicate issue id"),
        (lambda d: d["issues"][2]["questions"].append("No question mark"), "must end in '\\?'"),
        (
            lambda d: d["templates"]["partisan"].append({"id": "x", "text": "no slot"}),
            "exactly one",
        ),
        (lambda d: d["issues"][3].pop("neutral"), "'neutral' must be a non-empty list"),
        (lambda d: d["identities"]["right"].pop(), "parallel"),
        (lambda d: d["issues"][4]["left"].__setitem__(0, d["issues"][5]["right"][0]), "repeats"),
    ],
)
def test_malformed_source_fails_with_the_entry_named(raw_source, edit, message):
    bad = copy.deepcopy(raw_source)
    edit(bad)
    with pytest.raises(PromptSourceError, match=message) as err:
        parse_source(bad, "bad.yaml")
    assert "bad.yaml" in str(err.value)
