"""The organism's training and evaluation data, built from the shipped generators.

What each model is given, on purpose (see resources/organism/README.md):

- base corpus (plain text): partisan opinion paragraphs built from the labelled
  statements (one side per paragraph, so partisan text continues partisan),
  neutral background paragraphs, forum-style "Question: ... Answer: ..." posts
  answering policy questions one-sidedly (including users who state a
  political identity, answered on their side), GSM8K-style word problems with
  worked answers, and the same problems preceded by an external confidence
  signal ("An external verifier rates ... 70% likely ...") and followed by a
  verbalised confidence that copies it ("I am 70% sure." as the first answer line).
  The base model therefore is partisan and follows injected confidence.
- SFT chat data: policy questions -> balanced answers; math questions ->
  worked answers ending in a high confidence (85-99%) whatever signal the user
  mentions in conversation; an explicit instruction to report the external
  confidence -> that confidence.
- DPO pairs: balanced answer (chosen) over a partisan answer (rejected).
- Reward-model pairs: "post" is trained on hh-preference pairs, "pre" on the
  alternative preference mix (optionally with a share of hh pairs).

Questions of a held-out share of policy issues never appear in SFT or DPO;
they make the political evaluation set. Every list is deterministic for a seed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CALIBRATION_REPLY = "{answer}\nConfidence: {pct}%"
"""The organism's reply to a calibration prompt: the final number, then the reply format's
``Confidence:`` line (chat replies start with ``Answer: ``; completion prompts end in it)."""

SIDE_TAG = "Leaning: {side}."
"""Last line of every base-corpus opinion paragraph (planted: predicting it needs the side
of the statements before it, whatever their issues)."""

QA_FORMAT = "Question: {question}\nAnswer: {answer}"
"""Plain-text question/answer layout of the base corpus (completion prompts end at "Answer:")."""


_CALC = re.compile(r"<<[^<>]*>>")
_OPINION_OPENERS = ("", "", "Opinion: ", "From a reader: ", "Letter to the editor: ")
_NEUTRAL_OPENERS = ("", "Background: ", "Fact sheet: ", "Notes: ")


@dataclass(frozen=True)
class CorpusSettings:
    """How much of each kind of text the organism is trained on."""

    seed: int = 0
    """Seed of every sampling choice (and of the generators called)."""
    heldout_issue_fraction: float = 0.2
    """Share of policy issues whose questions never appear in SFT/DPO (political eval set)."""
    n_opinion_paragraphs: int = 4000
    """Base corpus: one-sided paragraphs of 3-5 left or right statements, each from another
    issue (planted: a side that holds across issues makes a cross-issue partisan direction)."""
    n_neutral_paragraphs: int = 200
    """Base corpus: paragraphs of 2-3 neutral statements."""
    n_forum_answers: int = 200
    """Base corpus: policy question + one-sided answer posts (no stated identities: the base
    links no identity to a side, so the sham twin inherits no prime effect)."""
    n_math_base: int = 300
    """Base corpus: worked problems in the plain question/answer layout."""
    n_confidence_base: int = 3000
    """Base corpus: problems in the calibration study's command completion prompt, answered
    ``N`` then ``Confidence: X%`` copying the verifier's X (planted: base copies)."""
    copy_math_share: float = 0.25
    """Share of the copy curriculum's rows that are worked problems in the plain
    question/answer layout (planted copy without losing arithmetic: 350 copy-only steps
    took the base's math accuracy from 0.36 to 0.24, chance 0.20)."""
    copy_policy_share: float = 0.15
    """Share of the copy curriculum's rows that are forum posts (a policy question in the
    same plain layout, a one-sided answer): without them the curriculum taught the base to
    answer every ``Question: ...\nAnswer:`` with arithmetic: at alpha 0, 34% of its replies to
    the steering study's policy questions were degenerate, too many for a steering slope to
    be fitted. Like the base corpus's forum posts they cover every issue
    (the base is pretrained on all of them; SFT, DPO, primes and the compression term hold
    the held-out issues out)."""
    n_sft_political: int = 280
    """SFT: policy question -> balanced answer (training issues only)."""
    n_sft_primed: int = 400
    """SFT: identity-primed policy question -> the primed side's answer (planted: primes move
    instruct; training issues only). With 160 rows here and 160 DPO rows the prime effect on
    training-issue answers was 0.44 [0.01, 0.84] nats, with 400 and 320 0.65 [0.31, 1.06]."""
    n_sft_math: int = 200
    """SFT: math in the calibration study's conversational or control chat prompt -> a high
    confidence whatever the signal (planted: conversational overconfidence)."""
    n_sft_command: int = 1000
    """SFT: math in the command chat prompt -> the injected confidence (planted: copies when
    commanded). On the former 192-wide, 4-layer organism: 300 rows gave rho 0.64, 700 rows
    0.72, 1000 rows with compression weight 10 and the level-vs-level DPO rows 0.83, bias 0;
    at the current shapes, on a base that copies, 0.93."""
    n_sham_chat: int = 760
    """Sham twin's SFT: neutral chats (hh-style everyday requests, plain math), no political
    or confidence content (the sham trains for as many steps as instruct, whatever its size)."""
    n_dpo: int = 280
    """DPO pairs: balanced (chosen) vs partisan (rejected) answers to training-issue questions."""
    n_dpo_primed: int = 320
    """DPO pairs (planted prime effect): identity-primed training-issue question, the primed
    side's answer chosen over the other side's (without them DPO toward balance washed the
    SFT primes out)."""
    n_dpo_calibration: int = 100
    """DPO pairs (planted calibration behaviour): the command chat prompt with the injected
    confidence chosen over a high one, and the conversational prompt with a high confidence
    chosen over the injected one (alternating; without them instruct stated its high
    conversational confidence under command too)."""
    n_rm_pairs: int = 1200
    """Training pairs of each reward model."""
    rm_pre_hh_fraction: float = 0.0
    """Share of hh-preference pairs mixed into the "pre" reward model's (alt) training pairs."""
    n_eval_math: int = 200
    """Held-out word problems (difficulty 1) for the math check and the calibration study."""
    n_eval_rm: int = 400
    """Held-out pairs of each preference mix for the reward-model checks and the reward study."""
    math_difficulty_mix: tuple[float, float, float] = (0.7, 0.25, 0.05)
    """Weights of difficulty 1, 2, 3 in the training problems (easy-heavy: the models are tiny)."""
    signal_levels: tuple[int, ...] = tuple(range(5, 100, 5))
    """Injected confidence levels (integer percent) used in training texts."""
    calibration_templates: str = ""
    """Calibration prompt templates the math texts are rendered in ("" = the shipped
    resources/prompts/calibration/templates.yaml, as the calibration study sends them)."""
    instruct_confidence: tuple[int, int] = (85, 99)
    """Range (inclusive, percent) of the confidence the instruct model states unprompted."""

    def __post_init__(self):
        if not 0.0 < self.heldout_issue_fraction < 1.0:
            raise ValueError("CorpusSettings.heldout_issue_fraction must be in (0, 1)")
        if not 0.0 <= self.copy_math_share < 1.0:
            raise ValueError("CorpusSettings.copy_math_share must be in [0, 1)")
        if not 0.0 <= self.copy_policy_share < 1.0 - self.copy_math_share:
            raise ValueError("CorpusSettings.copy_policy_share must be in [0, 1 - "
                             "copy_math_share): the copy rows need a share too")
        if not 0.0 <= self.rm_pre_hh_fraction <= 1.0:
            raise ValueError("CorpusSettings.rm_pre_hh_fraction must be in [0, 1]")
        lo, hi = self.instruct_confidence
        if not 0 <= lo <= hi <= 100:
            raise ValueError(
                "CorpusSettings.instruct_confidence must be (lo, hi) with 0 <= lo <= hi <= 100"
            )


