"""Steered and identity-primed generations of one model: the alpha sweep under every
vector of the pair's vector table (rule generate_steering, :func:`run_sweep`), and the
unsteered answers to every identity-prime condition (rule generate_primes,
:func:`identity_prime_generations`). Two rules, so that a prime setting never regenerates
the sweep and a sweep setting (alphas, vectors) never regenerates the primes. Imports no
scorer, analysis or figure code, so that none of those reruns a generation."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from rlhf_audit.lm.generation import generate
from rlhf_audit.lm.hooks import SteeringVector
from rlhf_audit.steering.settings import SteeringSettings

log = logging.getLogger(__name__)
_DEFAULTS = SteeringSettings()
"""The defaults (a frozen dataclass: one shared instance is safe)."""


def vectors_from_table(table: pl.DataFrame) -> dict[str, tuple[int, np.ndarray]]:
    """{vector name: (layer, vector [d_model] float32)} from a :func:`steering_vector_set` table."""
    missing = {"vector", "layer", "values"} - set(table.columns)
    if missing:
        raise ValueError(f"steering vector table lacks columns {sorted(missing)}")
    return {r["vector"]: (int(r["layer"]), np.asarray(r["values"], np.float32))
            for r in table.iter_rows(named=True)}


def signed_alphas(alphas: Sequence[float]) -> list[float]:
    """``alphas`` closed under negation, with 0, sorted: both signs of every strength."""
    vals = {0.0}
    for a in alphas:
        if not math.isfinite(a):
            raise ValueError(f"alpha must be finite, got {a}")
        vals.update((float(a), -float(a)))
    return sorted(v + 0.0 for v in vals)  # + 0.0 turns -0.0 into 0.0


def _questions(questions: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(questions, Mapping):
        qs = {str(k): str(v) for k, v in questions.items()}
    else:
        qs = {f"q{i:04d}": str(q) for i, q in enumerate(questions)}
    if not qs:
        raise ValueError("no questions given")
    for k, v in qs.items():
        if not v.strip():
            raise ValueError(f"question {k!r} is empty")
    return qs


def format_prompts(
    tokenizer,
    texts: Sequence[str],
    chat: bool,
    plain_template: str = SteeringSettings.plain_template,
) -> tuple[list[str], bool]:
    """Final prompt strings and the ``add_special_tokens`` flag to generate them with.

    ``chat=True`` applies the tokenizer's chat template (one user turn, generation
    prompt added); the template emits its own BOS, so special tokens are not added
    again. ``chat=False`` fills ``plain_template`` (with ``{question}``) and lets the
    tokenizer add BOS.
    """
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "chat=True but the tokenizer has no chat_template; use chat=False "
                "(plain template) for this model"
            )
        out = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
        bos = tokenizer.bos_token
        add = not (bos and all(p.startswith(bos) for p in out))
        return out, add
    if "{question}" not in plain_template:
        raise ValueError(f"plain_template must contain '{{question}}': {plain_template!r}")
    return [plain_template.replace("{question}", t) for t in texts], True


PRIME_DESIGN_SCHEMA = {
    "question_id": pl.String,
    "issue": pl.String,
    "question": pl.String,
    "condition": pl.String,
    "wording": pl.String,
    "prime": pl.String,
    "message": pl.String,
}
"""One row per (question, condition, wording) of the identity-prime study."""


def prime_design(
    questions: pl.DataFrame,
    identity_primes: pl.DataFrame,
    personas: pl.DataFrame,
    *,
    source: str = "identity_primes.jsonl",
) -> pl.DataFrame:
    """The identity-prime conditions of each question (columns :data:`PRIME_DESIGN_SCHEMA`).

    ``questions`` {id, issue, question}; ``identity_primes`` {id, question_id, identity
    (left/right), text = "<identity sentence> <question>"}, its ids ending in ``-p{k}`` (the
    wording index, parallel between the sides); ``personas`` {id, text}: non-partisan persona
    sentences. Every row of ``identity_primes`` for the questions is used (each wording a
    level of a random effect); per question also "none" (the bare question) and, for each
    wording index k used on it, a "persona" prime with persona k mod n_personas, joined to
    the question the same way (sentence, space, question).
    """
    for name, df, cols in (("questions", questions, {"id", "issue", "question"}),
                           (source, identity_primes, {"id", "question_id", "identity", "text"}),
                           ("personas", personas, {"id", "text"})):
        missing = cols - set(df.columns)
        if missing:
            raise ValueError(f"{name}: missing columns {sorted(missing)}")
    if personas.height == 0:
        raise ValueError("personas: at least one non-partisan persona sentence is needed")
    pers = personas.sort("id").rows(named=True)
    by_q: dict[str, list[dict]] = {}
    for r in identity_primes.iter_rows(named=True):
        by_q.setdefault(r["question_id"], []).append(r)
    rows = []
    for q in questions.iter_rows(named=True):
        qid, text = str(q["id"]), str(q["question"])
        rows.append({"question_id": qid, "issue": q["issue"], "question": text,
                     "condition": "none", "wording": "none", "prime": "", "message": text})
        primes = by_q.get(qid, [])
        if not {r["identity"] for r in primes} >= {"left", "right"}:
            raise ValueError(f"{source}: question {qid!r} needs a left and a right prime; "
                             "rebuild the file with python -m rlhf_audit.prompts")
        used = set()
        for r in primes:
            if r["identity"] not in ("left", "right"):
                raise ValueError(f"{source}: row {r['id']!r}: identity must be left or right, "
                                 f"got {r['identity']!r}")
            m = re.search(r"-p(\d+)$", str(r["id"]))
            if not m:
                raise ValueError(f"{source}: row {r['id']!r}: id must end in -p<wording index>")
            if not str(r["text"]).endswith(text):
                raise ValueError(f"{source}: row {r['id']!r}: text does not end with the "
                                 f"question {text!r}")
            k = int(m.group(1))
            used.add(k)
            rows.append({"question_id": qid, "issue": q["issue"], "question": text,
                         "condition": r["identity"], "wording": f"p{k}",
                         "prime": str(r["text"])[: -len(text)].strip(), "message": r["text"]})
        for k in sorted(used):
            p = pers[k % len(pers)]
            rows.append({"question_id": qid, "issue": q["issue"], "question": text,
                         "condition": "persona", "wording": f"persona:{p['id']}",
                         "prime": p["text"], "message": f"{p['text']} {text}"})
    return pl.DataFrame(rows, schema=PRIME_DESIGN_SCHEMA)


def cut_at(text: str, stop: str) -> str:
    """``text`` up to the first ``stop`` ("" = no cut)."""
    return text.split(stop, 1)[0] if stop else text


def _gen_rows(model, tokenizer, prompts, add_special, settings, steering, chat=True):
    gens = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        do_sample=settings.do_sample,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        add_special_tokens=add_special,
        steering=steering,
    )
    stop = "" if chat else settings.plain_stop
    return (
        [cut_at(g.text, stop) for g in gens],
        [len(g.token_ids) for g in gens],
        [g.finished for g in gens],
        [float(np.mean(g.token_logprobs)) if g.token_logprobs else float("nan") for g in gens],
    )


_GEN_SCHEMA = {
    "model": pl.String,
    "vector": pl.String,
    "alpha": pl.Float64,
    "question_id": pl.String,
    "sample": pl.Int32,
    "question": pl.String,
    "text": pl.String,
    "n_tokens": pl.Int32,
    "finished": pl.Boolean,
    "mean_logprob": pl.Float64,
}


def sweep(
    model,
    tokenizer,
    questions: Mapping[str, str] | Sequence[str],
    vectors: Mapping[str, tuple[int, np.ndarray]],
    alphas: Sequence[float],
    *,
    settings: SteeringSettings = _DEFAULTS,
    model_name: str = "model",
    chat: bool = False,
) -> pl.DataFrame:
    """Generate under every vector x alpha (both signs) for every question and sample.

    ``vectors`` maps a name to (layer, vector [d_model]) (see :func:`vectors_from_table`).
    Alpha 0 is generated once and its rows repeated under every vector name, so each
    vector's dose-response includes the same unsteered point. Sampling seeds depend only
    on (settings.seed, question, sample), so all alphas share random numbers.

    Returns one row per generation: model, vector, alpha, question_id, sample,
    question, text, n_tokens, finished (eos reached), mean_logprob (nats/token).
    """
    qs = _questions(questions)
    if not vectors:
        raise ValueError("no steering vectors given")
    ids = [q for q in qs for _ in range(settings.samples)]
    samples = [s for _ in qs for s in range(settings.samples)]
    prompts, add_special = format_prompts(
        tokenizer, [qs[q] for q in ids], chat, settings.plain_template
    )
    alist = signed_alphas(alphas)
    frames = []

    def frame(vec_name, alpha, cols):
        text, ntok, fin, mlp = cols
        return pl.DataFrame(
            {
                "model": model_name,
                "vector": vec_name,
                "alpha": float(alpha),
                "question_id": ids,
                "sample": samples,
                "question": [qs[q] for q in ids],
                "text": text,
                "n_tokens": ntok,
                "finished": fin,
                "mean_logprob": mlp,
            },
            schema=_GEN_SCHEMA,
        )

    base_cols = _gen_rows(model, tokenizer, prompts, add_special, settings, None, chat)
    for name, (layer, v) in vectors.items():
        for a in alist:
            if a == 0.0:
                cols = base_cols
            else:
                sv = SteeringVector(layer, v, a, settings.positions)
                cols = _gen_rows(model, tokenizer, prompts, add_special, settings, sv, chat)
            frames.append(frame(name, a, cols))
        log.info("%s: steered with %s at %d alphas", model_name, name, len(alist))
    return pl.concat(frames)


_PRIME_SCHEMA = {
    "model": pl.String,
    "condition": pl.String,
    "wording": pl.String,
    "prime": pl.String,
    "question_id": pl.String,
    "issue": pl.String,
    "sample": pl.Int32,
    "question": pl.String,
    "text": pl.String,
    "n_tokens": pl.Int32,
    "finished": pl.Boolean,
    "mean_logprob": pl.Float64,
}


def identity_prime_generations(
    model,
    tokenizer,
    design: pl.DataFrame,
    *,
    settings: SteeringSettings = _DEFAULTS,
    model_name: str = "model",
    chat: bool = False,
) -> pl.DataFrame:
    """Unsteered answers to every row of a :func:`prime_design` (the user's message is its
    ``message``). One row per generation: model, condition (none/left/right/persona),
    wording, prime, question_id, issue, sample, question (without prime), text, n_tokens,
    finished, mean_logprob."""
    missing = set(PRIME_DESIGN_SCHEMA) - set(design.columns)
    if missing:
        raise ValueError(f"prime design lacks columns {sorted(missing)} (see prime_design)")
    if design.height == 0:
        raise ValueError("prime design has no rows")
    rows = design.rows(named=True)
    rep = [r for r in rows for _ in range(settings.samples)]
    prompts, add_special = format_prompts(
        tokenizer, [r["message"] for r in rep], chat, settings.plain_template
    )
    text, ntok, fin, mlp = _gen_rows(model, tokenizer, prompts, add_special, settings, None, chat)
    return pl.DataFrame(
        {
            "model": model_name,
            "condition": [r["condition"] for r in rep],
            "wording": [r["wording"] for r in rep],
            "prime": [r["prime"] for r in rep],
            "question_id": [r["question_id"] for r in rep],
            "issue": [r["issue"] for r in rep],
            "sample": [s for _ in rows for s in range(settings.samples)],
            "question": [r["question"] for r in rep],
            "text": text,
            "n_tokens": ntok,
            "finished": fin,
            "mean_logprob": mlp,
        },
        schema=_PRIME_SCHEMA,
    )


def run_sweep(
    model,
    tokenizer,
    questions: pl.DataFrame,
    vectors: Mapping[str, tuple[int, np.ndarray]],
    *,
    settings: SteeringSettings = _DEFAULTS,
    model_name: str = "model",
    chat: bool = False,
) -> pl.DataFrame:
    """The steering sweep of one model; ``questions`` {id, issue, question}. Each row
    carries its question's issue (the bootstrap's unit)."""
    qs = dict(zip(questions["id"].to_list(), questions["question"].to_list(), strict=True))
    gens = sweep(model, tokenizer, qs, vectors, list(settings.alphas), settings=settings,
                 model_name=model_name, chat=chat)
    issues = questions.select(pl.col("id").alias("question_id"), pl.col("issue").cast(pl.String))
    return gens.join(issues, on="question_id", how="left", maintain_order="left")


def run_steering(
    model,
    tokenizer,
    questions: pl.DataFrame,
    vectors: Mapping[str, tuple[int, np.ndarray]],
    design: pl.DataFrame,
    *,
    settings: SteeringSettings = _DEFAULTS,
    model_name: str = "model",
    chat: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(steering sweep, identity-prime generations) of one model in one call (the workflow
    runs them as two rules)."""
    gens = run_sweep(model, tokenizer, questions, vectors, settings=settings,
                     model_name=model_name, chat=chat)
    primes = identity_prime_generations(model, tokenizer, design, settings=settings,
                                        model_name=model_name, chat=chat)
    return gens, primes
