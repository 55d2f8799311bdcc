"""Do the model-specific latents do anything? Steer both models with their decoders.

The strongest instruct_only and base_only latents after Latent Scaling (highest
relative-norm distance from 0.5, then firing rate) give steering vectors: the
instruct decoder of the first, the base decoder of the second, plus ``n_random`` seeded
random directions as the control, each scaled to the model's mean residual norm at the
layer (so alpha is in units of one typical activation, as in the steering study) and,
when a partisan direction exists, oriented toward it (+ = right): the random ones too,
or flipping only the latents would give them a head start the control lacks (the
summary reports each latent's slope minus the random directions' mean slope). The
orienting direction is the one the latents were matched to (summary.json's
``partisan_direction``, fitted on the paired file's statements by
:func:`rlhf_audit.diffing.inputs.context_direction`): the space the decoders live in.

Both models are steered with the same vectors through
:func:`rlhf_audit.steering.generate.sweep`, and every generation is scored with the
steering study's scorer (:func:`rlhf_audit.steering.score.score_projection`, with its
projection_folds and seed): the pair's base-role model reads the text, and its pooled
activation is projected on a partisan direction cross-fitted over issues (none of the
question's issue), fitted on the same model's reading of the partisan study's labelled
statements with the same pooling (:func:`scorer_directions`). A direction from another
reading (the partisan study reads an instruct-role model inside its template, the scorer
reads bare text) would score along an axis the scorer's activations do not use. Unlike
the steering study no identity words are masked: there are no identity primes here
(replies naming a party count).
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from rlhf_audit.steering.generate import sweep
from rlhf_audit.steering.score import crossfit_directions, score_projection
from rlhf_audit.steering.settings import SteeringSettings
from rlhf_audit.steering.vectors import random_vector, scaled

log = logging.getLogger(__name__)


def pick_latents(latents: pl.DataFrame) -> dict[str, tuple[int, np.ndarray]]:
    """{"instruct_only": (latent, instruct decoder), "base_only": (latent, base decoder)} for
    the classes that have a latent after Latent Scaling."""
    out = {}
    for cls, col in (("instruct_only", "decoder_instruct"), ("base_only", "decoder_base")):
        sel = latents.filter(pl.col("class_scaled") == cls).with_columns(
            (pl.col("relative_norm") - 0.5).abs().alias("_spec")).sort(
            ["_spec", "firing_rate"], descending=True)
        if sel.height:
            out[cls] = (int(sel["latent"][0]), np.asarray(sel[col][0], np.float32))
    return out


def steering_vectors(latents: pl.DataFrame, layer: int, norm: float,
                     direction: np.ndarray | None, seed: int = 0, n_random: int = 5) -> dict:
    """name -> (layer, vector) for :func:`rlhf_audit.steering.generate.sweep` (the picked
    latents and ``random_1`` .. ``random_{n_random}``), and name -> latent (-1: random)."""
    if n_random < 1:
        raise ValueError(f"diffing.steer.n_random={n_random}: the latents need at least one "
                         "random direction as their control")
    picked = [(name, j, v) for name, (j, v) in pick_latents(latents).items()]
    d = latents.schema["decoder_base"].size
    picked += [(f"random_{r + 1}", -1, random_vector(d, 1.0, seed + r))
               for r in range(n_random)]
    vecs, ids = {}, {}
    for name, j, v in picked:
        if direction is not None and float(v @ direction) < 0:
            v = -v
        vecs[name] = (layer, scaled(v, norm))
        ids[name] = j
    return {"vectors": vecs, "latents": ids}


def scorer_directions(scorer, prompts: pl.DataFrame, question_issues, layer: int, *,
                      settings: SteeringSettings, n_folds: int = 5, seed: int = 0,
                      batch_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{question issue: (direction, centre)} for the projection scorer, or None.

    The scorer (the pair's base-role model and its tokenizer) reads every left and right
    statement of ``prompts`` (columns id, text, label, issue) as it reads a generation
    (bare text, pooled as ``settings.score_pooling``); the directions are cross-fitted over
    issues as the steering study's (:func:`rlhf_audit.steering.score.crossfit_directions`,
    ``n_folds`` and ``seed`` its projection_folds and seed), a statement without an issue
    being its own cluster. None when fewer than :data:`rlhf_audit.diffing.inputs.
    MIN_PER_SIDE` statements have either side (the scores stay null)."""
    from rlhf_audit.diffing.inputs import MIN_PER_SIDE
    from rlhf_audit.diffing.paired import cluster_of
    from rlhf_audit.steering.activations import layer_activations

    for c in ("id", "text", "label", "issue"):
        if c not in prompts.columns:
            raise ValueError(f"diffing prompts lack column {c!r} (columns: {prompts.columns})")
    part = prompts.filter(pl.col("label").is_in(["left", "right"]))
    n_right = part.filter(pl.col("label") == "right").height
    if min(n_right, part.height - n_right) < MIN_PER_SIDE:
        log.warning("%d right and %d left statements: the steering projection scores stay "
                    "null", n_right, part.height - n_right)
        return None
    X = layer_activations(scorer[0], scorer[1], part["text"].to_list(), layer,
                          settings.score_pooling, batch_size)
    meta = pl.DataFrame({  # a statement without an issue: its own cluster, named apart
        "label": part["label"],
        "issue": [s if s else cluster_of(str(i), None) for i, s in
                  zip(part["id"].to_list(), part["issue"].to_list(), strict=True)]})
    return crossfit_directions(meta, X, question_issues, n_folds, seed)


