"""The three input formats users bring, validated and normalised to tables.

- partisan prompts: JSONL ``{id, text, label, issue?}`` with label in left/right/neutral;
- GSM8K: JSONL ``{question, answer}`` whose answer ends in ``#### N``;
- hh-rlhf: JSONL ``{chosen, rejected}`` transcripts of ``\\n\\nHuman: ...\\n\\nAssistant: ...``
  turns, split at their final Assistant turn by :func:`split_last_turn`.

A source is a local file (``.jsonl``/``.json`` or ``.parquet``) or a Hugging Face
dataset id read through ``datasets.load_dataset``. A bad row fails with the file,
the line (1-based; the row number for Parquet and hub data) and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

FORMATS = ("partisan", "gsm8k", "hh_rlhf")
PARTISAN_LABELS = ("left", "right", "neutral")
_GSM8K_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


class InputFormatError(ValueError):
    """A malformed input row; the message names file, line and reason.

    The message is one line, ``FILE:LINE: reason. fix``, so that the workflow can
    repeat it at the end of its output (rlhf_audit.joberrors); the parts are kept
    as attributes for callers that want them apart."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 reason: str | None = None, fix: str | None = None):
        super().__init__(" ".join(str(message).split("\n")))
        self.file, self.line, self.reason, self.fix = file, line, reason, fix


@dataclass(frozen=True)
class DataSource:
    """Where a dataset comes from: a local file or a hub dataset."""

    path: str | None = None
    """Local JSONL or Parquet file."""
    hf: str | None = None
    """Hugging Face dataset id, read with datasets.load_dataset."""
    name: str | None = None
    """Dataset configuration name (e.g. 'main' for openai/gsm8k)."""
    split: str = "train"
    """Split to read from a hub dataset."""
    revision: str | None = None
    """Hub revision of the dataset."""

    @classmethod
    def from_config(cls, d: Mapping, key: str = "dataset") -> DataSource:
        allowed = {"path", "hf", "name", "split", "revision"}
        if bool(d.get("path")) == bool(d.get("hf")):
            raise ValueError(f"{key}: give exactly one of 'path' (local file) or 'hf' (dataset id)")
        return cls(**{k: d[k] for k in allowed if d.get(k) is not None})

    @property
    def label(self) -> str:
        if self.path:
            return self.path
        extra = f"/{self.name}" if self.name else ""
        return f"hf:{self.hf}{extra}[{self.split}]"


def iter_records(source: DataSource) -> Iterator[tuple[int, object]]:
    """(line or row number, record) pairs; JSON that does not parse fails with its line."""
    if source.path:
        p = Path(source.path)
        if not p.exists():
            raise InputFormatError(f"{p}: file not found")
        if p.suffix == ".parquet":
            for i, row in enumerate(pl.read_parquet(p).iter_rows(named=True), start=1):
                yield i, row
            return
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputFormatError(
                        f"{p}:{i}: not valid JSON ({err.msg} at column {err.colno}); each line "
                        "must be one JSON object") from err
        return
    import datasets

    try:
        ds = datasets.load_dataset(source.hf, source.name, split=source.split,
                                   revision=source.revision)
    except Exception as err:  # hub errors come in many types; all mean "not reachable here"
        raise InputFormatError(
            f"{source.label}: could not load the dataset ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Offline, download it once on a machine with "
            "internet (it lands in HF_HOME's cache) or export it to JSONL and use {path: FILE}."
        ) from err
    for i, row in enumerate(ds, start=1):
        yield i, row


def _err(source: DataSource, line: int, reason: str, fix: str) -> InputFormatError:
    return InputFormatError(f"{source.label}:{line}: {reason}. {fix}", file=source.label,
                            line=line, reason=reason, fix=fix)


def _need_str(source, line, rec, key, fix):
    if not isinstance(rec, Mapping):
        raise _err(source, line, f"expected a JSON object, got {type(rec).__name__}", fix)
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        got = "missing" if key not in rec else f"{type(v).__name__} {v!r:.40}"
        raise _err(source, line, f"field '{key}' must be a non-empty string ({got})", fix)
    return v


def parse_gsm8k_final(answer: str) -> str:
    """The number after the final ``#### `` of a GSM8K answer, commas removed."""
    m = _GSM8K_FINAL.search(answer.strip())
    if not m:
        raise ValueError("answer does not end in '#### N' with a number N")
    return m.group(1).replace(",", "")


HH_HUMAN_TURN = "\n\nHuman:"
"""Where a Human turn of an hh-rlhf transcript starts."""
HH_ASSISTANT_TURN = "\n\nAssistant:"
"""Where an Assistant turn of an hh-rlhf transcript starts: the label after the blank line
that separates turns (an 'Assistant:' inside a reply is not a turn)."""


class TranscriptError(ValueError):
    """A transcript that does not end with an Assistant turn; the message names the row."""


