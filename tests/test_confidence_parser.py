"""Verbalized-confidence and GSM8K answer parsing (rlhf_audit.calibration).

A table of phrasings with the value a careful reader would take (adversarial ones
included), plus property tests: rendered percentages round-trip through several
phrasings and distractor problem text, and the parsers never raise on any text.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_audit.calibration import (
    PARSE_KINDS,
    WORD_LEVELS,
    extract_answer,
    parse_confidence,
    parse_gold,
)

# (text, expected value or None, expected kind)
CASES = [
    # plain numeric forms
    ("85%", 0.85, "percent"),
    ("85 %", 0.85, "percent"),
    ("0.85", 0.85, "fraction"),
    ("85 percent", 0.85, "percent"),
    ("about 85 percent", 0.85, "percent"),
    ("confidence: 85/100", 0.85, "fraction"),
    ("Confidence: 9/10", 0.9, "fraction"),
    ("I'd say 7/10", 0.7, "fraction"),
    ("I'd rate it 8 out of 10.", 0.8, "fraction"),
    ("I'm 85% sure", 0.85, "percent"),
    ("I\u2019m 85% sure", 0.85, "percent"),
    ("I'm 95 % confident", 0.95, "percent"),
    ("Confidence: 85%", 0.85, "percent"),
    ("Confidence: 85.5%", 0.855, "percent"),
    ("Confidence: ~85%", 0.85, "percent"),
    ("**Confidence:** 85%", 0.85, "percent"),
    ("Confidence \u2014 80%", 0.8, "percent"),
    ("Confidence level: 90%", 0.9, "percent"),
    ("Certainty: 80%", 0.8, "percent"),
    ("My confidence is about 75 percent.", 0.75, "percent"),
    ("I am 60% confident in this answer.", 0.6, "percent"),
    ("I'm roughly 70% certain.", 0.7, "percent"),
    ("I'd say I'm about 70% sure.", 0.7, "percent"),
    ("I'd put it at 70 percent.", 0.7, "percent"),
    ("I'd estimate 65%.", 0.65, "percent"),
    ("It's 90% likely to be correct.", 0.9, "percent"),
    ("There's an 80% chance my answer is right.", 0.8, "percent"),
    ("I'm 100% sure.", 1.0, "percent"),
    ("Confidence: 0%", 0.0, "percent"),
    ("I am ninety percent sure", 0.9, "percent"),
    ("Confidence: seventy-five percent", 0.75, "percent"),
    # bare numbers after a label: 0.85 vs 85
    ("Confidence: 0.85", 0.85, "fraction"),
    ("Confidence: 85", 0.85, "percent"),
    ("confidence: 50", 0.5, "percent"),
    ("confidence: 0.5", 0.5, "fraction"),
    ("Confidence: 100", 1.0, "percent"),
    ("Confidence (0-100): 85", 0.85, "percent"),
    ("Probability of being correct: 0.9", 0.9, "fraction"),
    # ranges read as the midpoint
    ("between 60 and 70%", 0.65, "percent"),
    ("60-70%", 0.65, "percent"),
    ("Confidence: 60-70%", 0.65, "percent"),
    ("I'm between 60% and 80% sure.", 0.7, "percent"),
    ("confidence: between 0.6 and 0.7", 0.65, "fraction"),
    # the reply format the templates ask for, with problem percentages around it
    ("Answer: 42\nConfidence: 95%", 0.95, "percent"),
    ("Answer: 20%\nConfidence: 90%", 0.9, "percent"),
    ("The answer is 42. I am 95% confident.", 0.95, "percent"),
    ("A store offers 25% off a $80 jacket, so she pays $60. Answer: 60. Confidence: 70%",
     0.7, "percent"),
    ("A certain store marks up prices by 30%. Confidence: 65%", 0.65, "percent"),
    ("I'm 85% sure that 20% of the price is the tax.", 0.85, "percent"),
    ("Confidence: 85% (the discount was 20%)", 0.85, "percent"),
    ("My answer is 12, and I'm about 85 percent sure of it.", 0.85, "percent"),
    ("He saves 10% each month. How sure am I? 90%.", 0.9, "percent"),
    ("How sure am I? About 85%.", 0.85, "percent"),
    ("I'm not 100% sure, but about 80%.", 0.8, "percent"),
    # verbal levels (table in the module docstring)
    ("high confidence", 0.85, "words"),
    ("very high confidence", 0.95, "words"),
    ("moderate confidence", 0.6, "words"),
    ("medium confidence", 0.6, "words"),
    ("low confidence", 0.3, "words"),
    ("very low confidence", 0.1, "words"),
    ("Confidence: High", 0.85, "words"),
    ("My confidence level is moderate.", 0.6, "words"),
    ("The tax is 8%, so the total is $54. Confidence: high", 0.85, "words"),
    ("20% of the 40 students are absent, so 32 are present. I'm somewhat sure the answer is 32.",
     0.6, "words"),
    ("I'm very confident.", 0.95, "words"),
    ("I'm fairly confident.", 0.85, "words"),
    ("I'm somewhat confident.", 0.6, "words"),
    ("I'm not sure.", 0.3, "words"),
    ("I am uncertain about this.", 0.3, "words"),
    ("I'm not confident at all.", 0.1, "words"),
    ("I'm not at all sure.", 0.1, "words"),
    # negations, bounds and out-of-range numbers are not confidences
    ("not 90% sure", None, "ambiguous"),
    ("I'm not 90% sure.", None, "ambiguous"),
    ("I'm not even 50% sure.", None, "ambiguous"),
    ("at least 80% sure", None, "ambiguous"),
    ("I'm less than 50% sure", None, "ambiguous"),
    ("Confidence: 150%", None, "ambiguous"),
    # percentages that are not confidences
    ("100% wrong", None, "missing"),
    ("Sure! 20% of 50 is 10.", None, "missing"),
    ("Make sure to add the 15% tip. The total is $23.", None, "missing"),
    ("The price rose by 30%, so the answer is 39.", None, "missing"),
    ("Answer: 42 (85%)", None, "missing"),
    # explicit not-available and refusals
    ("confidence: N/A", None, "missing"),
    ("Confidence: none", None, "missing"),
    ("Confidence: unknown", None, "missing"),
    ("Confidence:", None, "missing"),
    ("", None, "missing"),
    ("I cannot provide a confidence level.", None, "refusal"),
    ("I'm unable to estimate my confidence.", None, "refusal"),
    ("As an AI, I don't have feelings of certainty.", None, "refusal"),
]


def test_enough_cases():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES), "duplicate phrasings in the table"


@pytest.mark.parametrize(("text", "value", "kind"), CASES, ids=[repr(c[0])[:50] for c in CASES])
def test_phrasing(text, value, kind):
    got = parse_confidence(text)
    assert got.kind == kind, got
    if value is None:
        assert got.value is None, got
    else:
        assert got.value == pytest.approx(value, abs=1e-12), got


def test_word_table_is_ordered():
    vals = [WORD_LEVELS[k] for k in ("very low", "low", "moderate", "high", "very high")]
    assert vals == sorted(vals) and len(set(vals)) == 5


def test_span_points_at_the_confidence():
    text = "A 25% discount: she pays $60.\nAnswer: 60\nConfidence: 70%"
    got = parse_confidence(text)
    assert text[got.span[0]:got.span[1]] == "70%"


def test_failure_reason_is_given():
    assert "negated" in parse_confidence("I'm not 90% sure").reason
    assert "bound" in parse_confidence("at least 80% sure").reason
    assert parse_confidence("The price rose by 30%.").reason.startswith("no confidence")


# -- properties -----------------------------------------------------------------------

PCT_TEMPLATES = [
    "Confidence: {p}%",
    "I'm {p}% sure.",
    "My confidence is about {p} percent.",
    "confidence: {p}/100",
    "Confidence level: {p}",
    "{p}% confident",
    "Answer: 42\nConfidence: {p}%",
    "The answer is 17. I am {p}% certain of it.",
]
DISTRACTORS = [
    "The price rose by {q}%.",
    "She scored {q}% on the quiz.",
    "{q}% of the class walked to school.",
    "After a {q}% discount the shirt costs $12.",
]
percents = st.one_of(st.integers(0, 100).map(str),
                     st.integers(0, 999).map(lambda x: f"{x / 10:.1f}"))


@settings(max_examples=300, deadline=None)
@given(p=percents, template=st.sampled_from(PCT_TEMPLATES))
def test_rendered_percent_round_trips(p, template):
    got = parse_confidence(template.format(p=p))
    expected = float(p) / 100
    if template == "Confidence level: {p}" and "." in p and float(p) <= 1:
        expected = float(p)  # documented: a bare decimal <= 1 after a label is a fraction
    if template == "Confidence level: {p}" and p == "1":
        # documented: a bare integer 1 is 1% on a 0-100 scale and 100% on a 0-1 one
        assert got.value is None and got.kind == "ambiguous", got
        return
    assert got.value == pytest.approx(expected, abs=1e-12), (template, p, got)


@settings(max_examples=200, deadline=None)
@given(p=st.integers(0, 100), q=st.integers(1, 99), template=st.sampled_from(PCT_TEMPLATES),
       distractor=st.sampled_from(DISTRACTORS))
def test_problem_percentages_are_not_taken(p, q, template, distractor):
    text = distractor.format(q=q) + " So the answer is 17.\n" + template.format(p=p)
    got = parse_confidence(text)
    if template == "Confidence level: {p}" and p == 1:
        assert got.kind == "ambiguous", (text, got)  # documented: a bare 1 has no scale
        return
    assert got.value == pytest.approx(p / 100, abs=1e-12), (text, got)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_never_raises_and_stays_in_range(text):
    got = parse_confidence(text)
    assert got.kind in PARSE_KINDS
    assert got.value is None or 0.0 <= got.value <= 1.0
    assert (got.value is not None) == (got.kind in ("percent", "fraction", "words"))
    if got.span is not None:
        assert 0 <= got.span[0] < got.span[1] <= len(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["I'm", "not", "sure", "confidence", ":", "85%", "0.85", "85",
                                 "between", "and", "70%", "N/A", "high", "very", "low", "of",
                                 "percent", "at least", "\n", ".", "?", "7/10", "wrong"]),
                max_size=12))
def test_never_raises_on_cue_soup(words):
    got = parse_confidence(" ".join(words))
    assert got.value is None or 0.0 <= got.value <= 1.0


# -- GSM8K answers --------------------------------------------------------------------

def _render(x: float, commas: bool, dollar: bool) -> str:
    body = f"{abs(x):,}" if commas else f"{abs(x)}"
    if body.endswith(".0"):
        body = body[:-2]
    return ("-" if x < 0 else "") + ("$" if dollar else "") + body


numbers = st.one_of(st.integers(-10**7, 10**7).map(float),
                    st.integers(-10**6, 10**6).map(lambda x: x / 100))


@settings(max_examples=300, deadline=None)
@given(x=numbers, commas=st.booleans())
def test_gold_round_trips(x, commas):
    ans = f"She has 3 + 4 = <<3+4=7>>7 apples.\n#### {_render(x, commas, False)}"
    assert parse_gold(ans) == pytest.approx(x)


@settings(max_examples=300, deadline=None)
@given(x=numbers, commas=st.booleans(), dollar=st.booleans(),
       template=st.sampled_from(["The answer is {}.", "Answer: {}\nConfidence: 80%",
                                 "#### {}", "So the total is 12 + 5.\nFinal answer: {}",
                                 "First 20% of 50 is 10, then \\boxed{{{}}}",
                                 "Step 1: 7 * 3 = 21.\nThe answer is {} dollars. I'm 90% sure.",
                                 "We get 15 and then {}"]))
def test_answer_round_trips(x, commas, dollar, template):
    text = template.format(_render(x, commas, dollar))
    got = extract_answer(text)
    assert got.value == pytest.approx(x), (text, got)
    s, e = got.span
    assert float(text[s:e].replace(",", "").replace("$", "")) == pytest.approx(x)


def test_answer_rules():
    assert extract_answer(" 42\nConfidence: 85%", prefix="Answer:").rule == "label"
    assert extract_answer(" 42\nConfidence: 85%", prefix="Answer:").span == (1, 3)
    assert extract_answer("The answer is $1,234.50.").value == 1234.5
    # GSM8K marker first, even when other numbers follow
    assert extract_answer("#### 18\nQuestion: 5 more").value == 18
    # the confidence is not the answer
    assert extract_answer("I get 12 apples. I'm 80% sure, confidence 80").value == 12
    # a number in the prompt's last line is never taken
    assert extract_answer(" I don't know", prefix="Problem 3. Answer:").value is None
    assert extract_answer("no number here").rule == "none"


def test_gold_errors_name_the_fix():
    with pytest.raises(ValueError, match="#### N"):
        parse_gold("The answer is 12.")
    with pytest.raises(ValueError, match="#### N"):
        parse_gold("#### twelve")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_answer_parser_never_raises(text):
    got = extract_answer(text)
    assert got.value is None or math.isfinite(got.value)
    if "####" not in text:
        with pytest.raises(ValueError):
            parse_gold(text)