def steer_and_score(model, tok, chat: bool, role: str, scorer, questions: dict[str, str],
                    issues: dict[str, str], vectors: dict, alphas: list[float], layer: int,
                    directions: dict | None, settings: SteeringSettings) -> pl.DataFrame:
    """Generations of one model under every vector x alpha, with their projection score
    and perplexity under the scorer.

    ``scorer``: (base model, tokenizer) that reads the texts; ``issues``: question id ->
    issue; ``directions``: :func:`scorer_directions` (None: null scores).
    """
    gens = sweep(model, tok, questions, vectors, alphas, settings=settings, model_name=role,
                 chat=chat)
    if directions is None:
        return gens.with_columns(pl.lit(None, pl.Float64).alias("projection"),
                                 pl.lit(None, pl.Float64).alias("perplexity"))
    with_issue = gens.with_columns(pl.col("question_id").replace_strict(
        issues, return_dtype=pl.String).alias("issue"))
    scores = score_projection(with_issue, scorer[0], scorer[1], directions, layer,
                              settings=settings)
    return gens.with_columns(scores["projection"].fill_nan(None), scores["perplexity"])


def steer_pair(*, latents, paired, summary, questions, prompts, models: dict, steer: dict,
               out, provenance: dict | None = None) -> pl.DataFrame:
    """Rule steer_diffing_latents: load both models, steer, score, write ``out``.

    ``summary``: analyse_diffing's summary.json (its ``partisan_direction`` orients the
    vectors); ``prompts``: the labelled statements (normalised table, or its path) the
    scorer's directions are fitted on."""
    import json
    from pathlib import Path

    from rlhf_audit.diffing.paired import paired_info
    from rlhf_audit.io import write_table
    from rlhf_audit.lm.loader import load_causal_lm

    layer = steer["layer"]
    # only the candidates' rows: the table holds every latent's two decoders
    lat = pl.scan_parquet(latents).filter(
        pl.col("class_scaled").is_in(["instruct_only", "base_only"])).collect()
    saved = json.loads(Path(summary).read_text()).get("partisan_direction") or {}
    if "direction" not in saved:
        raise ValueError(f"{summary} has no partisan_direction.direction (written before "
                         "the direction was fitted on the paired file): re-run analyse_diffing")
    direction = None if saved["direction"] is None else np.asarray(saved["direction"],
                                                                    np.float64)
    q = pl.read_ndjson(questions).head(steer["n_questions"])
    for c in ("id", "question", "issue"):
        if c not in q.columns:
            raise ValueError(f"{questions}: no {c!r} field (fields: {q.columns}); each "
                             "question needs id, issue and question")
    if q["issue"].null_count():
        raise ValueError(f"{questions}: {q['issue'].null_count()} question(s) without an "
                         "issue; the projection scorer holds each question's issue out")
    qs = dict(zip(q["id"].to_list(), q["question"].to_list(), strict=True))
    issues = dict(zip(q["id"].to_list(), q["issue"].cast(pl.String).to_list(), strict=True))
    statements = prompts if isinstance(prompts, pl.DataFrame) else pl.read_parquet(prompts)
    info = paired_info(paired)
    settings = SteeringSettings(layer=layer, max_new_tokens=steer["max_new_tokens"],
                                seed=steer["seed"], batch_size=max(1, len(qs)))
    loaded = {}
    for role in ("base", "instruct"):
        m = models[role]
        model, tok = load_causal_lm(m["spec"], device=m["device"], dtype=m["dtype"])
        loaded[role] = (model, tok, m["chat"])
    scorer = loaded["base"][:2]
    directions = scorer_directions(scorer, statements, sorted(set(issues.values())), layer,
                                   settings=settings, n_folds=steer.get("projection_folds", 5),
                                   seed=steer.get("score_seed", 0))
    rows = []
    for role in ("base", "instruct"):
        v = steering_vectors(lat, layer, info[f"mean_norm_{role}"], direction, steer["seed"],
                             steer["n_random"])
        model, tok, chat = loaded[role]
        g = steer_and_score(model, tok, chat, role, scorer, qs, issues, v["vectors"],
                            list(steer["alphas"]), layer, directions, settings)
        rows.append(g.with_columns(pl.col("vector").replace_strict(
            v["latents"], default=-1, return_dtype=pl.Int32).alias("latent")))
    table = pl.concat(rows)
    write_table(table, out, provenance)
    log.info("steered %d generations", table.height)
    return table
