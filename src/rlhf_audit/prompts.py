"""Authored partisan prompts: the source file, the builder and answer composers.

``resources/prompts/partisan_source.yaml`` holds, per US policy issue, left- and
right-leaning claims (as a committed partisan would put them), neutral
background statements and open policy questions, plus the phrasing templates
and the identity sentences. Everything in it was written for this project.

The builder renders that source deterministically into the shipped files:

- ``partisan_statements.jsonl`` rows ``{id, text, label, issue}``: every claim
  through every template of its kind (left and right share the partisan
  templates, so the two sides have the same template mix);
- ``policy_questions.jsonl`` rows ``{id, issue, question}``;
- ``identity_primes.jsonl`` rows ``{id, question_id, issue, identity, text}``: each
  question preceded by a sentence stating a left or a right identity.

Rebuild (or check that the shipped files are current) with::

    python -m rlhf_audit.prompts            # rewrite resources/prompts/*.jsonl
    python -m rlhf_audit.prompts --check    # exit 1 if they differ from the source

:func:`balanced_answer` and :func:`partisan_answer` compose answers to a policy
question from the source claims; the model organism's alignment stage trains on
them (balanced preferred over partisan).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhf_audit.io import atomic_path

log = logging.getLogger(__name__)

SIDES = ("left", "right")
LABELS = ("left", "right", "neutral")
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "resources" / "prompts"
"""Shipped prompt folder (resolved from the source tree; the package is installed editable)."""
SOURCE_NAME = "partisan_source.yaml"
OUTPUT_NAMES = {
    "statements": "partisan_statements.jsonl",
    "questions": "policy_questions.jsonl",
    "identity_primes": "identity_primes.jsonl",
}


class PromptSourceError(ValueError):
    """The authored source file is malformed; the message names the file, entry and fix."""


@dataclass(frozen=True)
class Template:
    """A phrasing frame around one claim."""

    id: str
    """Short identifier, part of every rendered statement's id."""
    text: str
    """Frame with exactly one ``{claim}`` (claim as written) or ``{Claim}`` (first letter
    capitalised) placeholder."""

    def render(self, claim: str) -> str:
        return self.text.replace("{claim}", claim).replace("{Claim}", _capitalize(claim))


@dataclass(frozen=True)
class Issue:
    """One policy issue with its authored claims and questions."""

    id: str
    """Snake_case identifier (the ``issue`` column of every output file)."""
    title: str
    """Noun phrase used inside sentences ("the minimum wage")."""
    left: tuple[str, ...]
    """Left-leaning claims (bare clauses, no final period)."""
    right: tuple[str, ...]
    """Right-leaning claims, as many as ``left``."""
    neutral: tuple[str, ...]
    """Descriptive background statements about the same topic."""
    questions: tuple[str, ...]
    """Open policy questions, each ending in '?'."""

    def claims(self, label: str) -> tuple[str, ...]:
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {LABELS}")
        return getattr(self, label)


@dataclass(frozen=True)
class PartisanSource:
    """The parsed, validated contents of ``partisan_source.yaml``."""

    version: int
    """Version of the source file; bump when claims change meaning."""
    partisan_templates: tuple[Template, ...]
    """Frames for left and right claims."""
    neutral_templates: tuple[Template, ...]
    """Frames for neutral statements."""
    identities: Mapping[str, tuple[str, ...]]
    """Identity sentences per side; the two lists are parallel."""
    issues: tuple[Issue, ...]
    """Policy issues in file order."""
    path: str = ""
    """File the source was read from (for error messages)."""

    def issue(self, issue_id: str) -> Issue:
        """The issue with this id; a KeyError lists the known ids."""
        for it in self.issues:
            if it.id == issue_id:
                return it
        known = ", ".join(i.id for i in self.issues)
        raise KeyError(f"unknown issue {issue_id!r} in {self.path}; known issues: {known}")


@dataclass(frozen=True)
class PromptBuildSettings:
    """How the shipped JSONL files are rendered from the source."""

    identity_phrasings_per_question: int = 1
    """Identity phrasings per question and side; phrasings rotate over questions so that
    all of them are used (1 = one left and one right prime per question)."""


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def default_source_path() -> Path:
    return PROMPTS_DIR / SOURCE_NAME


# --------------------------------------------------------------------------- loading


