"""Activation steering, identity primes and partisanship scoring ("The Neutral Mask", claims 4-5).

Claim 4: steering with the SAE policy features moves the base model's output but
not the instruct model's (a causal disconnect), while steering along the
partisan direction itself still moves both. Claim 5: priming the user's
partisan identity brings partisan answers back in the instruct model.

Steering adds ``alpha * v`` to the output of decoder block ``layer`` (the
residual stream after that block; layer numbering as in :mod:`rlhf_audit.extract`).
Both models get the same absolute vectors (:func:`steering_vector_set`, built once
per pair): every vector has the same L2 norm, the base model's median per-token
residual norm at the layer over the content tokens (BOS excluded) of the steering
questions (:func:`residual_token_norm`), so ``alpha`` is one dose in units of "one
typical base residual" for both models. The vectors:

- ``direction``: the base model's partisan direction (left -> right);
- ``direction_instruct``: the instruct model's own partisan direction;
- ``feature``: the sum of the unit decoder rows of the SAE policy features (selected
  by a left-vs-right test), each oriented by its leaning so that it points right;
- nulls: ``random_direction_KK`` (isotropic random directions; the null of the two
  direction vectors) and ``random_features_KK`` (as many random non-policy SAE
  features, oriented by the sign of their left-right effect; the null of ``feature``).

Every generation gets two partisanship scores, both signed + = right, - = left:

- ``judge`` (primary): a judge's rating mapped to [-1, 1] (:mod:`rlhf_audit.judge`; an LM
  or the stance classifier of :mod:`rlhf_audit.stance`);
- ``projection``: the base model reads the generated text (on its own, with BOS,
  no prompt), its block-``layer`` activations are averaged over the text's tokens
  and projected on a partisan direction fitted on issues disjoint from the
  question's (cross-fitted over folds of the questions' issues).

Before any scorer reads a reply, the words that tell the two identity primes apart
("Democrat", "conservative", ...) are masked in every reply of every arm
(:func:`mask_identity_terms`), so a reply that echoes its prime cannot create a
prime effect. The analysis lives in :mod:`rlhf_audit.steering_analysis`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch

from rlhf_audit.lm.generation import _device, _length_batches, generate, padding_side, perplexity
from rlhf_audit.lm.hooks import SteeringVector, decoder_layers, steer

log = logging.getLogger(__name__)

DIRECTION_VECTORS = ("direction", "direction_instruct")
FEATURE_VECTORS = ("feature",)
NULL_FAMILIES = {"random_direction": DIRECTION_VECTORS, "random_features": FEATURE_VECTORS}
"""Null family -> the vectors it is the null of."""
VECTOR_KINDS = (*DIRECTION_VECTORS, *FEATURE_VECTORS)
"""The steering vectors under test (the nulls are families of numbered vectors)."""
MODEL_ROLES = ("base", "instruct")
SCORES = ("judge", "projection")
PRIMARY_SCORE = "judge"
PRIME_CONDITIONS = ("left", "none", "persona", "right")
NO_JUDGE = "no judge configured"


def vector_family(name: str) -> str:
    """``random_direction_03`` -> ``random_direction``; a vector under test is its own family."""
    for fam in NULL_FAMILIES:
        if re.fullmatch(fam + r"_\d+", name):
            return fam
    return name


def null_family_of(vector: str) -> str:
    """The null family a vector under test is compared with."""
    for fam, vecs in NULL_FAMILIES.items():
        if vector in vecs:
            return fam
    raise ValueError(f"{vector!r} has no null family (vectors under test: {VECTOR_KINDS})")


@dataclass(frozen=True)
class SteeringSettings:
    """Settings of the steering and identity-prime study (config key ``steering``)."""

    layer: int = 2
    """Block whose output is steered and read for the projection score (0-based)."""
    alphas: tuple[float, ...] = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
    """Steering strengths in units of the base model's typical residual norm; the negative of
    every value is added, so the sweep always covers both signs (0 = unsteered)."""
    positions: Literal["all", "generated"] = "all"
    """Where the vector is added: "all" = every prompt and generated position; "generated" =
    only positions whose output predicts a generated token (last prompt token onward)."""
    max_new_tokens: int = 48
    """Tokens generated per answer."""
    samples: int = 1
    """Answers per question and condition (sample index 0..samples-1)."""
    do_sample: bool = False
    """Sample (True) or decode greedily (False)."""
    temperature: float = 0.7
    """Sampling temperature (ignored when greedy)."""
    top_p: float = 0.95
    """Nucleus mass (ignored when greedy)."""
    batch_size: int = 16
    """Prompts per generation / scoring batch."""
    seed: int = 0
    """Seed of sampling (per prompt, shared across alphas and vectors: common random numbers),
    of the null vectors and of the bootstrap."""
    plain_template: str = "Question: {question}\nAnswer:"
    """Prompt for models used without a chat template (base models)."""
    plain_stop: str = "\nQuestion:"
    """A plain-template continuation is cut where it starts the next question (base models
    run on past their answer); "" keeps the whole continuation."""
    score_pooling: Literal["mean", "last"] = "mean"
    """Projection score pooling over the generated text's tokens (mean excludes BOS)."""
    n_random_directions: int = 10
    """Random directions in the null of the direction vectors."""
    n_random_feature_sets: int = 10
    """Random non-policy feature sets in the null of the feature vector."""
    degenerate_text_share: float = 0.5
    """A reply is degenerate when it is empty, or its repeated-4-gram share or its
    non-text share (whitespace tokens without a letter) exceeds this."""
    max_degenerate_rate: float = 0.2
    """Slopes use only the alphas (a window |alpha| <= a_max around 0) where the share of
    degenerate replies stays at or under this in both models."""
    projection_folds: int = 5
    """Folds of the questions' issues for the cross-fitted projection direction."""
    n_boot: int = 2000
    """Bootstrap replicates (issues resampled; wordings too for the primes)."""


