"""Prompt templates of the calibration study and the prompts built from them
(format in resources/prompts/calibration/README.md)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from rlhf_audit.calibration.text import parse_gold

TEMPLATES_PATH = (Path(__file__).resolve().parents[3]
                  / "resources" / "prompts" / "calibration" / "templates.yaml")
"""The templates shipped with the repository."""


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------

PLACEHOLDERS = ("question", "confidence_pct")
"""Placeholders a template may use: the problem text and the injected level in percent."""
_ROLES = ("system", "user", "assistant")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TemplateError(ValueError):
    """A malformed templates file; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class StrategyTemplate:
    """One prompt strategy: a chat variant for instruct models, a completion variant for
    base models."""

    name: str
    """Strategy key (snake_case), e.g. ``command``."""
    signal: bool
    """Whether the prompt carries the injected confidence (``{confidence_pct}``)."""
    chat: tuple[dict[str, str], ...]
    """Messages ``{role, content}``; the last one is the user's."""
    completion: str
    """Plain-text prompt that ends where the model writes its answer (e.g. ``Answer:``)."""
    description: str = ""
    """What the strategy does, in one line."""


@dataclass(frozen=True)
class CalibrationTemplates:
    """A versioned set of prompt strategies, as loaded by :func:`load_templates`."""

    version: str
    """Template version; changes whenever any wording changes."""
    strategies: dict[str, StrategyTemplate] = field(default_factory=dict)
    """Strategies by name, in file order."""
    source: str = ""
    """Where the templates were read from."""


def _placeholders(text: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise TemplateError(f"{where}: {err}; write a literal brace as '{{{{' or '}}}}'") from err
    names = set()
    for _, fname, spec, conv in parsed:
        if fname is None:
            continue
        if fname not in PLACEHOLDERS:
            raise TemplateError(f"{where}: unknown placeholder {{{fname}}}; allowed: "
                                f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)} (or a "
                                "snippet name); write a literal brace as '{{' or '}}'")
        if spec or conv:
            raise TemplateError(f"{where}: placeholder {{{fname}}} must not carry a format "
                                "spec or conversion")
        names.add(fname)
    return names


def _substitute_snippets(text: str, snippets: Mapping[str, str]) -> str:
    for name, value in snippets.items():
        # Snippets are literal text: escape braces so that the later format() keeps them.
        text = text.replace("{" + name + "}", value.replace("{", "{{").replace("}", "}}"))
    return text


def _templates_from_mapping(doc: Any, src: str) -> CalibrationTemplates:
    if not isinstance(doc, Mapping):
        raise TemplateError(f"{src}: top level must be a mapping with 'version' and 'strategies'")
    unknown = set(doc) - {"version", "description", "snippets", "strategies"}
    if unknown:
        raise TemplateError(f"{src}: unknown top-level key(s) {sorted(unknown)}; allowed: "
                            "version, description, snippets, strategies")
    if doc.get("version") in (None, ""):
        raise TemplateError(f"{src}: 'version' is missing; add e.g. 'version: 1' and bump it "
                            "whenever a wording changes")
    snippets = doc.get("snippets") or {}
    if not isinstance(snippets, Mapping):
        raise TemplateError(f"{src}: 'snippets' must map names to text")
    for k, v in snippets.items():
        if not isinstance(k, str) or not _NAME.match(k) or k in PLACEHOLDERS:
            raise TemplateError(f"{src}: snippets.{k}: a snippet name must be snake_case and "
                                f"not one of {PLACEHOLDERS}")
        if not isinstance(v, str):
            raise TemplateError(f"{src}: snippets.{k}: must be text, got {type(v).__name__}")
    strategies = doc.get("strategies")
    if not isinstance(strategies, Mapping) or not strategies:
        raise TemplateError(f"{src}: 'strategies' must be a non-empty mapping of strategy "
                            "name -> {signal, chat, completion}")
    out: dict[str, StrategyTemplate] = {}
    for name, spec in strategies.items():
        where = f"{src}: strategies.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise TemplateError(f"{where}: strategy names must be snake_case (they become "
                                "headline keys)")
        if not isinstance(spec, Mapping):
            raise TemplateError(f"{where}: must be a mapping with signal, chat, completion")
        unknown = set(spec) - {"signal", "description", "chat", "completion"}
        if unknown:
            raise TemplateError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: "
                                "signal, description, chat, completion")
        missing = [k for k in ("signal", "chat", "completion") if k not in spec]
        if missing:
            raise TemplateError(f"{where}: missing key(s) {missing}")
        signal = spec["signal"]
        if not isinstance(signal, bool):
            raise TemplateError(f"{where}.signal: must be true or false, got {signal!r}")
        chat = spec["chat"]
        if not isinstance(chat, list) or not chat:
            raise TemplateError(f"{where}.chat: must be a non-empty list of {{role, content}}")
        messages = []
        chat_names: set[str] = set()
        for i, msg in enumerate(chat):
            mw = f"{where}.chat[{i}]"
            if not isinstance(msg, Mapping) or set(msg) != {"role", "content"}:
                raise TemplateError(f"{mw}: each message needs exactly 'role' and 'content'")
            if msg["role"] not in _ROLES:
                raise TemplateError(f"{mw}.role: {msg['role']!r} is not one of {_ROLES}")
            if not isinstance(msg["content"], str) or not msg["content"].strip():
                raise TemplateError(f"{mw}.content: must be non-empty text")
            content = _substitute_snippets(msg["content"], snippets)
            chat_names |= _placeholders(content, f"{mw}.content")
            messages.append({"role": msg["role"], "content": content})
        if messages[-1]["role"] != "user":
            raise TemplateError(f"{where}.chat: the last message must be the user's (the "
                                "model answers it)")
        completion = spec["completion"]
        if not isinstance(completion, str) or not completion.strip():
            raise TemplateError(f"{where}.completion: must be non-empty text")
        if completion != completion.rstrip():
            raise TemplateError(f"{where}.completion: ends with whitespace; end it right after "
                                "the cue (e.g. 'Answer:'), since the model writes the space "
                                "itself and a trailing-space token derails base models")
        completion = _substitute_snippets(completion, snippets)
        comp_names = _placeholders(completion, f"{where}.completion")
        for variant, names in (("chat", chat_names), ("completion", comp_names)):
            if "question" not in names:
                raise TemplateError(f"{where}.{variant}: must contain {{question}}")
            if signal and "confidence_pct" not in names:
                raise TemplateError(f"{where}.{variant}: signal is true but {{confidence_pct}} "
                                    "is absent; add it or set signal: false")
            if not signal and "confidence_pct" in names:
                raise TemplateError(f"{where}.{variant}: uses {{confidence_pct}} but signal is "
                                    "false; set signal: true")
        out[name] = StrategyTemplate(name=name, signal=signal, chat=tuple(messages),
                                     completion=completion,
                                     description=str(spec.get("description", "")))
    return CalibrationTemplates(version=str(doc["version"]), strategies=out, source=src)