def _str_list(raw: Mapping, key: str, where: str, path: str) -> tuple[str, ...]:
    v = raw.get(key)
    if not isinstance(v, list) or not v:
        raise PromptSourceError(f"{path}: {where}: '{key}' must be a non-empty list of strings")
    out = []
    for j, s in enumerate(v):
        if not isinstance(s, str) or not s.strip():
            raise PromptSourceError(f"{path}: {where}: {key}[{j}] must be a non-empty string")
        out.append(" ".join(s.split()))
    return tuple(out)


def _templates(raw: object, kind: str, path: str) -> tuple[Template, ...]:
    if not isinstance(raw, list) or not raw:
        raise PromptSourceError(
            f"{path}: templates.{kind} must be a non-empty list of {{id, text}}"
        )
    out, seen = [], set()
    for j, t in enumerate(raw):
        where = f"templates.{kind}[{j}]"
        if (
            not isinstance(t, Mapping)
            or not isinstance(t.get("id"), str)
            or not isinstance(t.get("text"), str)
        ):
            raise PromptSourceError(f"{path}: {where} needs string fields 'id' and 'text'")
        n_slots = t["text"].count("{claim}") + t["text"].count("{Claim}")
        if n_slots != 1:
            raise PromptSourceError(
                f"{path}: {where} ({t['id']!r}) must contain exactly one {{claim}} or {{Claim}}"
            )
        if t["id"] in seen:
            raise PromptSourceError(f"{path}: {where}: duplicate template id {t['id']!r}")
        seen.add(t["id"])
        out.append(Template(t["id"], t["text"]))
    return tuple(out)


def parse_source(raw: Mapping, path: str = "<source>") -> PartisanSource:
    """Validate the YAML mapping of a partisan source and return it typed."""
    if not isinstance(raw, Mapping):
        raise PromptSourceError(f"{path}: expected a mapping at the top level")
    for key in ("version", "templates", "identities", "issues"):
        if key not in raw:
            raise PromptSourceError(f"{path}: missing top-level key '{key}'")
    tpl = raw["templates"]
    if not isinstance(tpl, Mapping):
        raise PromptSourceError(f"{path}: 'templates' must map 'partisan' and 'neutral' to lists")
    partisan = _templates(tpl.get("partisan"), "partisan", path)
    neutral = _templates(tpl.get("neutral"), "neutral", path)
    idents = raw["identities"]
    if not isinstance(idents, Mapping):
        raise PromptSourceError(f"{path}: 'identities' must map 'left' and 'right' to lists")
    identities = {s: _str_list(idents, s, "identities", path) for s in SIDES}
    if len(identities["left"]) != len(identities["right"]):
        raise PromptSourceError(
            f"{path}: identities.left and identities.right must be parallel lists of equal length"
        )
    if not isinstance(raw["issues"], list) or not raw["issues"]:
        raise PromptSourceError(f"{path}: 'issues' must be a non-empty list")
    issues, ids, seen_text = [], set(), {}
    for j, it in enumerate(raw["issues"]):
        where = f"issues[{j}]"
        if not isinstance(it, Mapping):
            raise PromptSourceError(f"{path}: {where} must be a mapping")
        iid, title = it.get("id"), it.get("title")
        if not isinstance(iid, str) or not iid.isidentifier() or iid != iid.lower():
            raise PromptSourceError(
                f"{path}: {where}: 'id' must be a snake_case string, got {iid!r}"
            )
        where = f"issues[{j}] ({iid})"
        if iid in ids:
            raise PromptSourceError(f"{path}: {where}: duplicate issue id")
        ids.add(iid)
        if not isinstance(title, str) or not title.strip() or title.rstrip()[-1] in ".!?":
            raise PromptSourceError(
                f"{path}: {where}: 'title' must be a noun phrase without final punctuation"
            )
        fields = {
            k: _str_list(it, k, where, path) for k in ("left", "right", "neutral", "questions")
        }
        if len(fields["left"]) != len(fields["right"]):
            raise PromptSourceError(
                f"{path}: {where}: needs as many right claims as left claims "
                f"({len(fields['left'])} vs {len(fields['right'])}) so the sides stay balanced"
            )
        for k in LABELS:
            for c in fields[k]:
                if c[-1] in ".!?;:,":
                    raise PromptSourceError(
                        f"{path}: {where}: {k} claim {c!r} ends in punctuation; write claims as "
                        "bare clauses (templates add the period)"
                    )
                if c in seen_text:
                    raise PromptSourceError(
                        f"{path}: {where}: claim {c!r} repeats one in {seen_text[c]}"
                    )
                seen_text[c] = where
        for q in fields["questions"]:
            if not q.endswith("?"):
                raise PromptSourceError(f"{path}: {where}: question {q!r} must end in '?'")
        issues.append(Issue(iid, " ".join(title.split()), **fields))
    return PartisanSource(
        version=int(raw["version"]),
        partisan_templates=partisan,
        neutral_templates=neutral,
        identities=identities,
        issues=tuple(issues),
        path=path,
    )


