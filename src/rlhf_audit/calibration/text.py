"""Text normalisation and GSM8K gold answers, shared by the calibration modules."""

from __future__ import annotations

import re

# Single-character replacements only, so that offsets in the normalised text are
# offsets in the original.
_NORMALISE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                            "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00a0": " ",
                            "\uff05": "%", "\u2009": " ", "\u202f": " "})


def _norm(text: str) -> str:
    return text.translate(_NORMALISE)

_GOLD = re.compile(r"####\s*(?P<neg>-)?\s*\$?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.?\d+)"
                   r"\s*\.?\s*$")


def parse_gold(answer: str) -> float:
    """The number after the final ``#### `` of a GSM8K answer (commas and ``$`` removed).

    Raises ValueError quoting the answer's end when it does not end in ``#### N``.
    """
    if not isinstance(answer, str):
        raise ValueError(f"GSM8K answer must be text, got {type(answer).__name__}")
    m = _GOLD.search(_norm(answer).strip())
    if not m:
        raise ValueError(f"GSM8K answer does not end in '#### N' with a number N (it ends "
                         f"{answer.strip()[-40:]!r}); the final line must be e.g. '#### 42'")
    v = float(m.group("num").replace(",", ""))
    return -v if m.group("neg") else v