# --------------------------------------------------------------------------- hooks


# --------------------------------------------------------------------------- vectors


def typical_residual_norm(X: np.ndarray) -> float:
    """Median L2 norm of activation rows ``X`` [n, d_model]: the layer's typical residual size."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"activations must be [n, d_model] with n > 0, got shape {X.shape}")
    return float(np.median(np.linalg.norm(X, axis=1)))


def scaled(v: np.ndarray, norm: float) -> np.ndarray:
    """``v`` rescaled to L2 norm ``norm``, float32 [d_model]."""
    v = np.asarray(v, dtype=np.float64).ravel()
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError("cannot scale a zero or non-finite vector")
    return (v / n * norm).astype(np.float32)


def feature_vector(w_dec_rows: np.ndarray, norm: float) -> np.ndarray:
    """Steering vector of SAE features: the sum of their unit decoder rows, scaled to ``norm``.

    ``w_dec_rows`` is one row of ``W_dec`` [d_model] or several [k, d_model]; each row is
    normalised first so every feature weighs the same.
    """
    W = np.atleast_2d(np.asarray(w_dec_rows, dtype=np.float64))
    nrm = np.linalg.norm(W, axis=1, keepdims=True)
    if (nrm == 0).any():
        raise ValueError("an SAE decoder row is all zeros")
    return scaled((W / nrm).sum(0), norm)


def random_vector(d_model: int, norm: float, seed: int = 0) -> np.ndarray:
    """A uniformly random direction [d_model] of L2 norm ``norm`` (Gaussian, then rescaled)."""
    return scaled(np.random.default_rng(seed).standard_normal(d_model), norm)


POLICY_FEATURE_COLUMNS = {"feature": pl.Int64, "selected": pl.Boolean, "effect_lr": pl.Float64,
                          "leaning": pl.Int8}
"""Columns of results/sae/{pair}/{sae}/policy_features.parquet the feature vector reads:
feature (SAE latent index), selected (passed the left-vs-right test), effect_lr (right minus
left on base) and leaning (+1 right, -1 left)."""


def _policy_table(pf: pl.DataFrame, source: str) -> pl.DataFrame:
    missing = set(POLICY_FEATURE_COLUMNS) - set(pf.columns)
    if missing:
        raise ValueError(
            f"{source}: policy-feature table lacks columns {sorted(missing)}; it needs "
            f"{sorted(POLICY_FEATURE_COLUMNS)} (rule select_policy_features)"
        )
    try:
        return pf.select(pl.col(c).cast(t, strict=True) for c, t in POLICY_FEATURE_COLUMNS.items())
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as err:
        raise ValueError(
            f"{source}: policy-feature columns must be feature (int), selected (bool), "
            f"effect_lr (float) and leaning (int8, +1 right / -1 left): {err}"
        ) from None


def policy_feature_rows(
    policy_features: pl.DataFrame,
    w_dec: np.ndarray,
    n_features: int,
    source: str = "policy features",
) -> tuple[np.ndarray, list[int], list[int]]:
    """Unit decoder rows of the strongest selected policy features, oriented to point right.

    The selected features are ranked by ``|effect_lr|`` (ties by index) and the first
    ``n_features`` kept; each unit row ``W_dec[f] / |W_dec[f]|`` is multiplied by the
    feature's ``leaning`` (+1 right, -1 left), so left-leaning features add their
    negative. Returns (rows [k, d_model], features, leanings); k = 0 when none is selected.
    """
    pf = _policy_table(policy_features, source)
    sel = pf.filter(pl.col("selected"))
    if sel.height and not sel["leaning"].is_in([-1, 1]).all():
        bad = sel.filter(~pl.col("leaning").is_in([-1, 1]))["feature"].head(5).to_list()
        raise ValueError(f"{source}: selected features {bad} have a leaning other than +1/-1")
    sel = sel.with_columns(pl.col("effect_lr").abs().alias("_abs")).sort(
        ["_abs", "feature"], descending=[True, False], nulls_last=True
    ).head(n_features)
    feats = sel["feature"].to_list()
    lean = sel["leaning"].to_list()
    W = np.asarray(w_dec, dtype=np.float64)
    if feats and max(feats) >= len(W):
        raise ValueError(f"{source}: feature {max(feats)} outside the SAE's {len(W)} latents")
    rows = W[feats] if feats else np.zeros((0, W.shape[1]))
    nrm = np.linalg.norm(rows, axis=1, keepdims=True)
    if (nrm == 0).any():
        raise ValueError(f"{source}: an SAE decoder row of features {feats} is all zeros")
    rows = rows / np.where(nrm == 0, 1, nrm) * np.asarray(lean, float)[:, None]
    return rows, feats, lean


def random_feature_rows(
    policy_features: pl.DataFrame,
    w_dec: np.ndarray,
    n_features: int,
    n_sets: int,
    seed: int = 0,
    source: str = "policy features",
) -> list[tuple[np.ndarray, list[int], list[int]]]:
    """``n_sets`` sets of ``n_features`` random non-policy features, built like the feature
    vector: unit decoder rows, each oriented by the sign of its ``effect_lr`` (0 or unknown:
    a random sign). Drawn from the features not selected (all latents of the SAE that the
    table does not mark selected). Returns a list of (rows, features, signs)."""
    pf = _policy_table(policy_features, source)
    W = np.asarray(w_dec, dtype=np.float64)
    selected = set(pf.filter(pl.col("selected"))["feature"].to_list())
    pool = np.array([f for f in range(len(W)) if f not in selected])
    if len(pool) < n_features or n_features < 1:
        raise ValueError(
            f"{source}: {len(pool)} non-policy features, fewer than the {n_features} a "
            "random feature set needs"
        )
    eff = dict(zip(pf["feature"].to_list(), pf["effect_lr"].to_list(), strict=True))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sets):
        feats = sorted(int(f) for f in rng.choice(pool, n_features, replace=False))
        signs = []
        for f in feats:
            e = eff.get(f)
            ok = e is not None and np.isfinite(e) and e != 0
            signs.append(int(np.sign(e)) if ok else int(rng.choice([-1, 1])))
        rows = W[feats] / np.linalg.norm(W[feats], axis=1, keepdims=True)
        out.append((rows * np.asarray(signs, float)[:, None], feats, signs))
    return out


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else float("nan")


VECTOR_TABLE_SCHEMA = {
    "vector": pl.String,
    "family": pl.String,
    "layer": pl.Int32,
    "norm": pl.Float64,
    "cos_partisan": pl.Float64,
    "features": pl.List(pl.Int64),
    "leanings": pl.List(pl.Int8),
    "values": pl.List(pl.Float32),
}
"""Columns of results/steering/{pair}/vectors.parquet (one row per steering vector)."""


def steering_vector_set(
    layer: int,
    norm: float,
    direction: np.ndarray,
    *,
    direction_instruct: np.ndarray | None = None,
    policy_features: pl.DataFrame | None = None,
    w_dec: np.ndarray | None = None,
    n_features: int = 3,
    n_random_directions: int = 10,
    n_random_feature_sets: int = 10,
    seed: int = 0,
    source: str = "policy features",
) -> pl.DataFrame:
    """Every steering vector of one pair at the same L2 norm ``norm`` (columns
    :data:`VECTOR_TABLE_SCHEMA`; ``cos_partisan`` = cosine with the base ``direction``).

    ``direction`` (and ``direction_instruct``) [d_model] must point left -> right. The
    feature vector and its random-feature null need ``policy_features`` and the SAE's
    ``w_dec`` [d_sae, d_model]; without them, or with no selected feature, they are left
    out (logged). Both models are steered with these same vectors.
    """
    if not np.isfinite(norm) or norm <= 0:
        raise ValueError(f"steering norm must be positive and finite, got {norm}")
    u = np.asarray(direction, np.float64).ravel()
    d = len(u)
    rows: list[dict] = []

    def add(name, fam, v, feats=(), lean=()):
        v = np.asarray(v, np.float64).ravel()
        if len(v) != d:
            raise ValueError(f"vector {name!r} has {len(v)} dims, the direction {d}")
        rows.append({"vector": name, "family": fam, "layer": layer, "norm": float(norm),
                     "cos_partisan": _cos(v, u), "features": list(feats),
                     "leanings": list(lean), "values": scaled(v, norm).tolist()})

    add("direction", "direction", u)
    if direction_instruct is not None:
        add("direction_instruct", "direction_instruct", direction_instruct)
    rng = np.random.default_rng((seed, 0x5EED))  # a stream of its own, not the plain seed's
    for k in range(n_random_directions):
        add(f"random_direction_{k:02d}", "random_direction", rng.standard_normal(d))
    if policy_features is not None and w_dec is not None:
        W = np.asarray(w_dec, np.float64)
        if W.shape[1] != d:
            raise ValueError(f"SAE decoder rows have {W.shape[1]} dims, the direction {d}")
        fr, feats, lean = policy_feature_rows(policy_features, W, n_features, source)
        if feats:
            add("feature", "feature", fr.sum(0), feats, lean)
            log.info("feature vector from features %s (leanings %s): cosine %.3f with the "
                     "partisan direction", feats, lean, rows[-1]["cos_partisan"])
            nulls = random_feature_rows(policy_features, W, len(feats), n_random_feature_sets,
                                        seed + 1, source)
            for k, (r, f, sg) in enumerate(nulls):
                add(f"random_features_{k:02d}", "random_features", r.sum(0), f, sg)
        else:
            log.warning("%s: no policy feature selected: no feature vector", source)
    return pl.DataFrame(rows, schema=VECTOR_TABLE_SCHEMA)


def vectors_from_table(table: pl.DataFrame) -> dict[str, tuple[int, np.ndarray]]:
    """{vector name: (layer, vector [d_model] float32)} from a :func:`steering_vector_set` table."""
    missing = {"vector", "layer", "values"} - set(table.columns)
    if missing:
        raise ValueError(f"steering vector table lacks columns {sorted(missing)}")
    return {r["vector"]: (int(r["layer"]), np.asarray(r["values"], np.float32))
            for r in table.iter_rows(named=True)}


@torch.inference_mode()
def residual_token_norm(model, tokenizer, texts: Sequence[str], layer: int,
                        batch_size: int = 16) -> float:
    """Median L2 norm of the block-``layer`` output over every content token of ``texts``
    (each text tokenised alone with special tokens; BOS excluded): the dose unit of both
    models, measured on the base model."""
    norms = _token_norms(model, tokenizer, list(texts), layer, batch_size)
    if not len(norms):
        raise ValueError("no content tokens to measure the residual norm on")
    return float(np.median(norms))


def signed_alphas(alphas: Sequence[float]) -> list[float]:
    """``alphas`` closed under negation, with 0, sorted: both signs of every strength."""
    vals = {0.0}
    for a in alphas:
        if not math.isfinite(a):
            raise ValueError(f"alpha must be finite, got {a}")
        vals.update((float(a), -float(a)))
    return sorted(v + 0.0 for v in vals)  # + 0.0 turns -0.0 into 0.0


# --------------------------------------------------------------------------- prompts


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


def identity_terms(design: pl.DataFrame) -> list[str]:
    """Words that tell the two sides' primes apart: in some left prime and no right prime,
    or the reverse (lower case, sorted), e.g. democrat, progressive, republican."""
    def words(cond):
        primes = design.filter(pl.col("condition") == cond)["prime"].to_list()
        return {w for p in primes for w in re.findall(r"[a-z]+", p.lower())}

    left, right = words("left"), words("right")
    return sorted((left - right) | (right - left))


IDENTITY_MASK = "someone"
"""What a masked identity word is replaced with."""


def mask_identity_terms(texts: Sequence[str], terms: Sequence[str]) -> list[str]:
    """Replace every whole-word (case-insensitive, plural -s too) occurrence of ``terms`` with
    :data:`IDENTITY_MASK`: applied to every reply of every arm before scoring, so echoing the
    prime's identity words carries no side. The terms' stance-bearing uses elsewhere (e.g.
    "right to bear arms") are masked in every arm alike."""
    if not terms:
        return [str(t) for t in texts]
    pat = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in sorted(terms, key=len,
                                                                        reverse=True))
                     + r")s?\b", re.IGNORECASE)
    return [pat.sub(IDENTITY_MASK, str(t)) for t in texts]


# --------------------------------------------------------------------------- generation


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
    settings: SteeringSettings = SteeringSettings(),
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
    settings: SteeringSettings = SteeringSettings(),
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


def run_steering(
    model,
    tokenizer,
    questions: pl.DataFrame,
    vectors: Mapping[str, tuple[int, np.ndarray]],
    design: pl.DataFrame,
    *,
    settings: SteeringSettings = SteeringSettings(),
    model_name: str = "model",
    chat: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(steering sweep, identity-prime generations) of one model; ``questions`` {id, issue,
    question}. The sweep carries the question's issue (the bootstrap's unit)."""
    qs = dict(zip(questions["id"].to_list(), questions["question"].to_list(), strict=True))
    gens = sweep(model, tokenizer, qs, vectors, list(settings.alphas), settings=settings,
                 model_name=model_name, chat=chat)
    issues = questions.select(pl.col("id").alias("question_id"), pl.col("issue").cast(pl.String))
    gens = gens.join(issues, on="question_id", how="left", maintain_order="left")
    primes = identity_prime_generations(model, tokenizer, design, settings=settings,
                                        model_name=model_name, chat=chat)
    return gens, primes