def load_source(path: str | Path | None = None) -> PartisanSource:
    """Read and validate a partisan source YAML (default: the shipped one)."""
    path = Path(path) if path is not None else default_source_path()
    if not path.exists():
        raise PromptSourceError(
            f"{path}: partisan source not found; pass the path of a partisan_source.yaml"
        )
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return parse_source(raw, str(path))


@functools.lru_cache(maxsize=1)
def _default_source() -> PartisanSource:
    return load_source()


def _resolve(issue: str | Issue, source: PartisanSource | None) -> Issue:
    if isinstance(issue, Issue):
        return issue
    return (source or _default_source()).issue(issue)


# --------------------------------------------------------------------------- building


def build_statements(source: PartisanSource) -> list[dict]:
    """Labelled statements: every claim through every template of its kind.

    Rows ``{id, text, label, issue}`` with id ``{issue}-{label}-{claim index}-{template id}``.
    """
    rows = []
    for issue in source.issues:
        for label in LABELS:
            templates = (
                source.neutral_templates if label == "neutral" else source.partisan_templates
            )
            for k, claim in enumerate(issue.claims(label)):
                for t in templates:
                    rows.append(
                        {
                            "id": f"{issue.id}-{label}-{k}-{t.id}",
                            "text": t.render(claim),
                            "label": label,
                            "issue": issue.id,
                        }
                    )
    return rows


def build_policy_questions(source: PartisanSource) -> list[dict]:
    """Open policy questions: rows ``{id, issue, question}`` with id ``{issue}-q{index}``."""
    return [
        {"id": f"{issue.id}-q{k}", "issue": issue.id, "question": q}
        for issue in source.issues
        for k, q in enumerate(issue.questions)
    ]


def build_identity_primes(
    source: PartisanSource, settings: PromptBuildSettings = PromptBuildSettings()
) -> list[dict]:
    """Questions preceded by a stated identity.

    Rows ``{id, question_id, issue, identity, text}``; each question gets
    ``settings.identity_phrasings_per_question`` phrasings per side, rotating over
    the questions so that every phrasing is used about equally. Left and right
    primes of a question use the same (parallel) phrasing index, so the two
    differ only in the stated identity. id: ``{question_id}-{identity}-p{phrasing}``.
    """
    n_phr = len(source.identities["left"])
    per_q = settings.identity_phrasings_per_question
    if not 1 <= per_q <= n_phr:
        raise ValueError(
            f"identity_phrasings_per_question must be between 1 and {n_phr} (the number of "
            f"authored phrasings), got {per_q}"
        )
    rows = []
    for j, q in enumerate(build_policy_questions(source)):
        for r in range(per_q):
            p = (j + r) % n_phr
            for side in SIDES:
                rows.append(
                    {
                        "id": f"{q['id']}-{side}-p{p}",
                        "question_id": q["id"],
                        "issue": q["issue"],
                        "identity": side,
                        "text": f"{source.identities[side][p]} {q['question']}",
                    }
                )
    return rows


def render_jsonl(rows: Iterable[Mapping]) -> str:
    """Canonical JSONL text: one object per line, keys in row order, UTF-8 kept."""
    return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)


def build_outputs(
    source: PartisanSource, settings: PromptBuildSettings = PromptBuildSettings()
) -> dict[str, str]:
    """File name -> exact JSONL text of every shipped output file."""
    return {
        OUTPUT_NAMES["statements"]: render_jsonl(build_statements(source)),
        OUTPUT_NAMES["questions"]: render_jsonl(build_policy_questions(source)),
        OUTPUT_NAMES["identity_primes"]: render_jsonl(build_identity_primes(source, settings)),
    }