def split_last_turn(text: str, *, where: str = "transcript",
                    marker: str = HH_ASSISTANT_TURN) -> tuple[str, str, str]:
    """(prefix, label, reply) of a transcript at its final Assistant turn; the project's one
    hh-rlhf splitter (dataset loading, reward scoring, reward-model training, rewrites).

    The final turn starts at the last ``marker``; its leading whitespace (the blank line
    between turns) stays with the prefix, so ``prefix + label + reply == text``, e.g.
    ``("\\n\\nHuman: hi\\n\\n", "Assistant:", " hello")``. A transcript without that
    turn, or whose final Assistant turn is followed by a Human turn, raises
    :class:`TranscriptError` naming ``where`` (the row).
    """
    label = marker.lstrip()
    fix = ("Each transcript must end with an Assistant turn: "
           "'\\n\\nHuman: ...\\n\\nAssistant: ...'.")
    if not isinstance(text, str):
        raise TranscriptError(f"{where}: transcript is {type(text).__name__}, not text")
    idx = text.rfind(marker)
    if idx < 0:
        raise TranscriptError(f"{where}: no '{label}' turn (a turn starts with {marker!r}) in "
                              f"the transcript (starts {text[:60]!r}). {fix}")
    start = idx + len(marker) - len(label)
    reply = text[start + len(label):]
    if HH_HUMAN_TURN in reply:
        raise TranscriptError(f"{where}: the transcript ends with a Human turn after its last "
                              f"'{label}' turn (ends {text[-60:]!r}); the reply to score or "
                              f"label is missing. {fix}")
    return text[:start], label, reply


def load_partisan(source: DataSource, limit: int | None = None) -> pl.DataFrame:
    """Partisan prompts: columns id, text, label, issue (issue null when absent)."""
    fix = "Each row needs {id, text, label} with label one of left/right/neutral (issue optional)."
    rows, seen = [], {}
    for line, rec in iter_records(source):
        text = _need_str(source, line, rec, "text", fix)
        rid = rec.get("id")
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            raise _err(source, line, "field 'id' is missing", fix)
        rid = str(rid)
        if rid in seen:
            raise _err(source, line, f"duplicate id {rid!r} (first on line {seen[rid]})",
                       "Ids must be unique.")
        seen[rid] = line
        label = rec.get("label")
        if label not in PARTISAN_LABELS:
            raise _err(source, line, f"label {label!r} is not one of {PARTISAN_LABELS}", fix)
        issue = rec.get("issue")
        if issue is not None and not isinstance(issue, str):
            raise _err(source, line, f"field 'issue' must be a string, got {issue!r:.40}", fix)
        rows.append({"id": rid, "text": text, "label": label, "issue": issue})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputFormatError(f"{source.label}: no rows")
    return pl.DataFrame(rows, schema={"id": pl.String, "text": pl.String, "label": pl.String,
                                      "issue": pl.String})


def load_gsm8k(source: DataSource, limit: int | None = None) -> pl.DataFrame:
    """GSM8K problems: columns id, question, answer, final (the '#### N' number as a string)."""
    fix = "Each row needs {question, answer} with the answer ending in '#### N'."
    rows = []
    for line, rec in iter_records(source):
        q = _need_str(source, line, rec, "question", fix)
        a = _need_str(source, line, rec, "answer", fix)
        try:
            final = parse_gsm8k_final(a)
        except ValueError as err:
            raise _err(source, line, f"{err} (answer ends {a.strip()[-40:]!r})", fix) from err
        rid = rec.get("id")
        rows.append({"id": str(rid) if rid is not None else f"gsm8k-{line:06d}",
                     "question": q, "answer": a, "final": final})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputFormatError(f"{source.label}: no rows")
    return pl.DataFrame(rows)


def load_hh_rlhf(source: DataSource, limit: int | None = None) -> pl.DataFrame:
    """hh-rlhf pairs: columns pair_id, chosen, rejected, prefix, chosen_last, rejected_last."""
    fix = ("Each row needs {chosen, rejected}, transcripts of '\\n\\nHuman: ...' and "
           "'\\n\\nAssistant: ...' turns, each ending with an Assistant turn.")
    rows = []
    for line, rec in iter_records(source):
        parts = {}
        for side in ("chosen", "rejected"):
            t = _need_str(source, line, rec, side, fix)
            if HH_HUMAN_TURN not in t:
                raise _err(source, line, f"'{side}' has no '\\n\\nHuman:' turn", fix)
            if HH_ASSISTANT_TURN not in t:
                raise _err(source, line, f"'{side}' has no '\\n\\nAssistant:' turn", fix)
            try:
                prefix, _, reply = split_last_turn(t, where=side)
            except TranscriptError:  # the only case left: a Human turn after the last reply
                raise _err(source, line, f"'{side}' ends with a Human turn after its last "
                           "Assistant turn (the reply is missing)", fix) from None
            # The table's prefix stops before the blank line that opens the last turn.
            parts[side] = (prefix.removesuffix("\n\n"), reply)
        rid = rec.get("pair_id", rec.get("id"))
        rows.append({
            "pair_id": str(rid) if rid is not None else f"pair-{line:06d}",
            "chosen": rec["chosen"], "rejected": rec["rejected"],
            "prefix_chosen": parts["chosen"][0], "prefix_rejected": parts["rejected"][0],
            "chosen_last": parts["chosen"][1].strip(),
            "rejected_last": parts["rejected"][1].strip(),
        })
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputFormatError(f"{source.label}: no rows")
    return pl.DataFrame(rows)


LOADERS = {"partisan": load_partisan, "gsm8k": load_gsm8k, "hh_rlhf": load_hh_rlhf}


def load_dataset_as_table(fmt: str, source: DataSource | Mapping,
                          limit: int | None = None) -> pl.DataFrame:
    """Validate and normalise one dataset of format ``fmt`` (one of FORMATS)."""
    if fmt not in LOADERS:
        raise ValueError(f"unknown dataset format {fmt!r}; use one of {FORMATS}")
    src = source if isinstance(source, DataSource) else DataSource.from_config(source)
    return LOADERS[fmt](src, limit=limit)


def table_hash(df: pl.DataFrame) -> str:
    """Content hash of a normalised table: sha256 of its rows as canonical JSON lines."""
    h = hashlib.sha256()
    h.update(json.dumps(df.columns).encode())
    for row in df.iter_rows():
        h.update(json.dumps(row, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()