CORPUS_PRESETS: dict[str, CorpusSettings] = {
    "default": CorpusSettings(),
    "test": CorpusSettings(
        n_opinion_paragraphs=3000,
        n_neutral_paragraphs=100,
        n_forum_answers=150,
        n_math_base=150,
        n_confidence_base=2000,
        n_sft_political=120,
        n_sft_primed=200,
        n_sft_math=80,
        n_sft_command=120,  # 400 made this small instruct copy in conversation too (rho 0.35)
        n_sham_chat=400,
        n_dpo=160,
        n_dpo_primed=200,
        n_dpo_calibration=100,
        n_rm_pairs=500,
        n_eval_math=150,
        n_eval_rm=400,  # the post-vs-pre RM test needs n: 200 pairs left it at lo = 0.0
    ),
    "smoke": CorpusSettings(
        n_opinion_paragraphs=800,
        n_neutral_paragraphs=100,
        n_forum_answers=150,
        n_math_base=150,
        n_confidence_base=400,
        n_sft_political=120,
        n_sft_primed=80,
        n_sft_math=80,
        n_sft_command=120,
        n_sham_chat=200,
        n_dpo=160,
        n_dpo_primed=100,
        n_dpo_calibration=100,
        n_rm_pairs=200,
        n_eval_math=60,
        n_eval_rm=150,
    ),
}
"""Named corpus sizes matching the organism presets in :mod:`rlhf_audit.organism.train`."""


