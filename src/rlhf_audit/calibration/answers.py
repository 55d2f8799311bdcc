"""The final numeric answer of a reply (GSM8K), and cutting base replies that run on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_audit.calibration.confidence import _confidence_spans
from rlhf_audit.calibration.text import _norm

_ANS_NUM = (r"(?<![\w.,])(?P<neg>-\s?)?\$?\s?(?P<neg2>-)?"
            r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d])")
_ANSWER_NUMBER = re.compile(_ANS_NUM)
_HASHES = re.compile(r"####\s*\**\s*" + _ANS_NUM.replace("(?<![\\w.,])", ""))
_BOXED = re.compile(r"\\boxed\{\s*" + _ANS_NUM.replace("(?<![\\w.,])", ""))
_ANSWER_LABEL = re.compile(
    r"(?:^|\n)[ \t]*[*_#>]*[ \t]*(?:final[ \t]+)?answer[ \t]*[*_]*[ \t]*[:=][ \t]*[*_]*[ \t]*"
    r"(?:approximately[ \t]+|about[ \t]+)?" + _ANS_NUM.replace("(?<![\\w.,])", ""), re.I)
_ANSWER_IS = re.compile(
    r"\banswer\s*(?:is|would\s+be|will\s+be|should\s+be|=|:)\s*[*_]*\s*"
    r"(?:approximately\s+|about\s+|around\s+|roughly\s+)?[*_]*\s*"
    + _ANS_NUM.replace("(?<![\\w.,])", ""), re.I)
_AFTER_PCT = re.compile(r"\s?(?:%|percent\b|per\s?cent\b|/\s?100\b)", re.I)


@dataclass(frozen=True)
class AnswerParse:
    """The final numeric answer found in a reply."""

    value: float | None
    """The number, or None when no answer was found."""
    span: tuple[int, int] | None
    """Character span of the number's digits (sign included) in the reply text."""
    rule: str
    """Which rule found it: '####', 'boxed', 'label', 'answer_is', 'last_number' or 'none'."""


def _num_value(m: re.Match) -> float:
    v = float(m.group("num").replace(",", ""))
    return -v if (m.group("neg") or m.group("neg2")) else v


def _num_span(m: re.Match) -> tuple[int, int]:
    start = m.start("neg") if m.group("neg") else (m.start("neg2") if m.group("neg2")
                                                   else m.start("num"))
    return start, m.end("num")


def extract_answer(text: str, *, prefix: str = "") -> AnswerParse:
    """Find the final numeric answer in a model reply.

    Rules in order: the first GSM8K ``#### N``; the last ``\\boxed{N}``; the first line
    labelled ``Answer: N`` / ``Final answer: N``; the last "answer is N"; else the last
    number that is not a percentage or part of the confidence statement. Commas, ``$``,
    decimals and negatives are handled. ``prefix`` is text that precedes the reply (the
    end of a completion prompt, e.g. ``Answer:``) so that a reply `` 42`` to a prompt ending
    ``Answer:`` reads as labelled; numbers inside the prefix are never taken. Spans are
    relative to ``text``.
    """
    if not isinstance(text, str):
        return AnswerParse(None, None, "none")
    full = _norm(prefix + text)
    off = len(prefix)
    # Numbers of the confidence statement are never the answer ("... answer is 85% likely").
    taken = _confidence_spans(full)

    def hit(m: re.Match, rule: str) -> AnswerParse | None:
        s, e = _num_span(m)
        if s < off or any(s < ce and e > cs for cs, ce in taken):
            return None
        return AnswerParse(_num_value(m), (s - off, e - off), rule)

    for m in _HASHES.finditer(full):
        if (r := hit(m, "####")) is not None:
            return r
    for m in reversed(list(_BOXED.finditer(full))):
        if (r := hit(m, "boxed")) is not None:
            return r
    for m in _ANSWER_LABEL.finditer(full):
        if (r := hit(m, "label")) is not None:
            return r
    for m in reversed(list(_ANSWER_IS.finditer(full))):
        if (r := hit(m, "answer_is")) is not None:
            return r
    for m in reversed(list(_ANSWER_NUMBER.finditer(full))):
        if _AFTER_PCT.match(full, m.end()):
            continue
        if (r := hit(m, "last_number")) is not None:
            return r
    return AnswerParse(None, None, "none")


def truncate_reply(text: str, markers: Sequence[str]) -> str:
    """``text`` up to the first of ``markers`` (a prefix of ``text``, so offsets stay valid)."""
    cut = len(text)
    for mk in markers:
        i = text.find(mk)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]