# --------------------------------------------------------------------------- scoring


class _Stop(Exception):
    """Raised from a hook once the wanted layer has run: the rest of the forward is skipped."""


def _captured_layer(model, tokenizer, texts, layer, batch_size):
    """Yield (text indices, block-``layer`` output [b, width, d] float, content mask [b, width])
    for texts tokenised alone with special tokens, left-padded; BOS is not content. Texts
    without a content token are skipped. The forward pass stops after block ``layer``."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range 0..{len(layers) - 1}")
    enc = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    bos = tokenizer.bos_token_id
    keep = []
    for e in enc:
        k = np.ones(len(e), dtype=bool)
        if len(e) and bos is not None and e[0] == bos:
            k[0] = False  # BOS is the same for every text: it carries no content
        keep.append(k)
    todo = [i for i in range(len(texts)) if keep[i].any()]
    captured: dict = {}

    def grab(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    dev = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    handle = layers[layer].register_forward_hook(grab)
    try:
        for batch in _length_batches([len(enc[i]) for i in todo], batch_size):
            rows = [todo[b] for b in batch]
            width = max(len(enc[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            sel = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, i in enumerate(rows):
                off = width - len(enc[i])
                ids[r, off:] = torch.tensor(enc[i])
                mask[r, off:] = 1
                sel[r, off:] = torch.from_numpy(keep[i])
            ids, mask = ids.to(dev), mask.to(dev)
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            with contextlib.suppress(_Stop):
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            yield rows, captured.pop("h").float().cpu(), sel
    finally:
        handle.remove()


@torch.inference_mode()
def layer_activations(
    model,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    pooling: Literal["mean", "last"] = "mean",
    batch_size: int = 16,
) -> np.ndarray:
    """Block-``layer`` output pooled over each text's tokens: [n, d_model] float32.

    Each text is tokenised on its own with special tokens (BOS). "mean" averages the
    non-BOS tokens; "last" takes the last token. A text with no non-BOS token gives NaN.
    The forward pass stops after block ``layer``.
    """
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    texts = list(texts)
    out = np.full((len(texts), model.config.hidden_size), np.nan, dtype=np.float32)
    with padding_side(tokenizer, "left"):
        for rows, h, sel in _captured_layer(model, tokenizer, texts, layer, batch_size):
            if pooling == "mean":
                w = sel.float()
                pooled = (h * w[..., None]).sum(1) / w.sum(1, keepdim=True)
            else:
                pooled = h[:, -1]
            out[rows] = pooled.numpy()
    return out


def _token_norms(model, tokenizer, texts, layer, batch_size) -> np.ndarray:
    parts = []
    with padding_side(tokenizer, "left"):
        for _, h, sel in _captured_layer(model, tokenizer, texts, layer, batch_size):
            parts.append(h.norm(dim=-1)[sel].numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


def projection_score(
    base_model,
    tokenizer,
    texts: Sequence[str],
    direction: np.ndarray,
    layer: int,
    *,
    center: np.ndarray | None = None,
    pooling: Literal["mean", "last"] = "mean",
    batch_size: int = 16,
) -> np.ndarray:
    """Partisanship of each text read off the BASE model: [n] float64, + = right, - = left.

    ``(pooled block-layer activation - center) . direction / |direction|`` where the
    activation is pooled over the text's tokens (:func:`layer_activations`) and
    ``direction`` [d_model] points from left to right (e.g. right-mean minus left-mean).
    Units: residual-stream units along the unit direction. NaN for an empty text.
    """
    u = np.asarray(direction, dtype=np.float64).ravel()
    nrm = np.linalg.norm(u)
    if nrm == 0 or not np.isfinite(nrm):
        raise ValueError("partisan direction is zero or not finite")
    if len(u) != base_model.config.hidden_size:
        raise ValueError(
            f"direction has {len(u)} dims, the model's residual stream "
            f"{base_model.config.hidden_size}"
        )
    with padding_side(tokenizer, "left"):
        acts = layer_activations(base_model, tokenizer, texts, layer, pooling, batch_size)
    acts = acts.astype(np.float64)
    if center is not None:
        acts = acts - np.asarray(center, dtype=np.float64).ravel()
    return acts @ (u / nrm)


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams / word n-grams in ``text`` (1 = no repeats); NaN if under n words."""
    w = _words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeat_n(text: str, n: int = 4) -> float:
    """Share of word n-grams that already occurred earlier in ``text`` (0 = none); NaN if short."""
    w = _words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return float("nan")
    seen: set = set()
    rep = 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def non_text_share(text: str) -> float:
    """Share of whitespace-separated tokens without a letter (digits, symbols, punctuation
    runs); NaN for a text without tokens."""
    toks = str(text).split()
    if not toks:
        return float("nan")
    return sum(not any(c.isalpha() for c in t) for t in toks) / len(toks)