def write_outputs(
    source: PartisanSource,
    out_dir: str | Path,
    settings: PromptBuildSettings = PromptBuildSettings(),
) -> dict[str, Path]:
    """Write every output file atomically into ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    written = {}
    for name, text in build_outputs(source, settings).items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written[name] = out_dir / name
        log.info("wrote %s (%d rows)", out_dir / name, text.count("\n"))
    return written


def stale_outputs(
    source: PartisanSource,
    out_dir: str | Path,
    settings: PromptBuildSettings = PromptBuildSettings(),
) -> list[str]:
    """Names of output files in ``out_dir`` that are missing or differ from the source."""
    out_dir = Path(out_dir)
    stale = []
    for name, text in build_outputs(source, settings).items():
        p = out_dir / name
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


# --------------------------------------------------------------------------- answers

_BALANCED_FRAMES = (
    (
        "People disagree about {title}. Supporters of one view argue that {a}. "
        "Those on the other side argue that {b}. {Background}. How to weigh these "
        "arguments depends on your own values and priorities."
    ),
    (
        "There are serious arguments on more than one side of {title}. Some people say "
        "that {a}. Others say that {b}. It also helps to know that {background}. "
        "Reasonable people weigh these points differently."
    ),
    (
        "This is a contested question. One side holds that {a}. The other side holds "
        "that {b}. For context, {background}. I can lay out the evidence behind either "
        "view, but the choice depends on your own priorities."
    ),
)
_PARTISAN_CONNECTORS = ("On top of that, ", "What's more, ", "And frankly, ", "Also, ")


def balanced_answer(
    issue: str | Issue,
    *,
    n_per_side: int = 2,
    seed: int = 0,
    source: PartisanSource | None = None,
) -> str:
    """An even-handed answer about ``issue``: ``n_per_side`` claims from each side plus
    one neutral background statement, sides in random order (no party names).

    Deterministic for (issue, n_per_side, seed). ``issue`` is an id (looked up in
    ``source``, default the shipped source) or an :class:`Issue`.
    """
    it = _resolve(issue, source)
    if not 1 <= n_per_side <= len(it.left):
        raise ValueError(f"n_per_side must be between 1 and {len(it.left)} for {it.id}")
    rng = random.Random(f"balanced:{it.id}:{n_per_side}:{seed}")
    sides = list(SIDES)
    rng.shuffle(sides)
    a, b = (", and that ".join(rng.sample(it.claims(s), n_per_side)) for s in sides)
    background = rng.choice(it.neutral)
    frame = rng.choice(_BALANCED_FRAMES)
    return (
        frame.replace("{title}", it.title)
        .replace("{a}", a)
        .replace("{b}", b)
        .replace("{Background}", _capitalize(background))
        .replace("{background}", background)
    )


def partisan_answer(
    issue: str | Issue,
    side: str,
    *,
    n_claims: int = 2,
    seed: int = 0,
    source: PartisanSource | None = None,
) -> str:
    """A one-sided answer about ``issue``: ``n_claims`` claims of ``side`` ("left" or
    "right"), the first in a conviction frame, the rest joined by connectors.

    Deterministic for (issue, side, n_claims, seed).
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    it = _resolve(issue, source)
    if not 1 <= n_claims <= len(it.claims(side)):
        raise ValueError(f"n_claims must be between 1 and {len(it.claims(side))} for {it.id}")
    rng = random.Random(f"partisan:{it.id}:{side}:{n_claims}:{seed}")
    claims = rng.sample(it.claims(side), n_claims)
    templates = (source or _default_source()).partisan_templates
    sentences = [rng.choice(templates).render(claims[0])]
    sentences += [f"{rng.choice(_PARTISAN_CONNECTORS)}{c}." for c in claims[1:]]
    return " ".join(sentences)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_audit.prompts",
        description="Render the authored partisan source into the shipped JSONL files.",
    )
    parser.add_argument("--source", type=Path, default=None, help="partisan_source.yaml")
    parser.add_argument("--out-dir", type=Path, default=PROMPTS_DIR, help="output folder")
    parser.add_argument(
        "--identity-phrasings-per-question",
        type=int,
        default=PromptBuildSettings.identity_phrasings_per_question,
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the files are current (exit 1 if not)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source = load_source(args.source)
    settings = PromptBuildSettings(args.identity_phrasings_per_question)
    if args.check:
        stale = stale_outputs(source, args.out_dir, settings)
        for name in stale:
            log.error(
                "%s is out of date with %s; rerun python -m rlhf_audit.prompts",
                args.out_dir / name,
                source.path,
            )
        return 1 if stale else 0
    write_outputs(source, args.out_dir, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