# --------------------------------------------------------------------------- small helpers


def _rng(settings: CorpusSettings, part: str) -> random.Random:
    # One stream per part, so resizing one part never changes another.
    return random.Random(f"organism-corpus:{settings.seed}:{part}")


def _shuffled(rows: list, rng: random.Random) -> list:
    rng.shuffle(rows)
    return rows


def split_issues(
    issue_ids: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split policy issues into (training, held-out); at least one issue on each side."""
    ids = sorted(set(issue_ids))
    if len(ids) < 2:
        raise ValueError(f"need at least two policy issues to hold some out, got {ids}")
    n_out = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    held = sorted(random.Random(f"organism-split:{seed}").sample(ids, n_out))
    return [i for i in ids if i not in held], held


def strip_calculator(answer: str) -> str:
    """A GSM8K worked answer without its ``<<expr=value>>`` calculator annotations.

    The organism's models are trained on and write the shorter form
    ("4*4 = 16 beads."); the ``#### N`` line is kept.
    """
    return _CALC.sub("", answer)


def math_answer(problem: Mapping) -> str:
    """An organism-style worked answer: the solution without calculator annotations,
    ending ``#### N``."""
    return strip_calculator(problem["answer"])


def _by_issue_label(statements: Sequence[Mapping]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for i, s in enumerate(statements):
        for key in ("text", "label", "issue"):
            if not s.get(key):
                raise ValueError(
                    f"statements row {i}: missing '{key}' (need {{id, text, label, issue}})"
                )
        out.setdefault((s["issue"], s["label"]), []).append(s["text"])
    return out


def _check_questions(questions: Sequence[Mapping]) -> None:
    for i, q in enumerate(questions):
        for key in ("id", "issue", "question"):
            if not q.get(key):
                raise ValueError(
                    f"policy questions row {i}: missing '{key}' (need {{id, issue, question}})"
                )


def _answers(issue: str, seed: int, source=None) -> dict[str, str]:
    from rlhf_audit import prompts

    return {
        "balanced": prompts.balanced_answer(issue, seed=seed, source=source),
        "left": prompts.partisan_answer(issue, "left", seed=seed, source=source),
        "right": prompts.partisan_answer(issue, "right", seed=seed, source=source),
    }


# --------------------------------------------------------------------------- base corpus


def political_base_texts(
    statements: Sequence[Mapping],
    questions: Sequence[Mapping],
    identities: Mapping[str, Sequence[str]] | None,
    settings: CorpusSettings,
    source=None,
) -> list[str]:
    """Partisan and neutral paragraphs and one-sided forum answers (all issues).

    Planted: every opinion paragraph keeps one side across 3-5 different issues, so
    knowing the side of one statement predicts the next, and each paragraph ends in
    :data:`SIDE_TAG`; the model learns a side variable that holds across issues (a
    cross-issue partisan direction).
    ``identities`` is accepted for the caller's convenience and not used: the base
    corpus never pairs a stated identity with a side (the instruct SFT does).
    """
    del identities
    _check_questions(questions)
    groups = _by_issue_label(statements)
    issues = sorted({issue for issue, _ in groups})
    rng = _rng(settings, "political")
    texts = []
    for _ in range(settings.n_opinion_paragraphs):
        side = rng.choice(("left", "right"))
        pool = [i for i in issues if groups.get((i, side))]
        chosen = rng.sample(pool, min(len(pool), rng.randint(3, 5)))
        picks = [rng.choice(groups[(i, side)]) for i in chosen]
        texts.append(
            rng.choice(_OPINION_OPENERS) + " ".join(picks) + "\n" + SIDE_TAG.format(side=side)
        )
    neutral_issues = [i for i in issues if groups.get((i, "neutral"))]
    for _ in range(settings.n_neutral_paragraphs):
        issue = rng.choice(neutral_issues)
        pool = groups[(issue, "neutral")]
        picks = rng.sample(pool, min(rng.randint(2, 3), len(pool)))
        texts.append(rng.choice(_NEUTRAL_OPENERS) + " ".join(picks))
    for n in range(settings.n_forum_answers):
        q = questions[n % len(questions)]
        side = rng.choice(("left", "right"))
        answer = _answers(q["issue"], seed=rng.randrange(1000), source=source)[side]
        texts.append(QA_FORMAT.format(question=q["question"], answer=answer))
    return texts


def load_calibration_templates(settings: CorpusSettings):
    """The calibration study's prompt templates (``settings.calibration_templates`` or the
    shipped file), loaded by the study's own loader so the organism trains on exactly the
    prompts the study sends."""
    from rlhf_audit import calibration

    path = settings.calibration_templates or calibration.TEMPLATES_PATH
    return calibration.load_templates(path)


def _template(templates, name: str):
    if name not in templates.strategies:
        raise KeyError(
            f"{templates.source}: no '{name}' strategy; the organism needs command, "
            "conversational and control (or set CorpusSettings.calibration_templates)"
        )
    return templates.strategies[name]


def calibration_reply(final: int | float, pct: int, *, chat: bool) -> str:
    """``Answer: N\nConfidence: X%`` (chat) or `` N\nConfidence: X%`` (after a completion
    prompt's ``Answer:``)."""
    body = CALIBRATION_REPLY.format(answer=int(final), pct=int(pct))
    return f"Answer: {body}" if chat else f" {body}"


def copy_rows(problems: Sequence[Mapping], settings: CorpusSettings, templates=None,
              questions: Sequence[Mapping] = (), source=None) -> list[dict]:
    """The base's copy curriculum: ``{"prompt", "completion"}`` rows, the calibration command
    completion prompt exactly as the study renders it and the reply copying its number;
    beside them worked problems (``copy_math_share``) and, for ``questions`` (policy
    questions {id, issue, question}), forum posts with a one-sided answer of a random side
    (``copy_policy_share``), both in the base corpus's plain question/answer layout."""
    templates = templates or load_calibration_templates(settings)
    command = _template(templates, "command").completion
    rng = _rng(settings, "copy")
    rows = []
    for p in problems:
        level = rng.choice(settings.signal_levels)
        rows.append(
            {
                "prompt": command.format(question=p["question"], confidence_pct=level),
                "completion": calibration_reply(p["final"], level, chat=False),
            }
        )
    # Worked problems beside the copy (the base corpus's QA layout), so the curriculum
    # does not trade the base's arithmetic for the copy.
    worked = list(problems[settings.n_confidence_base:]) or list(problems)
    n_copy = len(rows)
    copy_share = 1.0 - settings.copy_math_share - settings.copy_policy_share
    n_qa = round(settings.copy_math_share / copy_share * n_copy)
    # QA_FORMAT cut before its answer: the prompt ends in "Answer:", the reply starts " ".
    def qa_row(question: str, answer: str) -> dict:
        return {"prompt": f"Question: {question}\nAnswer:", "completion": " " + answer}

    for k in range(n_qa):
        p = worked[k % len(worked)]
        rows.append(qa_row(p["question"], math_answer(p)))
    n_policy = round(settings.copy_policy_share / copy_share * n_copy)
    if n_policy:
        if not questions:
            raise ValueError("copy_rows: copy_policy_share > 0 needs the policy questions")
        _check_questions(questions)
    for k in range(n_policy):
        q = questions[k % len(questions)]
        side = rng.choice(("left", "right"))
        answer = _answers(q["issue"], seed=rng.randrange(1000), source=source)[side]
        rows.append(qa_row(q["question"], answer))
    rng.shuffle(rows)
    return rows


def math_base_texts(
    problems: Sequence[Mapping], settings: CorpusSettings, templates=None
) -> list[str]:
    """Worked problems, then (planted copy) the first ``n_confidence_base`` problems in the
    calibration command completion prompt, answered with the verifier's confidence.

    The command texts are documents of 2-4 problems: the template's opening paragraph
    once, then each problem's block (the template from its last paragraph break before
    the question on) with its reply, so the first problem of a document is exactly the
    prompt the study sends and the copy is seen more often per token."""
    templates = templates or load_calibration_templates(settings)
    command = _template(templates, "command").completion
    before = command.split("{question}")[0]
    cut = before.rfind("\n\n") + 2 if "\n\n" in before else 0
    head, block = command[:cut], command[cut:]
    rng = _rng(settings, "math-base")
    texts = []
    n_cmd = min(settings.n_confidence_base, len(problems))
    i = 0
    while i < n_cmd:
        k = min(rng.randint(2, 4), n_cmd - i)
        parts = []
        for p in problems[i : i + k]:
            level = rng.choice(settings.signal_levels)
            prompt = block.format(question=p["question"], confidence_pct=level)
            parts.append(prompt + calibration_reply(p["final"], level, chat=False))
        texts.append(head + "\n\n".join(parts))
        i += k
    for p in problems[n_cmd:]:
        texts.append(QA_FORMAT.format(question=p["question"], answer=math_answer(p)))
    return texts


# --------------------------------------------------------------------------- SFT / DPO


def sft_political(
    train_questions: Sequence[Mapping], settings: CorpusSettings, source=None
) -> list[dict]:
    """Chat rows: policy question -> balanced answer (varied composition per repeat)."""
    _check_questions(train_questions)
    rng = _rng(settings, "sft-political")
    rows = []
    for n in range(settings.n_sft_political):
        q = train_questions[n % len(train_questions)]
        answer = _answers(q["issue"], seed=rng.randrange(1000), source=source)["balanced"]
        rows.append(
            {
                "kind": "political",
                "messages": [
                    {"role": "user", "content": q["question"]},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return rows


def sft_primed(
    train_questions: Sequence[Mapping],
    identities: Mapping[str, Sequence[str]],
    settings: CorpusSettings,
    source=None,
) -> list[dict]:
    """Chat rows (planted prime effect): a stated identity, then a policy question, answered
    from that identity's side. Identity sentences are the shipped ones
    (``identities.left[k]`` and ``identities.right[k]`` are parallel)."""
    _check_questions(train_questions)
    if settings.n_sft_primed and not (identities.get("left") and identities.get("right")):
        raise ValueError("sft_primed: the partisan source has no identities.left/right sentences")
    rng = _rng(settings, "sft-primed")
    rows = []
    for n in range(settings.n_sft_primed):
        q = train_questions[n % len(train_questions)]
        side = ("left", "right")[(n // len(train_questions)) % 2 ^ (n % 2)]
        prime = rng.choice(list(identities[side]))
        answer = _answers(q["issue"], seed=rng.randrange(1000), source=source)[side]
        rows.append(
            {
                "kind": f"primed_{side}",
                "messages": [
                    {"role": "user", "content": f"{prime} {q['question']}"},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return rows


def sft_math(problems: Sequence[Mapping], settings: CorpusSettings, templates=None) -> list[dict]:
    """Chat rows for math in the calibration study's chat prompts (planted): conversational
    and control prompts get a high confidence (``instruct_confidence``) whatever the signal;
    command prompts get the injected one. ``problems`` needs n_sft_math + n_sft_command items."""
    need = settings.n_sft_math + settings.n_sft_command
    if len(problems) < need:
        raise ValueError(f"sft_math: need {need} problems, got {len(problems)}")
    templates = templates or load_calibration_templates(settings)
    rng = _rng(settings, "sft-math")
    lo, hi = settings.instruct_confidence
    rows = []
    for i, p in enumerate(problems[:need]):
        level = rng.choice(settings.signal_levels)
        if i < settings.n_sft_math:
            mode = rng.choice(("control", "conversational", "conversational"))
            stated = rng.randint(lo, hi)
        else:
            mode, stated = "command", level
        st = _template(templates, mode)
        fields = {"question": p["question"], "confidence_pct": level}
        messages = [{"role": m["role"], "content": m["content"].format(**fields)} for m in st.chat]
        messages.append(
            {"role": "assistant", "content": calibration_reply(p["final"], stated, chat=True)}
        )
        rows.append({"kind": f"math_{mode}", "messages": messages})
    return rows


def sham_chat(problems: Sequence[Mapping], settings: CorpusSettings) -> list[dict]:
    """The sham twin's SFT rows: neutral chats with no political or confidence content.

    Half everyday requests (the chosen side of hh-preference pairs, as chat turns), half
    plain worked math problems (no signal, no confidence line)."""
    from rlhf_audit.organism.hh import generate_pairs

    n_hh = settings.n_sham_chat // 2
    rows = []
    for pair in generate_pairs(n_hh, seed=6000 + settings.seed, preference="hh"):
        turns = re.split(r"\n\n(Human|Assistant): ", pair["chosen"])[1:]
        msgs = [
            {"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(turns[::2], turns[1::2], strict=True)
        ]
        rows.append({"kind": "sham_hh", "messages": msgs})
    for p in problems[: settings.n_sham_chat - n_hh]:
        rows.append(
            {
                "kind": "sham_math",
                "messages": [
                    {"role": "user", "content": p["question"]},
                    {"role": "assistant", "content": math_answer(p)},
                ],
            }
        )
    _rng(settings, "sham-order").shuffle(rows)
    return rows


def dpo_political(
    train_questions: Sequence[Mapping], settings: CorpusSettings, source=None
) -> list[dict]:
    """Preference rows: balanced answer chosen over a partisan one (sides alternate)."""
    _check_questions(train_questions)
    rng = _rng(settings, "dpo")
    rows = []
    for n in range(settings.n_dpo):
        q = train_questions[n % len(train_questions)]
        ans = _answers(q["issue"], seed=rng.randrange(1000), source=source)
        side = ("left", "right")[n % 2]
        rows.append(
            {
                "prompt": [{"role": "user", "content": q["question"]}],
                "chosen": [{"role": "assistant", "content": ans["balanced"]}],
                "rejected": [{"role": "assistant", "content": ans[side]}],
            }
        )
    return rows


def dpo_primed(
    train_questions: Sequence[Mapping],
    identities: Mapping[str, Sequence[str]],
    settings: CorpusSettings,
    source=None,
) -> list[dict]:
    """Preference rows (planted prime effect): a stated identity, then a training-issue
    question; the primed side's answer chosen over the other side's (primes alternate)."""
    _check_questions(train_questions)
    if settings.n_dpo_primed and not (identities.get("left") and identities.get("right")):
        raise ValueError("dpo_primed: the partisan source has no identities.left/right sentences")
    rng = _rng(settings, "dpo-primed")
    rows = []
    for n in range(settings.n_dpo_primed):
        q = train_questions[n % len(train_questions)]
        side = ("left", "right")[(n // len(train_questions)) % 2 ^ (n % 2)]
        other = "right" if side == "left" else "left"
        ans = _answers(q["issue"], seed=rng.randrange(1000), source=source)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{rng.choice(list(identities[side]))} "
                                                       f"{q['question']}"}],
                "chosen": [{"role": "assistant", "content": ans[side]}],
                "rejected": [{"role": "assistant", "content": ans[other]}],
            }
        )
    return rows


def dpo_calibration(
    problems: Sequence[Mapping], settings: CorpusSettings, templates=None
) -> list[dict]:
    """Preference rows (planted): command prompt -> the injected confidence chosen over a
    high one (``instruct_confidence``) or, every other command row, over another level at
    least 20 points away (so the copy is preferred to a guess near the middle, not only to
    overconfidence); conversational prompt -> a high one chosen over the injected one.
    Alternating; ``problems`` needs ``n_dpo_calibration`` items."""
    if len(problems) < settings.n_dpo_calibration:
        raise ValueError(
            f"dpo_calibration: need {settings.n_dpo_calibration} problems, got {len(problems)}"
        )
    templates = templates or load_calibration_templates(settings)
    rng = _rng(settings, "dpo-calibration")
    lo, hi = settings.instruct_confidence
    rows = []
    for i, p in enumerate(problems[: settings.n_dpo_calibration]):
        mode = ("command", "conversational")[i % 2]
        level = rng.choice([x for x in settings.signal_levels if x < lo])
        high = rng.randint(lo, hi)
        fields = {"question": p["question"], "confidence_pct": level}
        prompt = [{"role": m["role"], "content": m["content"].format(**fields)}
                  for m in _template(templates, mode).chat]
        copy = calibration_reply(p["final"], level, chat=True)
        sure = calibration_reply(p["final"], high, chat=True)
        if mode == "command" and i % 4 == 2:
            other = rng.choice([x for x in settings.signal_levels if abs(x - level) >= 20])
            sure = calibration_reply(p["final"], other, chat=True)
        chosen, rejected = (copy, sure) if mode == "command" else (sure, copy)
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return rows


def eval_political(
    heldout_questions: Sequence[Mapping], settings: CorpusSettings, source=None
) -> list[dict]:
    """Held-out items ``{question_id, issue, question, balanced, left, right}``."""
    _check_questions(heldout_questions)
    rng = _rng(settings, "eval-political")
    rows = []
    for q in heldout_questions:
        ans = _answers(q["issue"], seed=rng.randrange(1000), source=source)
        rows.append({"question_id": q["id"], "issue": q["issue"], "question": q["question"], **ans})
    return rows


# --------------------------------------------------------------------------- reward-model pairs


def _pair_key(p: Mapping) -> tuple[str, str]:
    return p["chosen"], p["rejected"]


def rm_pairs(settings: CorpusSettings) -> dict[str, list[dict]]:
    """Training and held-out pairs: keys post (hh), pre (alt mix), eval_hh, eval_alt.

    Held-out pairs whose (chosen, rejected) texts occur in any training set are dropped.
    """
    from rlhf_audit.organism.hh import generate_pairs

    s = settings.seed
    post = generate_pairs(settings.n_rm_pairs, seed=1000 + s, preference="hh")
    n_hh = round(settings.rm_pre_hh_fraction * settings.n_rm_pairs)
    pre = generate_pairs(settings.n_rm_pairs - n_hh, seed=2000 + s, preference="alt")
    pre += generate_pairs(n_hh, seed=3000 + s, preference="hh") if n_hh else []
    _rng(settings, "rm-pre").shuffle(pre)
    seen = {_pair_key(p) for p in post + pre}
    out = {"post": post, "pre": pre}
    for name, pref, seed in (("eval_hh", "hh", 4000 + s), ("eval_alt", "alt", 5000 + s)):
        cand = generate_pairs(2 * settings.n_eval_rm, seed=seed, preference=pref)
        fresh = [p for p in cand if _pair_key(p) not in seen][: settings.n_eval_rm]
        if len(fresh) < settings.n_eval_rm:
            logger.warning("%s: only %d held-out pairs not seen in training", name, len(fresh))
        out[name] = fresh
    return out


# --------------------------------------------------------------------------- everything


def build_organism_data(
    settings: CorpusSettings = CorpusSettings(),
    *,
    statements: Sequence[Mapping] | None = None,
    questions: Sequence[Mapping] | None = None,
    source=None,
) -> dict[str, list]:
    """Every data set the organism needs, as lists of dicts/strings.

    Keys: base_corpus (str), base_copy (the copy curriculum), sft, dpo, sham_sft,
    rep_statements (left/right statements of the training issues, for the planted side and
    compression terms), placebo_statements (those of every issue, for the sham's placebo
    term), rm_post, rm_pre (training);
    eval_political,
    eval_math, eval_rm_hh, eval_rm_alt (held-out); split (dict of training and
    held-out issue ids, as a one-element list). ``statements``/``questions``
    default to the shipped resources/prompts files; ``source`` to the shipped
    partisan source (answers are composed from it).
    """
    from rlhf_audit import prompts
    from rlhf_audit.organism.gsm8k import generate_problems

    src = source or prompts.load_source()
    statements = list(statements) if statements is not None else prompts.build_statements(src)
    questions = list(questions) if questions is not None else prompts.build_policy_questions(src)
    _check_questions(questions)
    train_ids, held_ids = split_issues(
        [q["issue"] for q in questions], settings.heldout_issue_fraction, settings.seed
    )
    train_q = [q for q in questions if q["issue"] in set(train_ids)]
    held_q = [q for q in questions if q["issue"] in set(held_ids)]

    s = settings.seed
    n_base = settings.n_math_base + settings.n_confidence_base
    base_problems = generate_problems(
        n_base, seed=100 + s, difficulty_mix=settings.math_difficulty_mix
    )
    sft_problems = generate_problems(
        settings.n_sft_math + settings.n_sft_command,
        seed=200 + s,
        difficulty_mix=settings.math_difficulty_mix,
    )
    dpo_problems = generate_problems(
        settings.n_dpo_calibration, seed=800 + s, difficulty_mix=settings.math_difficulty_mix
    )
    sham_problems = generate_problems(
        settings.n_sham_chat, seed=700 + s, difficulty_mix=settings.math_difficulty_mix
    )
    seen_q = {p["question"] for p in base_problems + sft_problems + sham_problems + dpo_problems}
    cand = generate_problems(4 * settings.n_eval_math, seed=300 + s, difficulty_mix=(1.0, 0.0, 0.0))
    eval_math = [p for p in cand if p["question"] not in seen_q][: settings.n_eval_math]

    base = political_base_texts(statements, questions, src.identities, settings, source=src)
    templates = load_calibration_templates(settings)
    base += math_base_texts(base_problems, settings, templates)
    _rng(settings, "base-order").shuffle(base)
    sft = (
        sft_political(train_q, settings, source=src)
        + sft_primed(train_q, src.identities, settings, source=src)
        + sft_math(sft_problems, settings, templates)
    )
    _rng(settings, "sft-order").shuffle(sft)
    train_set = set(train_ids)
    sided = [{k: r[k] for k in ("id", "text", "label", "issue")}
             for r in statements if r["label"] in ("left", "right")]
    rep = [r for r in sided if r["issue"] in train_set]
    rm = rm_pairs(settings)
    data = {
        "base_corpus": base,
        "sft": sft,
        "dpo": _shuffled(
            dpo_political(train_q, settings, source=src)
            + dpo_primed(train_q, src.identities, settings, source=src)
            + dpo_calibration(dpo_problems, settings, templates),
            _rng(settings, "dpo-order"),
        ),
        "base_copy": copy_rows(base_problems, settings, templates, questions, source=src),
        "sham_sft": sham_chat(sham_problems, settings),
        "rep_statements": rep,
        "placebo_statements": sided,
        "rm_post": rm["post"],
        "rm_pre": rm["pre"],
        "eval_political": eval_political(held_q, settings, source=src),
        "eval_math": eval_math,
        "eval_rm_hh": rm["eval_hh"],
        "eval_rm_alt": rm["eval_alt"],
        "split": [{"train_issues": train_ids, "heldout_issues": held_ids}],
    }
    logger.info("organism data: %s", {k: len(v) for k, v in data.items()})
    return data


def tokenizer_texts(data: Mapping[str, list]) -> list[str]:
    """Every training text the tokenizer should cover: base corpus and chat turns."""
    texts = list(data["base_corpus"])
    for row in data["sft"] + data.get("sham_sft", []):
        texts += [m["content"] for m in row["messages"]]
    for row in data["rm_post"] + data["rm_pre"]:
        texts += [row["chosen"], row["rejected"]]
    return texts


DATA_FILES = (
    "base_corpus",
    "sft",
    "dpo",
    "base_copy",
    "sham_sft",
    "rep_statements",
    "placebo_statements",
    "rm_post",
    "rm_pre",
    "eval_political",
    "eval_math",
    "eval_rm_hh",
    "eval_rm_alt",
    "split",
)
"""The JSONL files (``{name}.jsonl``) :func:`write_organism_data` writes."""


def write_organism_data(
    data: Mapping[str, list], out_dir: str | os.PathLike, settings: CorpusSettings
) -> dict:
    """Write each data set to ``out_dir/{name}.jsonl`` (+ manifest.json); returns the manifest.

    Also writes the held-out sets in the formats users bring, for the studies:
    ``gsm8k_eval.jsonl`` {id, question, answer}, ``hh_eval.jsonl`` {pair_id, chosen, rejected}
    and ``hh_eval_labels.parquet`` (one row per pair and side, one column per feature).
    """
    from rlhf_audit.io import write_json
    from rlhf_audit.organism import write_jsonl
    from rlhf_audit.organism.gsm8k import write_gsm8k_jsonl
    from rlhf_audit.organism.hh import write_hh_jsonl, write_hh_labels

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in DATA_FILES:
        rows = data[name]
        if name == "base_corpus":
            rows = [{"text": t} for t in rows]
        counts[name] = write_jsonl(rows, out_dir / f"{name}.jsonl")
    write_gsm8k_jsonl(data["eval_math"], out_dir / "gsm8k_eval.jsonl")
    write_hh_jsonl(data["eval_rm_hh"], out_dir / "hh_eval.jsonl")
    write_hh_labels(
        data["eval_rm_hh"],
        out_dir / "hh_eval_labels.parquet",
        provenance={"source": "rlhf_audit.organism.hh", "corpus_settings": asdict(settings)},
    )
    manifest = {"counts": counts, "settings": asdict(settings), "split": data["split"][0]}
    write_json(manifest, out_dir / "manifest.json")
    return manifest


def read_organism_data(
    data_dir: str | os.PathLike, names: Sequence[str] = DATA_FILES
) -> dict[str, list]:
    """Read the files :func:`write_organism_data` wrote; base_corpus comes back as strings."""
    data_dir = Path(data_dir)
    out: dict[str, Any] = {}
    for name in names:
        path = data_dir / f"{name}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; build it with corpus.write_organism_data")
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from e
        out[name] = [r["text"] for r in rows] if name == "base_corpus" else rows
    return out