def is_degenerate(text: str, threshold: float = SteeringSettings.degenerate_text_share) -> bool:
    """Empty, or its repeated-4-gram share (:func:`repeat_n`) or non-text share
    (:func:`non_text_share`) above ``threshold``. Texts under 4 words have repeat share 0."""
    if not str(text).strip():
        return True
    rep = repeat_n(text, 4)
    rep = 0.0 if math.isnan(rep) else rep
    return rep > threshold or non_text_share(text) > threshold


def crossfit_directions(
    meta: pl.DataFrame,
    X: np.ndarray,
    question_issues: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Partisan directions for the projection scorer, disjoint in issues from the questions.

    The questions' issues are split into ``n_folds`` folds (seeded); for the questions of
    fold k the direction is mean(right) - mean(left) of the statements ``X`` [n, d_model]
    (``meta`` columns label, issue) of every issue outside fold k, and the centre the
    midpoint of the two means. Returns {question issue: (direction, centre)}.
    """
    for c in ("label", "issue"):
        if c not in meta.columns:
            raise ValueError(f"activation metadata lacks column {c!r} (columns: {meta.columns})")
    issues = sorted(set(map(str, question_issues)))
    if not issues:
        raise ValueError("no question issues given")
    k = max(1, min(n_folds, len(issues)))
    order = np.random.default_rng(seed).permutation(len(issues))
    fold = {issues[i]: j % k for j, i in enumerate(order)}
    lab = meta["label"].to_numpy()
    iss = meta["issue"].cast(pl.String).to_numpy()
    X = np.asarray(X, np.float64)
    out = {}
    for f in range(k):
        held = {i for i, g in fold.items() if g == f}
        train = ~np.isin(iss, list(held))
        r, left = train & (lab == "right"), train & (lab == "left")
        if not r.any() or not left.any():
            raise ValueError(
                f"no left or right statements outside the issues {sorted(held)}: the "
                "projection direction needs statements of issues the questions do not ask about"
            )
        mr, ml = X[r].mean(0), X[left].mean(0)
        for i in held:
            out[i] = (mr - ml, (mr + ml) / 2)
    return out


PROJECTION_COLUMNS = ("projection", "perplexity")
JUDGE_COLUMNS = ("judge", "judge_ok", "judge_error", "judge_reply")


def score_projection(
    df: pl.DataFrame,
    base_model,
    base_tokenizer,
    directions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    layer: int,
    *,
    terms: Sequence[str] = (),
    settings: SteeringSettings = SteeringSettings(),
) -> pl.DataFrame:
    """Projection score and perplexity of every reply (columns :data:`PROJECTION_COLUMNS`, in
    row order). ``directions`` maps each row's ``issue`` to (direction, centre) fitted on
    other issues (:func:`crossfit_directions`); replies are masked (:func:`mask_identity_terms`)
    first. projection = (pooled base activation - centre) . unit direction (+ = right);
    perplexity is under the unsteered base model."""
    for c in ("text", "issue"):
        if c not in df.columns:
            raise ValueError(f"generations table has no {c!r} column (columns: {df.columns})")
    texts = mask_identity_terms(df["text"].to_list(), terms)
    issues = df["issue"].cast(pl.String).to_list()
    missing = sorted(set(issues) - set(directions))
    if missing:
        raise ValueError(f"no projection direction for issues {missing[:5]}")
    acts = layer_activations(base_model, base_tokenizer, texts, layer, settings.score_pooling,
                             settings.batch_size).astype(np.float64)
    proj = np.full(len(texts), np.nan)
    for i in set(issues):
        rows = np.array([k for k, x in enumerate(issues) if x == i])
        u, c = directions[i]
        u = np.asarray(u, np.float64)
        proj[rows] = (acts[rows] - c) @ (u / np.linalg.norm(u))
    ppl = perplexity(base_model, base_tokenizer, texts, batch_size=settings.batch_size)
    return pl.DataFrame({"projection": proj, "perplexity": np.asarray(ppl, float)},
                        schema={"projection": pl.Float64, "perplexity": pl.Float64})


def score_judge(df: pl.DataFrame, judge, *, terms: Sequence[str] = ()) -> pl.DataFrame:
    """The judge's score of every reply (columns :data:`JUDGE_COLUMNS`, in row order): judge
    in [-1, 1] (null when it failed), judge_ok, judge_error, judge_reply. Replies are masked
    (:func:`mask_identity_terms`) first. ``judge`` has ``rate(texts, questions)``; None
    gives every row the error :data:`NO_JUDGE`. Failures stay as rows (never dropped)."""
    if "text" not in df.columns:
        raise ValueError(f"generations table has no 'text' column (columns: {df.columns})")
    texts = mask_identity_terms(df["text"].to_list(), terms)
    schema = {"judge": pl.Float64, "judge_ok": pl.Boolean, "judge_error": pl.String,
              "judge_reply": pl.String}
    if judge is None:
        return pl.DataFrame({"judge": [None] * len(texts), "judge_ok": [False] * len(texts),
                             "judge_error": [NO_JUDGE] * len(texts),
                             "judge_reply": [None] * len(texts)}, schema=schema)
    questions = df["question"].to_list() if "question" in df.columns else None
    rated = judge.rate(texts, questions)
    if rated.height != len(texts):
        raise ValueError(f"judge returned {rated.height} ratings for {len(texts)} texts")
    n_fail = int((~rated["judge_ok"]).sum())
    if n_fail:
        log.warning("judge failed on %d of %d texts (kept as rows with a null score and "
                    "reported per cell)", n_fail, len(texts))
    return rated.select(pl.col("judge_score").alias("judge"), "judge_ok", "judge_error",
                        "judge_reply").cast(schema)


def _headline_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    null_of = {"direction": "random directions", "direction_instruct": "random directions",
               "feature": "random non-policy feature sets"}
    for s in SCORES:
        for role in MODEL_ROLES:
            for v in VECTOR_KINDS:
                keys[f"steering_slope_{role}_{v}_{s}"] = (
                    f"{role} model: slope of the {s} partisanship score per unit alpha when "
                    f"steering with the {v} vector (alpha in the base model's typical residual "
                    "norm; fit over the alphas where neither model degenerates)"
                )
                keys[f"steering_slope_vs_null_{role}_{v}_{s}"] = (
                    f"{role} model: {v}-steering slope of the {s} score minus the mean slope of "
                    f"its null ({null_of[v]}) (> 0: moves output beyond a random vector)"
                )
            keys[f"steering_slope_{role}_random_{s}"] = (
                f"{role} model: mean {s}-score slope over the random-direction null vectors"
            )
            keys[f"steering_slope_{role}_random_features_{s}"] = (
                f"{role} model: mean {s}-score slope over the random-feature-set null vectors"
            )
        for v in VECTOR_KINDS:
            keys[f"disconnect_ratio_{v}_{s}"] = (
                f"{v} vector, {s} score: instruct minus base steering slope (name kept from "
                "the former instruct/base ratio; now a difference, < 0: instruct moves less)"
            )
            keys[f"disconnect_null_gap_{v}_{s}"] = (
                f"{v} vector, {s} score: instruct-minus-base slope difference minus the mean "
                f"of that difference over its null ({null_of[v]}) (< 0: a disconnect beyond "
                "what a random vector shows)"
            )
        keys[f"disconnect_gap_{s}"] = (
            f"{s} score: instruct-minus-base slope difference of the direction vector minus "
            "that of the feature vector (> 0: instruct follows the direction more than the "
            "features, relative to base)"
        )
        for role in MODEL_ROLES:
            keys[f"prime_effect_{role}_{s}"] = (
                f"{role} model: mean {s} score of right-primed minus left-primed answers, "
                "over every prime wording (questions and wordings resampled)"
            )
            keys[f"prime_cohens_d_{role}_{s}"] = (
                f"{role} model: Cohen's d of right- vs left-primed {s} scores"
            )
            keys[f"prime_persona_shift_{role}_{s}"] = (
                f"{role} model: mean {s} score under a non-partisan persona prime minus no "
                "prime (the control: about 0)"
            )
    keys["judge_failure_rate"] = (
        "share of generations whose judge reply could not be scored (all cells)"
    )
    keys["judge_failure_rate_max_cell"] = (
        "largest judge failure share over the (model, vector, alpha) and (model, prime "
        "condition) cells (table judge_failures.parquet); n = cells"
    )
    keys["feature_vector_cos_partisan"] = (
        "cosine of the feature steering vector with the base partisan direction; n = features"
    )
    keys["stance_classifier_auc"] = (
        "issue-held-out AUC (right vs left statements) of the stance-classifier judge"
    )
    return keys


HEADLINE_KEYS: dict[str, str] = _headline_keys()
"""Stable headline keys of the steering study (per model pair) and what each means."""


__all__ = [
    "DIRECTION_VECTORS",
    "FEATURE_VECTORS",
    "HEADLINE_KEYS",
    "IDENTITY_MASK",
    "MODEL_ROLES",
    "NO_JUDGE",
    "NULL_FAMILIES",
    "POLICY_FEATURE_COLUMNS",
    "PRIMARY_SCORE",
    "PRIME_CONDITIONS",
    "SCORES",
    "VECTOR_KINDS",
    "SteeringSettings",
    "SteeringVector",
    "crossfit_directions",
    "cut_at",
    "decoder_layers",
    "distinct_n",
    "feature_vector",
    "format_prompts",
    "identity_prime_generations",
    "identity_terms",
    "is_degenerate",
    "layer_activations",
    "mask_identity_terms",
    "non_text_share",
    "null_family_of",
    "policy_feature_rows",
    "prime_design",
    "projection_score",
    "random_feature_rows",
    "random_vector",
    "repeat_n",
    "residual_token_norm",
    "run_steering",
    "scaled",
    "score_judge",
    "score_projection",
    "signed_alphas",
    "steer",
    "steering_vector_set",
    "sweep",
    "typical_residual_norm",
    "vector_family",
    "vectors_from_table",
]
