"""Verbalized confidence (:func:`parse_confidence`) is the model's own statement, never the
signal it restates. The first rule that finds something decides:

1. The last labelled line (``Confidence: 85%``, ``**Final confidence:** 85%``, ``Confidence
   level (0-100): 85``; at the start of a line or after another field, as in ``Answer: 4.
   Confidence: 80%``) that states anything: its first number not attributed to the signal,
   else its verbal level, else N/A or a refusal. A line that only repeats the requested
   format (``Confidence: <how likely ...>%``) states nothing and is skipped.
2. Otherwise the last number tied to a confidence cue in a first-person clause (``I'm 85%
   sure``, ``I'd put my confidence at 85%``); then the last such number in an impersonal
   clause (``It's 90% likely to be correct``); then the last percentage or ratio standing on
   a line of its own (or a reply that is nothing but a decimal).
3. Otherwise the last verbal level of the model's own (table below).
4. Otherwise None, with kind "ambiguous" when the only numbers near a cue are negated (``not
   90% sure``), bounds (``at least 80%``), contrasts (``more confident than 40%``, ``rather
   than 40%``, ``instead of 40%``), negative or out of range; "refusal" for "I cannot
   provide a confidence"; "missing" for ``Confidence: N/A``, for a reply that only restates
   the signal (reason "only the external signal's value is stated"), or for no statement.
   Every kind is counted in :func:`metrics`; nothing is dropped silently.

Whose number it is. Within a clause (clauses end at ``. ! ? ;``, a line break, or but /
while / whereas / although / though / however / yet), the mention nearest before the number
decides: a first-person word (I, I'm, my, we, our) makes it the model's; a mention of the
signal's source (verifier, checker, monitor, grader, rater, evaluator; "the signal", "the
rating", "its estimate"; "you said / mentioned"; "it says", "he said"; "according to")
makes it the signal's, which is never read as the model's own. Exceptions: the model adopts
the signal ("I agree with the verifier: 70%", "The verifier's 70% estimate is my
confidence"), and a number right after a ``Confidence:`` label is the model's statement
even when it names its source ("Confidence: 70% (the verifier's estimate)"), unless a later
number in the same line is not attributed ("Confidence: 40% according to the checker, but
I'm 90% sure" reads 90%). With no mention before it, an attribution after it ("40%,
according to the checker") makes a number the signal's.

Revisions and corrections. A number introduced by actually / wait / make that / or rather /
more like / closer to / correction / on second thought / let me revise / change it to
within 100 characters of an earlier confidence number replaces it (``I'd say 70%...
actually 50%`` reads 50%; ``Confidence: 80%`` then ``Actually, make that 70%.`` reads 70%);
after a negated or bounded number, "but" / "rather" / "instead" also introduce the
correction (``not 80%, more like 60%`` and ``I'm not 100% sure, but about 80%`` read 60% and
80%). A restated signal never revises the model's own number.

Numbers and scales (value is a share in [0, 1]):

=====================================================  ===========  =====================
phrasing                                               value        kind
=====================================================  ===========  =====================
``85%``, ``85 percent``, ``eighty-five percent``       0.85         percent
``between 60 and 70%``, ``60-70%``                     0.65 (mid)   percent
``0.85`` (a decimal <= 1)                              0.85         fraction
``N/M``, ``N out of M`` (``8/10``, ``4 out of 5``)     N / M        fraction
``N in M chance`` (``9 in 10 chance``)                 N / M        fraction
``N on a scale of L to M``, ``N on an L-M scale``,     N / M        fraction
``on a scale from L to M ... N`` (L = 0 or 1)
``Confidence (L-M): N``, ``Confidence (out of M): N``  N / M        fraction
``Confidence: N`` (a bare integer N >= 2 or N = 0)     N / 100      percent
``Confidence: 1`` (a bare integer 1)                   None         ambiguous
negative (``-20%``, ``Confidence: -0.3``, ``minus``)   None         ambiguous
above the scale (``150%``, ``12/10``)                  None         ambiguous
=====================================================  ===========  =====================

The 1-based scales read as a ratio (``7 on a scale of 1 to 10`` is 0.7, as ``7/10``), so the
same rating means the same share however it is written; scales starting elsewhere are not
read. A bare ``Confidence: 1`` is decided once: it is ambiguous (1% on the 0-100 scale the
prompts ask for, 100% on a 0-1 scale; either reading could be off by 99 points), so it is
counted as "ambiguous" rather than guessed; ``Confidence: 1.0``, ``1%`` and ``Confidence
(0-1): 1`` are unambiguous. A bare number counts only right after a confidence label.
Percentages followed by a quantity word (``20% off``, ``20% of``, ``100% wrong``) are never
confidences, and scale descriptions (``0-100``) are skipped. Verbal levels (kind "words"):

   ===========  =====  ================================================================
   level        value  phrasings
   ===========  =====  ================================================================
   very high    0.95   very high / extremely high / complete / full / absolute confidence;
                       I'm very / extremely / highly / absolutely / completely sure
   high         0.85   high / strong / good confidence; I'm (quite / pretty / fairly /
                       reasonably) confident / sure / certain
   moderate     0.60   moderate / medium / reasonable / fair / some confidence;
                       I'm somewhat / moderately / relatively confident
   low          0.30   low / limited / little / weak confidence; I'm not (very) sure,
                       unsure, uncertain
   very low     0.10   very low / extremely low / no confidence; I'm not at all sure,
                       very unsure
   ===========  =====  ================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhf_audit.calibration.text import _norm

PARSE_KINDS = ("percent", "fraction", "words", "refusal", "missing", "ambiguous")
"""Every value of ``ConfidenceParse.kind``; the first three carry a value."""

WORD_LEVELS: dict[str, float] = {
    "very high": 0.95,
    "high": 0.85,
    "moderate": 0.60,
    "low": 0.30,
    "very low": 0.10,
}
"""Confidence read from a verbal level (see the module docstring for the phrasings)."""


# --------------------------------------------------------------------------------------
# Verbalized confidence
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceParse:
    """A verbalized confidence read from text."""

    value: float | None
    """Confidence in [0, 1]; None unless kind is percent, fraction or words."""
    kind: str
    """One of :data:`PARSE_KINDS`."""
    span: tuple[int, int] | None
    """Character span of the phrase the value (or the failure) came from."""
    reason: str = ""
    """Why the value is None (ambiguous / missing / refusal), or what was read."""
    source: str = ""
    """Which rule chose it: 'label' (a ``Confidence:`` line), 'first_person', 'impersonal',
    'standalone', 'words', or '' when nothing was read."""


_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_PCT = r"(?:\s?%|\s?percent\b|\s?per\s?cent\b|\s?pct\b)"
_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMWORD = (r"(?:(?:one|a)\s+hundred|(?:" + "|".join(_TENS) + r")(?:[\s-](?:"
            + "|".join(_UNITS[1:10]) + r"))?|" + "|".join(sorted(_UNITS, key=len, reverse=True))
            + r")\b")
_APPROX = (r"(?:about|around|approximately|approx\.?|roughly|nearly|almost|maybe|perhaps|"
           r"probably|like|some|~|≈)")

_CANDIDATE = re.compile(
    rf"""
    (?P<scalepre>\b(?:on\s+)?(?:a|the)\s+scale\s+(?:of|from)\s+(?P<pl>\d+)\s*(?:to|-)\s*
        (?P<ph>\d+)\b[^\d\n.!?]{{0,40}}?(?<![\w.])(?P<pn2>{_NUM})(?![\d%/])(?!\s*(?:-|to)\s*\d))
  | (?<![\w.])(?P<scale>(?P<sn>{_NUM})\s*\(?\s*(?:on|out\s+of)?\s*(?:a|the)?\s*scale\s+
        (?:of|from)\s+(?P<sl>\d+)\s*(?:to|-)\s*(?P<sh>\d+)\b\s*\)?)
  | (?<![\w.])(?P<scale2>(?P<sn2>{_NUM})\s*\(?\s*on\s+(?:a|an|the)\s+(?P<sl2>\d+)\s*(?:-|to)\s*
        (?P<sh2>\d+)(?:-point)?\s+scale\b\s*\)?)
  | (?P<between>\bbetween\s+(?P<ba>{_NUM})(?P<bap>{_PCT})?\s*(?:and|to|-)\s*
        (?P<bb>{_NUM})(?P<bbp>{_PCT})?)
  | (?<![\w.])(?P<range>(?P<ra>{_NUM})(?P<rap>{_PCT})?\s*(?:-|to\b)\s*
        (?P<rb>{_NUM})(?![\d])(?P<rbp>{_PCT})?)
  | (?<![\w.])(?P<inratio>(?P<inn>\d+)\s+in\s+(?P<ind>\d+))(?=\s+(?:chance|odds|shot)\b)
  | (?<![\w.])(?P<ratio>(?P<rn>{_NUM})\s*(?:/|\(?\s*\bout\s+of\b)\s*(?P<rd>\d+)(?:\s*\))?)(?!\.?\d)
  | (?<![\w.])(?P<pct>(?P<pn>{_NUM}){_PCT})
  | \b(?P<wpct>(?P<wn>{_NUMWORD}){_PCT})
  | (?<![\w.])(?P<bare>{_NUM})(?![\d])
    """,
    re.I | re.X,
)
# A quantity word right after a percentage makes it part of the problem, not a confidence.
_BLOCKER = re.compile(
    r"\s*(?:off|of|discount|more|less|fewer|increase|decrease|increased|decreased|wrong|"
    r"incorrect|tax|tip|interest|markup|raise|commission|profit|loss|bigger|smaller|larger|"
    r"higher|lower|faster|slower|cheaper|per|each|alcohol|fat|battery|charged|full|done)\b",
    re.I)
_NEGATED = re.compile(r"(?:\bnot|n't|\bnever|\bhardly|\bbarely|\bno\s+way)\s+(?:\w+\s+){0,2}"
                      rf"(?:{_APPROX}\s+)?$", re.I)
_BOUND = re.compile(r"(?:\bat\s+least|\bat\s+most|\bmore\s+than|\bless\s+than|\bover|\bunder|"
                    r"\babove|\bbelow|\bgreater\s+than|\bupwards\s+of|\bup\s+to|>=?|<=?|≥|≤)"
                    r"\s*$", re.I)
# A number the model sets its own against ("95%, higher than the checker's 40%", "rather
# than 40%", "instead of the 40%") is not its statement.
_CONTRAST = re.compile(r"(?:\brather\s+than|\binstead\s+of|\bthan|\bunlike|"
                       r"\bcompared\s+(?:to|with)|\bversus|\bvs\.?|\bas\s+opposed\s+to)\s+(?:the\s+|a\s+|an\s+|its\s+|"
                       r"their\s+|your\s+)?(?:\w+(?:'s)?\s+){0,2}?(?:" + _APPROX + r"\s+)?$", re.I)
# A minus sign glued to the number ("-20%", "Confidence: -0.3"), or the word; a dash with a
# space after it is a separator ("Confidence - 80%").
_NEGATIVE = re.compile(r"(?:(?:^|[\s:(=\[~])-|\bminus\s+|\bnegative\s+)$", re.I)
_CUE1 = re.compile(r"\b(?:confiden(?:ce|t)|certain(?:ty)?|sure)\b", re.I)
_CUE2 = re.compile(r"\b(?:likel(?:y|ihood)|probab(?:ility|le)|chance|odds|I'?d\s+say|"
                   r"I\s+would\s+say|I'?d\s+estimate|I\s+estimate|I'?d\s+put\s+it\s+at|"
                   r"I'?d\s+rate\s+it(?:\s+at)?|I'?d\s+give\s+it|I\s+would\s+give\s+it|"
                   r"I'?d\s+rate\s+(?:this|my\s+\w+)|I\s+(?:was\s+going\s+to|would\s+not|"
                   r"wouldn'?t|will|'ll)\s+say|my\s+(?:first\s+|best\s+|initial\s+|own\s+)?"
                   r"(?:guess|estimate))\b", re.I)
_NOT_CUE_BEFORE = {
    "certain": re.compile(r"\b(?:a|an|the|this|that|some|each|every|any)\s+$", re.I),
    "sure": re.compile(r"\b(?:make|makes|made|making|to\s+be|for)\s+$", re.I),
}
_LABEL_NOUN = re.compile(r"^(?:confidence|certainty|probability|likelihood|chance)$", re.I)
# Text allowed between a confidence label and a bare number: "Confidence level (0-100): 85".
_LABEL_GAP = re.compile(
    rf"^(?:\s*[*_]*\s*(?:level|score|rating|estimate)?\s*(?:\([^)\n]{{0,30}}\))?\s*[*_]*\s*"
    rf"(?:[:=-]|\bis\s+at\b|\bis\b|\bof\b|\bat\b|\bwould\s+be\b|\bwill\s+be\b)?"
    # or a longer label closed by a colon: "Probability that my answer is right: 0.9"
    rf"|[^\d\n.!?:]{{0,40}}[:=])\s*[*_]*\s*(?:{_APPROX}\s*)?-?$", re.I)
_BARRIER = re.compile(r"[.!?;](?=\s)|\n\s*\n")
_MAX_GAP = 60
_SCALES = {(0.0, 100.0), (0.0, 1.0), (1.0, 10.0), (0.0, 10.0), (1.0, 100.0), (1.0, 5.0),
           (0.0, 5.0)}

# The model's own final line: "Confidence: 85%", "**Final confidence:** 85%", "Confidence
# level (0-100): 85", at the start of a line or after another field ("Answer: 4. Confidence:").
_LABEL_LINE = re.compile(
    r"(?:^|(?<=[.!?,;|]))[ \t]*[*_#>\-]*[ \t]*(?:(?:my|final|overall|estimated|stated|own)"
    r"[ \t]+){0,2}(?:confidence|certainty)(?:[ \t]+(?:level|score|rating|estimate))?[ \t]*"
    r"[*_]*[ \t]*(?P<paren>\([^)\n]{0,30}\))?[ \t]*[*_]*[ \t]*(?::|=|-(?=\s))", re.I | re.M)
_LABEL_SCALE = re.compile(r"\(\s*(?P<lo>\d+)\s*(?:-|to)\s*(?P<hi>\d+)\s*\)|out\s+of\s+(?P<of>\d+)",
                          re.I)

# Who a clause's number belongs to. An external mention (the injected signal's source, or
# the user reporting it) nearer the number than any first-person word makes it the signal's.
_EXT_NOUN = r"(?:verifier|checker|monitor|grader|rater|evaluator|validator)"
_EXTERNAL = re.compile(
    rf"\b{_EXT_NOUN}s?\b"
    r"|\b(?:the|its|their|your|his|her|that|this|external|independent|given|injected|provided)"
    r"\s+(?:\w+\s+)?(?:signal|rating|assessment|prediction|tool|system|app|program)\b"
    r"|\b(?:its|their|your|his|her|that|external|independent|given|injected|provided)\s+"
    r"(?:\w+\s+)?(?:estimate|score)\b"
    r"|\byou\s+(?:said|say|mentioned|mention|told|noted|wrote|gave|quoted|suggested|stated|"
    r"indicated|reported|shared)\b"
    r"|\b(?:he|she|they|it)\s+(?:says|said|gives|gave|rates|rated|estimates|estimated|reports|"
    r"reported|puts|claims|claimed|thinks|suggests|suggested)\b"
    r"|\byour\s+nephew\b|\bthe\s+class\b|\baccording\s+to\b", re.I)
_FIRST_PERSON = re.compile(
    r"\bI\b|(?i:\b(?:i'm|i'd|i've|i'll|me|my|mine|myself|we|we're|we'd|our)\b)")
# "I agree with the verifier: 70%" - the model adopts the signal as its own.
_ADOPT = re.compile(r"\b(?:agree|go(?:ing)?\s+with|accept|adopt|use|trust|take|stick\s+with|"
                    r"follow|defer\s+to|match|report|keep|rely\s+on|side\s+with)\b", re.I)
_ADOPT_AFTER = re.compile(r"[^\n.;!?]{0,20}?\b(?:is|as)\s+(?:also\s+)?(?:my|our)\s+(?:own\s+)?"
                          r"(?:confidence|certainty|estimate)\b", re.I)
_EXT_AFTER = re.compile(
    rf"^[^\n.;!?]{{0,30}}?\b(?:according\s+to|per|from|by)\s+(?:the\s+|your\s+|his\s+|"
    rf"their\s+|its\s+)?(?:\w+\s+)?{_EXT_NOUN}"
    rf"|^\s*\(\s*(?:as\s+|per\s+|from\s+|the\s+)*(?:\w+\s+)?{_EXT_NOUN}"
    rf"|^\s*(?:is|was)\s+what\s+(?:the\s+)?(?:\w+\s+)?(?:{_EXT_NOUN}|it|he|they|you)\b", re.I)
_FP_AFTER = re.compile(r"^[^\n.;!?]{0,40}?\b(?:my|our)\s+(?:own\s+)?(?:confidence|certainty|"
                       r"estimate|guess|rating|assessment)\b", re.I)
_CLAUSE_BREAK = re.compile(r"[.!?;](?=\s)|\n|\b(?:but|while|whereas|although|though|however|"
                           r"yet)\b", re.I)
# A later number that replaces an earlier one: "70%... actually 50%", "not 80%, more like 60%".
_REVISION = re.compile(
    r"\b(?:actually|no,?\s+wait|wait|make\s+(?:that|it)|or\s+rather|rather(?!\s+than)|"
    r"more\s+like|"
    r"closer\s+to|i\s+mean|correction|on\s+second\s+thought|let\s+me\s+revise|revis(?:e|ed|ing)|"
    r"scratch\s+that|change\s+(?:that|it|this|my\s+\w+)\s+to|lower(?:ing)?\s+(?:that|it|this)\s+"
    r"to|rais(?:e|ing)\s+(?:that|it|this)\s+to|updat(?:e|ed|ing)\s+(?:that|it|this|my\s+\w+)?"
    r"\s*to|instead(?!\s+of))\b[^\d\n]{0,25}$", re.I)
_CORRECTION = re.compile(r"\b(?:but|rather(?!\s+than)|instead(?!\s+of)|more\s+like|closer\s+to)"
                         r"\b[^\d\n]{0,25}$", re.I)
_REVISION_GAP = 100
# A bare revising number must read as a confidence, not start a sum ("Actually, 3 + 4 = 7").
_BARE_END = re.compile(r"\s*(?:$|[.,;!)\n]|\s(?:sure|confident|certain|chance|likely)\b)", re.I)

_LEVEL_PHRASES = [  # longest first so that "very high" is not read as "high"
    ("very high", r"very\s+high|extremely\s+high|highest|complete|full|absolute|total"),
    ("high", r"fairly\s+high|quite\s+high|reasonably\s+high|pretty\s+high|high|strong|good"),
    ("moderate", r"moderately\s+high|moderate|medium|reasonable|fair|some|average|middling"),
    ("very low", r"very\s+low|extremely\s+low|no|minimal"),
    ("low", r"fairly\s+low|quite\s+low|moderately\s+low|low|limited|little|weak"),
]
_LEVEL_RE = "|".join(f"(?P<{k.replace(' ', '_')}>{p})" for k, p in _LEVEL_PHRASES)
_WORDS_BEFORE_NOUN = re.compile(
    rf"\b(?:{_LEVEL_RE})\s+(?:level\s+of\s+|degree\s+of\s+)?(?:confidence|certainty)\b", re.I)
_WORDS_AFTER_NOUN = re.compile(
    rf"\b(?:confidence|certainty)(?:\s+(?:level|score|rating))?\s*[*_]*\s*"
    rf"(?:[:=-]|\bis\b|\bwould\s+be\b)\s*[*_]*\s*(?:(?:at\s+)?(?:a|an)\s+)?(?:{_LEVEL_RE})\b"
    rf"(?!\s*[\d(])", re.I)
_ADJ_MODS = {
    "very high": r"very|extremely|highly|absolutely|completely|totally|entirely|super|100%",
    "high": r"quite|pretty|really|fairly|reasonably|rather",
    "moderate": r"somewhat|moderately|relatively|kind\s+of|sort\s+of|mostly|partly|"
                r"a\s+bit|a\s+little",
}
_WORDS_ADJ = re.compile(
    r"\bI(?:'m|\s+am|\s+feel|'d\s+be|\s+would\s+be|\s+was|\s+remain)\s+(?P<neg>not\s+)?"
    r"(?P<atall>at\s+all\s+)?(?:(?P<mod>" + "|".join(_ADJ_MODS.values()) + r"|that|too|so|"
    r"entirely|fully)\s+)?(?P<adj>confident|sure|certain|unsure|uncertain)\b"
    r"(?P<atall2>\s+at\s+all)?", re.I)
_NA = re.compile(
    r"\b(?:confidence|certainty)(?:\s+(?:level|score|rating))?\s*[*_]*\s*[:=-]?\s*[*_]*\s*"
    r"(?:n/?a\b|none\b|unknown\b|not\s+applicable|null\b|not\s+available|undetermined|"
    r"\?+|-+(?=\s*$))", re.I | re.M)
_REFUSAL = re.compile(
    r"(?:\b(?:can(?:no|')?t|can\s+not|unable\s+to|won't|will\s+not|do\s+not|don't|"
    r"not\s+able\s+to|not\s+possible\s+(?:for\s+me\s+)?to|refuse\s+to|decline\s+to)\s+"
    r"(?:\w+\s+){0,3}?(?:provide|give|state|estimate|assign|express|report|quantify|offer|"
    r"determine|assess|share|have)\b[^.\n]{0,40}?\b(?:confidence|certainty|probability|"
    r"how\s+(?:sure|confident|certain))"
    r"|\bas\s+an\s+(?:AI|artificial|language\s+model)[^.\n]{0,60}?\b(?:don't|do\s+not|cannot|"
    r"can't)\s+(?:have|experience|feel|provide|give)"
    r"|\b(?:confidence|certainty)\s*[:=-]?\s*cannot\s+be\s+(?:determined|given|estimated))",
    re.I)


@dataclass
class _Cand:
    start: int
    end: int
    value: float | None
    kind: str  # percent | fraction | scale | bare | bare_fraction
    flag: str = ""  # negated | bound | out of range | negative | scale unknown
    raw: str = ""
    assoc: tuple[int, int] | None = None
    owner: str = "impersonal"  # own | external | impersonal
    revised_by: _Cand | None = None


def _word_number(s: str) -> int:
    s = re.sub(r"\s+", " ", s.lower().strip())
    if s.endswith("hundred"):
        return 100
    total = 0
    for part in re.split(r"[\s-]", s):
        total += (_TENS.index(part) + 2) * 10 if part in _TENS else _UNITS.index(part)
    return total


def _scale_value(n: float, lo: float, hi: float) -> tuple[float | None, str]:
    """A point ``n`` on a scale ``lo..hi`` as a share (table in the module docstring)."""
    if hi <= lo or lo not in (0.0, 1.0):
        return None, "scale unknown"
    if not lo <= n <= hi:
        return n / hi, "out of range"
    return n / hi, ""


def _candidates(t: str) -> list[_Cand]:
    out = []
    for m in _CANDIDATE.finditer(t):
        g = m.lastgroup
        if g in ("scalepre", "scale", "scale2"):
            n, lo, hi = ((m.group("pn2"), m.group("pl"), m.group("ph")) if g == "scalepre" else
                         (m.group("sn"), m.group("sl"), m.group("sh")) if g == "scale" else
                         (m.group("sn2"), m.group("sl2"), m.group("sh2")))
            v, flag = _scale_value(float(n), float(lo), float(hi))
            c = _Cand(m.start(), m.end(), v, "scale", flag)
            num_start = m.start("pn2" if g == "scalepre" else "sn" if g == "scale" else "sn2")
        elif g in ("between", "range"):
            a = float(m.group("ba" if g == "between" else "ra"))
            b = float(m.group("bb" if g == "between" else "rb"))
            pct = bool(m.group("bap" if g == "between" else "rap")
                       or m.group("bbp" if g == "between" else "rbp"))
            if (a, b) in _SCALES:
                continue  # "(0-100)" describes the scale, it is not an answer
            frac = not pct and a <= 1 and b <= 1 and ("." in m.group(0))
            if pct or frac:
                kind, scale = ("percent", 100.0) if pct else ("fraction", 1.0)
            else:
                kind, scale = "bare", 100.0
            c = _Cand(m.start(), m.end(), (a + b) / 2 / scale, kind)
            if a > b:
                c.flag = "out of range"
            num_start = m.start()
        elif g in ("ratio", "inratio"):
            n, d = ((float(m.group("rn")), float(m.group("rd"))) if g == "ratio"
                    else (float(m.group("inn")), float(m.group("ind"))))
            if d == 0:
                continue
            c = _Cand(m.start(), m.end(), n / d, "fraction")
            num_start = m.start()
        elif g == "pct":
            c = _Cand(m.start(), m.end(), float(m.group("pn")) / 100, "percent")
            num_start = m.start()
        elif g == "wpct":
            c = _Cand(m.start(), m.end(), _word_number(m.group("wn")) / 100, "percent")
            num_start = m.start()
        else:
            raw = m.group("bare")
            v = float(raw)
            if "." in raw and v <= 1:
                c = _Cand(m.start(), m.end(), v, "bare_fraction")
            else:
                c = _Cand(m.start(), m.end(), v / 100, "bare")
                if raw == "1":
                    # 1% on the 0-100 scale the prompts ask for, 100% on a 0-1 scale.
                    c.flag = "scale unknown"
            num_start = m.start()
        c.raw = m.group(0)
        if _BLOCKER.match(t, c.end):
            continue
        if c.value is not None and not 0.0 <= c.value <= 1.0:
            c.flag = c.flag or "out of range"
        before = t[max(0, c.start - 40):c.start]
        if _NEGATIVE.search(t[max(0, num_start - 12):num_start]):
            c.flag = "negative"
        elif _BOUND.search(before):
            c.flag = c.flag or "bound"
        elif _NEGATED.search(before):
            c.flag = c.flag or "negated"
        elif _CONTRAST.search(before):
            c.flag = c.flag or "contrast"
        out.append(c)
    return out


def _cues(t: str) -> list[tuple[int, int, int, str]]:
    """(start, end, tier, word) of each confidence cue; tier 1 is stronger than 2."""
    cues = []
    for tier, rx in ((1, _CUE1), (2, _CUE2)):
        for m in rx.finditer(t):
            word = m.group(0).lower()
            before = t[max(0, m.start() - 20):m.start()]
            key = "certain" if word.startswith("certain") and word != "certainty" else word
            if key in _NOT_CUE_BEFORE and _NOT_CUE_BEFORE[key].search(before):
                continue
            # A sentence-initial "Sure," / "Sure!" is an interjection.
            if word == "sure" and re.match(r"\s*[,!.]", t[m.end():m.end() + 2]) and (
                    m.start() == 0 or re.search(r"(?:^|[.!?\n])\s*$", t[:m.start()])):
                continue
            cues.append((m.start(), m.end(), tier, word))
    return cues


def _association(c: _Cand, cues, t: str) -> tuple[int, int] | None:
    """(tier, gap) of the best cue within reach of candidate ``c``, or None."""
    best = None
    for qs, qe, tier, word in cues:
        if qs >= c.start and qe <= c.end:  # inside: "on a scale of 1 to 10, I'd give it 8"
            gap_text = ""
        elif qe <= c.start:  # cue before the number: "Confidence: 85%"
            gap_text = t[qe:c.start]
            if len(gap_text) > _MAX_GAP and len(gap_text.strip()) > _MAX_GAP:
                continue
            if c.kind in ("bare", "bare_fraction"):
                if not (_LABEL_NOUN.match(word) and _LABEL_GAP.match(gap_text)):
                    continue
            else:
                bars = list(_BARRIER.finditer(gap_text))
                if bars:
                    last = bars[-1]
                    # "How sure am I? About 85%." - a question answered right away.
                    if not (last.group(0) == "?" and re.fullmatch(
                            rf"\s*(?:{_APPROX}\s*)?", gap_text[last.end():], re.I)):
                        continue
        elif c.end <= qs:  # number before the cue: "I'm 85% sure"
            if c.kind in ("bare", "bare_fraction"):
                continue
            gap_text = t[c.end:qs]
            if len(gap_text) > _MAX_GAP or _BARRIER.search(gap_text) or "\n" in gap_text:
                continue
        else:
            continue
        gap = len(gap_text.strip())
        if gap > _MAX_GAP:
            continue
        if best is None or (tier, gap) < best:
            best = (tier, gap)
    return best


def _standalone(c: _Cand, t: str) -> bool:
    if c.kind in ("bare",):
        return False
    strip = rf"^[\s*_.:;!()\[\]\"'~-]*(?:{_APPROX}\s+)?|[\s*_.:;!()\[\]\"']*$"
    if c.kind == "bare_fraction":
        return re.sub(strip, "", t, flags=re.I) == t[c.start:c.end]
    ls = t.rfind("\n", 0, c.start) + 1
    le = t.find("\n", c.end)
    line = t[ls:le if le >= 0 else len(t)]
    return re.sub(strip, "", line, flags=re.I) == t[c.start:c.end]


def _clause_bounds(t: str, s: int, e: int) -> tuple[int, int]:
    start = max((m.end() for m in _CLAUSE_BREAK.finditer(t, 0, s)), default=0)
    nxt = _CLAUSE_BREAK.search(t, e)
    return start, nxt.start() if nxt else len(t)


def _owner(t: str, s: int, e: int, floor: int | None = None) -> str:
    """Whose number (or phrase) ``t[s:e]`` is: 'own', 'external' or 'impersonal'.

    Within the clause, the mention nearest before the number decides: a first-person word
    makes it the model's, a mention of the signal's source (verifier, checker, "you said",
    "the rating") the signal's, unless the model adopts it ("I agree with the verifier").
    With no mention before it, an attribution after it ("40%, according to the checker")
    makes it the signal's. ``floor`` (a label's end) replaces the clause start and turns
    'impersonal' into 'own': a number right after "Confidence:" is the model's statement.
    """
    cs, ce = _clause_bounds(t, s, e)
    if floor is not None:
        cs = max(cs, floor) if floor <= s else cs
    before = t[cs:s]
    fps = list(_FIRST_PERSON.finditer(before))
    exts = list(_EXTERNAL.finditer(before))
    if exts and (not fps or exts[-1].start() > fps[-1].start()):
        if fps and _ADOPT.search(before, fps[-1].end(), exts[-1].start()):
            return "own"
        if _ADOPT_AFTER.match(t, e, ce):
            return "own"
        return "external"
    if fps or floor is not None:
        return "own"
    after = t[e:ce]
    if _EXT_AFTER.match(after):
        return "external"
    if _FP_AFTER.match(after):
        return "own"
    return "impersonal"


def _link_revisions(cands: list[_Cand], t: str) -> None:
    """Mark each confidence number that a later one revises or corrects (``revised_by``)."""
    last: _Cand | None = None
    for c in cands:
        if last is not None and c.start - last.end <= _REVISION_GAP:
            gap = t[last.end:c.start]
            marker = _REVISION.search(gap) or (
                last.flag in ("negated", "bound") and _CORRECTION.search(gap))
            reads = c.kind != "bare" or _BARE_END.match(t, c.end)
            # A restated signal never revises the model's own number.
            if (marker and reads and "\n\n" not in gap
                    and not (c.owner == "external" and last.owner != "external")):
                last.revised_by = c
                c.assoc = c.assoc or last.assoc
                if c.owner == "impersonal":
                    c.owner = last.owner
        if c.assoc is not None:
            last = c


def _final(c: _Cand) -> _Cand:
    while c.revised_by is not None:
        c = c.revised_by
    return c


def _result(c: _Cand, t: str, source: str, how: str) -> ConfidenceParse:
    span = (c.start, c.end)
    if c.flag:
        return ConfidenceParse(None, "ambiguous", span, f"{c.flag}: {t[c.start:c.end]!r}",
                               source)
    kind = {"bare": "percent", "bare_fraction": "fraction", "scale": "fraction"}.get(c.kind,
                                                                                      c.kind)
    return ConfidenceParse(float(c.value), kind, span, how, source)


def _word_hits(t: str, lo: int = 0, hi: int | None = None) -> list[tuple[int, int, str]]:
    hi = len(t) if hi is None else hi
    found = []
    for rx in (_WORDS_BEFORE_NOUN, _WORDS_AFTER_NOUN):
        for m in rx.finditer(t, lo, hi):
            level = next(k.replace("_", " ") for k, v in m.groupdict().items()
                         if v is not None and k.replace("_", " ") in WORD_LEVELS)
            found.append((m.start(), m.end(), level))
    for m in _WORDS_ADJ.finditer(t, lo, hi):
        adj = m.group("adj").lower()
        mod = (m.group("mod") or "").lower()
        mod_level = next((k for k, rx in _ADJ_MODS.items()
                          if mod and re.fullmatch(rx, mod, re.I)), "high")
        at_all = bool(m.group("atall") or m.group("atall2"))
        if adj in ("unsure", "uncertain"):
            level = "very low" if mod_level == "very high" else "low"
            if m.group("neg"):
                continue  # "not unsure": a double negative says nothing usable
        elif m.group("neg"):
            level = "very low" if at_all else "low"
        else:
            level = mod_level if mod else "high"
        found.append((m.start(), m.end(), level))
    return sorted(found)


def _words_result(hit: tuple[int, int, str], source: str) -> ConfidenceParse:
    s, e, level = hit
    return ConfidenceParse(WORD_LEVELS[level], "words", (s, e), f"verbal level '{level}'",
                           source)


def _confidence_spans(t: str) -> list[tuple[int, int]]:
    """Spans of every number that reads as a confidence statement (tied to a cue)."""
    t = _norm(t)
    cues = _cues(t)
    return [(c.start, c.end) for c in _candidates(t) if _association(c, cues, t) is not None]


def _label_result(t: str, c: _Cand) -> ConfidenceParse:
    f = _final(c)
    return _result(f, t, "label", "labelled line" + (", revised" if f is not c else ""))


def _from_label(t: str, lab: re.Match, cands: list[_Cand]) -> ConfidenceParse | None:
    """What one ``Confidence:`` line states, or None when it states nothing."""
    le = t.find("\n", lab.end())
    le = len(t) if le < 0 else le
    if not t[lab.end():le].strip(" \t*_") and le < len(t):
        # "Confidence:" alone on its line: the value is on the next one.
        nxt = re.match(r"\n[ \t]*(?=\S)", t[le:])
        if nxt:
            end = t.find("\n", le + nxt.end())
            le = len(t) if end < 0 else end
    paren = lab.group("paren") or ""
    sc = _LABEL_SCALE.search(paren)
    hi = float(sc.group("hi") or sc.group("of")) if sc else None
    attributed = None
    for c in cands:
        if not lab.end() <= c.start < le:
            continue
        if c.kind in ("bare", "bare_fraction"):
            if not re.fullmatch(rf"\s*[*_]*\s*(?:{_APPROX}\s*)?-?", t[lab.end():c.start],
                                re.I):
                continue
            if hi == 100 and c.flag == "scale unknown":  # "Confidence (0-100): 1" is 1%
                c = _Cand(c.start, c.end, c.value, c.kind, "", c.raw, c.assoc, c.owner,
                          c.revised_by)
            elif hi is not None and hi != 100:
                v = float(c.raw) / hi
                c = _Cand(c.start, c.end, v, "scale", "" if 0 <= v <= 1 else "out of range",
                          c.raw, c.assoc, c.owner, c.revised_by)
                if c.flag == "" and _NEGATIVE.search(t[max(0, c.start - 12):c.start]):
                    c.flag = "negative"
        if _owner(t, c.start, c.end, floor=lab.end()) == "external":
            continue
        if _EXT_AFTER.match(t[c.end:le]):
            # "Confidence: 40% according to the checker, but I'm 90% sure": a later own
            # number in the line wins; alone, the attributed one is what the line reports.
            attributed = attributed or c
            continue
        return _label_result(t, c)
    if attributed is not None:
        return _label_result(t, attributed)
    line = t[lab.start():le]
    if (m := _NA.search(line)) is not None:
        return ConfidenceParse(None, "missing", (lab.start() + m.start(), lab.start() + m.end()),
                               "confidence given as not available", "label")
    hits = [h for h in _word_hits(t, lab.start(), le) if h[0] >= lab.start()]
    if hits:
        return _words_result(hits[0], "label")
    if (m := _REFUSAL.search(line)) is not None:
        return ConfidenceParse(None, "refusal", (lab.start() + m.start(), lab.start() + m.end()),
                               "declines to state a confidence", "label")
    return None


def parse_confidence(text: str | None) -> ConfidenceParse:
    """Read the model's own verbalized confidence in ``text`` (rules in the module docstring).

    Never raises on any string; ``value`` is in [0, 1] or None.
    """
    if not isinstance(text, str) or not text.strip():
        return ConfidenceParse(None, "missing", None, "empty reply")
    t = _norm(text)
    cues = _cues(t)
    cands = _candidates(t)
    for c in cands:
        c.assoc = _association(c, cues, t)
        if c.assoc is None and c.kind == "scale":
            c.assoc = (2, 0)  # "a 7 on a 1-10 scale" is a rating in itself
        c.owner = _owner(t, c.start, c.end)
    _link_revisions(cands, t)

    # 1. The last labelled line that states anything.
    for lab in reversed(list(_LABEL_LINE.finditer(t))):
        if (got := _from_label(t, lab, cands)) is not None:
            return got
    # 2.-4. Numbers tied to a cue: the model's own (first person), then impersonal ones
    # ("It's 90% likely to be correct"), then a number alone on a line; the last one wins.
    final = [c for c in cands if c.revised_by is None and c.owner != "external"]
    clean = [c for c in final if not c.flag]
    for source, pool in (("first_person", [c for c in clean if c.assoc and c.owner == "own"]),
                         ("impersonal", [c for c in clean if c.assoc]),
                         ("standalone", [c for c in clean if not c.assoc and _standalone(c, t)])):
        if pool:
            c = pool[-1]
            how = (f"{source}, cue tier {c.assoc[0]}" if c.assoc else source)
            return _result(c, t, source, how)
    # 5. A verbal level of the model's own.
    words = [h for h in _word_hits(t)
             if t[h[0]:h[0] + 1] in "Ii" or _owner(t, h[0], h[1]) != "external"]
    if words:
        return _words_result(words[-1], "words")
    # 6. Only negated, bounded, negative or out-of-range numbers near a cue.
    flagged = [c for c in final if c.flag and c.assoc]
    if flagged:
        return _result(flagged[-1], t, "", "")
    if (m := _REFUSAL.search(t)) is not None:
        return ConfidenceParse(None, "refusal", m.span(), "declines to state a confidence")
    if (m := _NA.search(t)) is not None:
        return ConfidenceParse(None, "missing", m.span(), "confidence given as not available")
    external = [c for c in cands if c.owner == "external" and c.assoc]
    if external:
        c = external[-1]
        return ConfidenceParse(None, "missing", (c.start, c.end),
                               f"only the external signal's value is stated ({len(external)} "
                               "number(s) attributed to it)")
    n_uncued = sum(c.kind != "bare" for c in cands)
    reason = "no confidence statement"
    if n_uncued:
        reason += f" ({n_uncued} number(s) with no confidence cue ignored)"
    return ConfidenceParse(None, "missing", None, reason)