def load_templates(path: str | Path = TEMPLATES_PATH) -> CalibrationTemplates:
    """Read and validate a templates YAML file (format in resources/prompts/calibration/README.md).

    Raises :class:`TemplateError` naming the file and key of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"{path}: templates file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: not valid YAML: {err}") from err
    return _templates_from_mapping(doc, str(path))


def _render_pct(level: float) -> str:
    """0.7 -> '70', 0.125 -> '12.5' (no trailing zeros, no float noise)."""
    return f"{round(float(level) * 100, 6):g}"


def build_prompts(
    problems: pl.DataFrame | Iterable[Mapping],
    levels: Sequence[float],
    strategies: Sequence[str],
    templates: CalibrationTemplates,
    *,
    chat: bool,
    tokenizer=None,
) -> pl.DataFrame:
    """One prompt per problem x level x strategy (one per problem for no-signal strategies).

    ``problems`` has ``question`` and ``answer`` (GSM8K, ending ``#### N``) and an id in
    ``problem_id`` or ``id`` (else the row number). ``levels`` are probabilities in [0, 1].
    With ``chat`` the strategy's messages go through
    ``tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)``;
    otherwise the completion template is used as is.

    Returns columns item_id, problem_id, strategy, injected (Float64 in [0, 1], null for
    no-signal strategies), prompt (final string), gold (Float64), template_version, chat
    (whether the prompt went through the chat template); ordered by problem, then strategy
    (as given), then level.
    """
    df = problems if isinstance(problems, pl.DataFrame) else pl.DataFrame(list(problems))
    for col in ("question", "answer"):
        if col not in df.columns:
            raise KeyError(f"problems table has no '{col}' column (has {df.columns}); pass the "
                           "GSM8K table from rlhf_audit.formats.load_gsm8k")
    id_col = next((c for c in ("problem_id", "id") if c in df.columns), None)
    ids = ([str(x) for x in df[id_col].to_list()] if id_col
           else [f"problem-{i:05d}" for i in range(df.height)])
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ValueError(f"problems: duplicate problem id {dup!r}; ids must be unique")
    levels = [float(x) for x in levels]
    bad = [x for x in levels if not 0.0 <= x <= 1.0]
    if bad:
        raise ValueError(f"levels must be probabilities in [0, 1], got {bad}; write 70% as 0.7")
    if len({_render_pct(x) for x in levels}) != len(levels):
        raise ValueError(f"levels repeat (as rendered percentages): {levels}")
    if not strategies:
        raise ValueError("no strategies given")
    unknown = [s for s in strategies if s not in templates.strategies]
    if unknown:
        raise KeyError(f"strategies {unknown} are not in {templates.source or 'the templates'} "
                       f"(available: {list(templates.strategies)})")
    if chat:
        if tokenizer is None:
            raise ValueError("chat=True needs the tokenizer, whose chat template renders the "
                             "messages")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat_template; use chat=False (completion "
                             "prompts) for base models")

    rows = []
    for pid, question, answer in zip(ids, df["question"].to_list(), df["answer"].to_list(),
                                     strict=True):
        try:
            gold = parse_gold(answer)
        except ValueError as err:
            raise ValueError(f"problems: problem {pid!r}: {err}") from err
        for sname in strategies:
            st = templates.strategies[sname]
            for level in (levels if st.signal else [None]):
                fields = {"question": question}
                if level is not None:
                    fields["confidence_pct"] = _render_pct(level)
                if chat:
                    messages = [{"role": m["role"], "content": m["content"].format(**fields)}
                                for m in st.chat]
                    prompt = tokenizer.apply_chat_template(messages, tokenize=False,
                                                           add_generation_prompt=True)
                else:
                    prompt = st.completion.format(**fields)
                tag = fields.get("confidence_pct", "none")
                rows.append({"item_id": f"{pid}|{sname}|{tag}", "problem_id": pid,
                             "strategy": sname, "injected": level, "prompt": prompt,
                             "gold": gold, "template_version": templates.version,
                             "chat": chat})
    return pl.DataFrame(rows, schema=ITEM_SCHEMA)


ITEM_SCHEMA = {"item_id": pl.String, "problem_id": pl.String, "strategy": pl.String,
               "injected": pl.Float64, "prompt": pl.String, "gold": pl.Float64,
               "template_version": pl.String, "chat": pl.Boolean}
"""Columns of :func:`build_prompts`."""
