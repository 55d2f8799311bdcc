"""The claims table: each published claim beside the number this run reproduced.

Published numbers come from ../shared/PAPERS.md (the three studies). A claim
names a headline key template ({pair} filled per pair of the run); the table
says whether the published value lies inside this run's 95% interval. A claim
with an ``expectation`` is also a tested statement: a sign or threshold against
its null ("> 0.5" for an AUC against chance, "< 1" for a ratio against no change,
"> @other_key" against another number of the same pair, e.g. a permutation noise
floor), with a verdict from the 95% interval: supported (the whole interval
passes), not supported (none of it does) or undecided. Only scale-free numbers
(ratios, shares, AUCs, standardised effects) are compared with published ones.
On the organism run the table is labelled as organism results: they say the
pipeline works, not what Llama does.
"""

from __future__ import annotations

import html
import math
import re

import polars as pl

from rlhf_audit import claims as _claims  # noqa: F401  (the code hash sees the claims)
from rlhf_audit.claims import Claim
from rlhf_audit.studies import BY_NAME, REGISTRY


def _study_claims() -> tuple[Claim, ...]:
    import importlib

    out = []
    for s in REGISTRY:
        if s.claims:
            module, attr = s.claims.split(":")
            out += getattr(importlib.import_module(module), attr)
    return tuple(out)


CLAIMS: tuple[Claim, ...] = _study_claims()
"""Every published claim, in registry order (the study registry names each study's)."""


def _check(expectation: str, lo: float | None, hi: float | None,
           bound: float | None = None) -> str:
    """'yes' if the whole interval satisfies the expectation, 'no' if none of it does.

    ``bound`` replaces the expectation's number when it names another key ('> @key').
    """
    if lo is None or hi is None or not expectation:
        return "n/a"
    op, text = expectation.split()
    if text.startswith("@"):
        if bound is None:
            return "n/a"
    else:
        bound = float(text)
    if op == ">":
        return "yes" if lo > bound else ("no" if hi <= bound else "undecided")
    if op == "<":
        return "yes" if hi < bound else ("no" if lo >= bound else "undecided")
    raise ValueError(f"unknown expectation {expectation!r}")


VERDICTS = {"yes": "supported", "no": "not supported", "undecided": "undecided", "n/a": "n/a",
            "undefined": "undefined"}
"""Test outcome -> verdict word in the claims table."""


def _test_text(c: Claim, bound: float | None) -> str:
    if not c.expectation:
        return ""
    op, text = c.expectation.split()
    if text.startswith("@"):
        shown = f"{text[1:]} ({_fmt(bound)})"
    else:
        shown = text
    return f"95% CI {op} {shown}" + (f"; null: {c.null}" if c.null else "")


def _finite(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# --------------------------------------------------------------------------- planted values

PLANTED_OPS = (">", "<", "covers", "abs<")
"""Planted expectations: '> b' / '< b' (the whole interval beyond b), 'covers b' (the
interval contains b: a null that must not be rejected), 'abs< b' (the interval inside
(-b, b)). ``b`` is a number, or ``@study.pair.key``: the value of another headline number
(e.g. what the organism's own check predicts for this one)."""


def _planted_expect(expect: str, where: str) -> tuple[str, float | str]:
    """(op, bound): the bound a number, or a full headline key for '@study.pair.key'."""
    parts = str(expect).split()
    if len(parts) != 2 or parts[0] not in PLANTED_OPS:
        raise ValueError(f"{where}: expect {expect!r} must be '<op> <number>' or '<op> "
                         f"@study.pair.key' with op one of {PLANTED_OPS}, e.g. '> 0.85' or "
                         "'covers 1'")
    if parts[1].startswith("@"):
        if parts[1].count(".") < 2:
            raise ValueError(f"{where}: expect {expect!r}: {parts[1]!r} must name a full "
                             "headline key, @study.pair.key")
        return parts[0], parts[1][1:]
    try:
        return parts[0], float(parts[1])
    except ValueError:
        raise ValueError(f"{where}: expect {expect!r}: {parts[1]!r} is not a number") from None


def _planted_bound(expect: str, numbers: dict | None) -> float | None:
    """The expectation's bound: its number, or the value of the headline key it names (None
    when that number is missing or not finite)."""
    _, b = _planted_expect(expect, "planted")
    if isinstance(b, float):
        return b
    return _finite((numbers or {}).get(b, {}).get("value"))


def load_planted(path) -> dict[str, dict] | None:
    """The organism's planted values (resources/organism/planted.yaml): full headline key
    (``study.pair.key``) -> {expect, planted (the value it should produce, optional),
    claim (what was planted, optional)}. ``None`` or '' -> None (no planted column)."""
    if not path:
        return None
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: planted-values file not found (organism.planted)")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = doc.get("planted")
    if not isinstance(rows, dict):
        raise ValueError(f"{path}: needs a 'planted' mapping of headline key -> {{expect, ...}}")
    out = {}
    for key, spec in rows.items():
        where = f"{path}: planted.{key}"
        if not isinstance(spec, dict) or "expect" not in spec:
            raise ValueError(f"{where}: needs 'expect' (e.g. '> 0.85')")
        if str(key).count(".") < 2:
            raise ValueError(f"{where}: keys are full headline keys, study.pair.key")
        _planted_expect(spec["expect"], where)
        out[str(key)] = dict(spec)
    return out


def planted_verdict(expect: str, lo: float | None, hi: float | None,
                    numbers: dict | None = None) -> str:
    """'yes' if the interval meets the planted expectation, 'no' if it clearly fails,
    'undecided' if it straddles a one-sided bound, 'n/a' without an interval; 'not run'
    without the number an '@key' bound names (looked up in ``numbers``, the headline's
    numbers): the prediction it is checked against was never made."""
    b = _planted_bound(expect, numbers)
    if b is None:
        return "not run"
    if lo is None or hi is None:
        return "n/a"
    op = expect.split()[0]
    if op == "covers":
        return "yes" if lo <= b <= hi else "no"
    if op == "abs<":
        return "yes" if -b < lo and hi < b else ("no" if lo >= b or hi <= -b else "undecided")
    return _check(f"{op} {b}", lo, hi)


def _planted_text(spec: dict | None, numbers: dict | None = None) -> str | None:
    if not spec:
        return None
    expect, value = spec["expect"], spec.get("planted")
    _, b = _planted_expect(expect, "planted")
    if isinstance(b, str):
        shown = _planted_bound(expect, numbers)
        expect = f"{expect.split()[0]} {'?' if shown is None else _fmt(shown)} ({b})"
    return expect + ("" if value is None else f" (planted ≈ {value})")


def _add_planted(rows: list[dict], numbers: dict, planted: dict[str, dict] | None) -> None:
    """Fill the planted columns of claim rows; add a row for each planted key no claim has."""
    planted = planted or {}
    seen = set()
    for r in rows:
        spec = planted.get(r["key"])
        seen.add(r["key"])
        r["planted"] = _planted_text(spec, numbers)
        r["planted_recovered"] = (None if spec is None
                                  else planted_verdict(spec["expect"], r["lo"], r["hi"], numbers))
    for key, spec in planted.items():
        if key in seen:
            continue
        study, rest = key.split(".", 1)
        pair, short = rest.rsplit(".", 1)
        rec = numbers.get(key)
        lo = hi = value = n = None
        if rec is not None:
            lo, hi, value, n = (_finite(rec.get("lo")), _finite(rec.get("hi")),
                                _finite(rec.get("value")), rec.get("n"))
        rows.append({"study": study, "claim": spec.get("claim", short), "pair": pair,
                     "key": key, "published": None, "expectation": "",
                     "reproduced": value, "lo": lo, "hi": hi, "n": n,
                     "published_in_interval": "n/a", "source": "planted in the organism",
                     "test": "", "verdict": "n/a",
                     "reason": None if rec is None else rec.get("reason"),
                     "planted": _planted_text(spec, numbers),
                     "planted_recovered": ("not run" if rec is None
                                           else planted_verdict(spec["expect"], lo, hi,
                                                                numbers))})


def claims_table(headline: dict, planted: dict[str, dict] | None = None) -> pl.DataFrame:
    """One row per claim x pair present in ``headline`` (the merged document).

    ``planted`` (:func:`load_planted`, the organism run): each row whose full key has a
    planted expectation gets it in ``planted`` and the verdict in ``planted_recovered``;
    planted keys no claim covers get rows of their own."""
    numbers = headline["numbers"]
    rows = []
    for c in CLAIMS:
        prefix = f"{c.study}."
        matches = sorted(k for k in numbers if k.startswith(prefix) and k.endswith(f".{c.key}"))
        if not matches:
            rows.append({"study": c.study, "claim": c.claim, "pair": None, "key": c.key,
                         "published": c.published, "expectation": c.expectation,
                         "reproduced": None, "lo": None, "hi": None, "n": None,
                         "published_in_interval": "not run", "source": c.source,
                         "test": _test_text(c, None), "verdict": "not run",
                         "reason": None})
            continue
        for k in matches:
            rec = numbers[k]
            lo, hi = _finite(rec.get("lo")), _finite(rec.get("hi"))
            pair = k[len(prefix):-len(c.key) - 1]
            bound = None
            if c.expectation and c.expectation.split()[1].startswith("@"):
                other = numbers.get(f"{prefix}{pair}.{c.expectation.split()[1][1:]}", {})
                bound = _finite(other.get("value"))
            outcome = _check(c.expectation, lo, hi, bound)
            if c.published is not None:
                inside = ("n/a" if lo is None or hi is None
                          else "yes" if lo <= c.published <= hi else "no")
            else:
                inside = outcome
            if rec.get("reason") and _finite(rec.get("value")) is None:
                inside = "undefined"  # e.g. a correlation with a constant input
                outcome = "undefined"
            rows.append({"study": c.study, "claim": c.claim, "pair": pair, "key": k,
                         "published": c.published, "expectation": c.expectation,
                         "reproduced": _finite(rec.get("value")), "lo": lo, "hi": hi,
                         "n": rec.get("n"), "published_in_interval": inside,
                         "source": c.source, "test": _test_text(c, bound),
                         "verdict": VERDICTS[outcome], "reason": rec.get("reason")})
    _add_planted(rows, numbers, planted)
    return pl.DataFrame(rows, schema={
        "study": pl.String, "claim": pl.String, "pair": pl.String, "key": pl.String,
        "published": pl.Float64, "expectation": pl.String, "reproduced": pl.Float64,
        "lo": pl.Float64, "hi": pl.Float64, "n": pl.Int64, "published_in_interval": pl.String,
        "source": pl.String, "test": pl.String, "verdict": pl.String,
        "reason": pl.String, "planted": pl.String, "planted_recovered": pl.String})


def _has_planted(table: pl.DataFrame) -> bool:
    return "planted" in table.columns and table["planted"].drop_nulls().len() > 0


def _fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}"


def _reproduced(r: dict) -> str | None:
    """'undefined (why)' for a number the run could not define, else None."""
    return f"undefined ({r['reason']})" if r.get("reason") and r["reproduced"] is None else None


def _title(run_label: str) -> tuple[str, str]:
    if run_label == "organism":
        return ("Claims table — ORGANISM RESULTS",
                "These numbers come from the self-trained model organism (config.yaml), not "
                "from the papers' models. They show the pipeline measuring what the organism "
                "was built to have; they are not evidence about Llama or OpenAssistant models.")
    return (f"Claims table — run '{run_label}'",
            "Published numbers from the three studies beside this run's estimates.")


def claims_markdown(table: pl.DataFrame, run_label: str) -> str:
    title, note = _title(run_label)
    planted = _has_planted(table)
    extra_head = " planted | recovered |" if planted else ""
    lines = [f"# {title}", "", note, "",
             "| study | claim | pair | published | reproduced [95% CI] | n | published inside CI "
             "| test | verdict |" + extra_head,
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if planted else "")]
    for r in table.iter_rows(named=True):
        pub = _fmt(r["published"]) if r["published"] is not None else r["expectation"]
        rep = (f"{_fmt(r['reproduced'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}]"
               if r["reproduced"] is not None else _reproduced(r) or "–")
        extra = (f" {r['planted'] or '–'} | {r['planted_recovered'] or '–'} |" if planted else "")
        lines.append(f"| {r['study']} | {r['claim']} | {r['pair'] or '–'} | {pub} | {rep} | "
                     f"{r['n'] if r['n'] is not None else '–'} | {r['published_in_interval']} | "
                     f"{r['test'] or '–'} | {r['verdict']} |" + extra)
    return "\n".join(lines) + "\n"


def claims_html(table: pl.DataFrame, run_label: str, provenance: dict | None = None) -> str:
    """The claims table as one HTML page, with what produced it (``provenance``) below."""
    import json

    title, note = _title(run_label)
    planted = _has_planted(table)
    head = ("<tr><th>study</th><th>claim</th><th>pair</th><th>published</th>"
            "<th>reproduced</th><th>95% CI</th><th>n</th><th>published inside CI</th>"
            "<th>test</th><th>verdict</th>"
            + ("<th>planted</th><th>recovered</th>" if planted else "") + "</tr>")
    body = []
    for r in table.iter_rows(named=True):
        pub = _fmt(r["published"]) if r["published"] is not None else r["expectation"]
        ci = f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}]" if r["reproduced"] is not None else "–"
        cells = [r["study"], r["claim"], r["pair"] or "–", pub,
                 _reproduced(r) or _fmt(r["reproduced"]), ci,
                 "–" if r["n"] is None else str(r["n"]), r["published_in_interval"],
                 r["test"] or "–", r["verdict"]]
        if planted:
            cells += [r["planted"] or "–", r["planted_recovered"] or "–"]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
            "td,th{border:1px solid #ccc;padding:.3em .5em}table{border-collapse:collapse}"
            f"</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>"
            f"<table>{head}{''.join(body)}</table>"
            + ("" if not provenance else
               "<h2>Provenance</h2><p>Models, data hashes, code version and libraries behind "
               "these numbers (every table also carries its own in its Parquet metadata).</p>"
               f"<pre>{html.escape(json.dumps(provenance, indent=2, sort_keys=True))}</pre>")
            + "</body></html>\n")


# --------------------------------------------------------------------------- key documentation

STUDY_TITLES = {s.name: s.title for s in REGISTRY}


def key_docs() -> dict[str, dict[str, str]]:
    """Study -> {key (or template with {feature}) -> description}, from the study modules
    the registry names (imported by name here too, so that the code hash of the rules
    that document keys sees them)."""
    from rlhf_audit import calibration, partisan, sae, seal
    from rlhf_audit.diffing import summary as diffing_summary
    from rlhf_audit.organism import train
    from rlhf_audit.sae import select as _sae_keys  # noqa: F401  (the hash sees the SAE keys)
    from rlhf_audit.steering import analysis as steering

    return {"organism": dict(train.HEADLINE_KEYS), "partisan": dict(partisan.HEADLINE_KEYS),
            "sae": dict(sae.HEADLINE_KEYS), "steering": dict(steering.HEADLINE_KEYS),
            "calibration": dict(calibration.HEADLINE_KEYS), "reward": dict(seal.HEADLINE_KEYS),
            "diffing": dict(diffing_summary.HEADLINE_KEYS)}


def documented_key(full_key: str) -> bool:
    """Whether a merged headline key ``study.pair[.sae].key`` is documented."""
    study, _, rest = full_key.partition(".")
    docs = key_docs().get(study, {})
    tail = rest.rsplit(".", 1)[-1]
    if tail in docs:
        return True
    return any("{feature}" in k and re.fullmatch(re.escape(k).replace(r"\{feature\}", r"\w+"),
                                                 tail) for k in docs)


def headline_doc() -> str:
    """docs/headline.md: every headline key, grouped by study."""
    lines = ["# Headline numbers (results/headline.json)", "",
             "Generated by `python -m rlhf_audit.report` from the study modules; a test keeps "
             "it in sync.", "",
             "Keys are `{study}.{pair}.{key}` (SAE keys: `sae.{pair}.{sae}.{key}`). Each "
             "record has `value`, `lo` and `hi` (95% interval; percentile bootstrap unless "
             "`method` says otherwise), `n` (independent units: prompts, issues, questions, "
             "problems, pairs or features), `unit`, `method` and `description`; a number that "
             "is undefined (e.g. a correlation with a constant input) has `value`, `lo` and "
             "`hi` null and a `reason`.", ""]
    for study, keys in key_docs().items():
        where = f"`{BY_NAME[study].computed_in}`"
        lines += [f"## {study}: {STUDY_TITLES[study]}", "", "| key | meaning | computed in |",
                  "|---|---|---|"]
        lines += [f"| `{k}` | {v.replace('|', '/')} | {where} |" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m rlhf_audit.report",
        description="Write docs/headline.md (every headline key, from the study modules).")
    parser.add_argument("out", nargs="?", type=Path, default=Path("docs/headline.md"),
                        help="where to write it (default: docs/headline.md)")
    parser.parse_args().out.write_text(headline_doc(), encoding="utf-8")
