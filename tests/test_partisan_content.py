"""Template tokens never enter a partisan number.

A planted pair (tests/planted_pair.py) whose residual stream is the token embedding,
with instruct variance along the partisan direction exactly 0.09 of base. Wrapping
the instruct prompts in a constant ~30-token preamble must leave every partisan
number unchanged when rows pool the statement only (the default), and must not
when they pool every token (the negative control that shows the test can fail).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from planted_pair import (
    PLANTED_RATIO,
    PREAMBLE_TEMPLATE,
    TEMPLATE,
    planted_embeddings,
    planted_model,
    planted_prompts,
    planted_tokenizer,
)
from threadpoolctl import threadpool_limits

from rlhf_audit import extract as ex
from rlhf_audit import partisan as P
from rlhf_audit.extract import ExtractSettings, extract_shard, read_vectors

SETTINGS = P.PartisanSettings(n_boot=100, methods=("diffmean",), n_perm=20)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def pair():
    E_base, E_inst, _ = planted_embeddings()
    prompts = pl.DataFrame(planted_prompts())
    return planted_model(E_base), planted_model(E_inst), prompts


def _vectors(model, tok, prompts, path, chat, pool_over):
    s = ExtractSettings(layers="all", dtype="float32", batch_size=16, chat_template=chat,
                        pool_over=pool_over)
    extract_shard(model, tok, prompts, s, path)
    meta, X = read_vectors(path, 0, "mean")
    order = {p: i for i, p in enumerate(meta["prompt_id"])}
    return X[[order[p] for p in prompts["id"]]]


def _headline(Xb, Xi, prompts):
    r = P.analyse_layers([(0, Xb, Xi), (1, Xb, Xi)], prompts["label"].to_list(),
                         prompts["issue"].to_list(), prompt_ids=prompts["id"].to_list(),
                         settings=SETTINGS)
    return P.headline(r, SETTINGS)


def test_constant_preamble_leaves_every_partisan_number_unchanged(pair, tmp_path):
    base, inst, prompts = pair
    no_tmpl = planted_tokenizer(None)
    lengths = [
        len(ex.tokenize_prompts(planted_tokenizer(t), ["we"], ExtractSettings(chat_template=True))[0])
        for t in (TEMPLATE, PREAMBLE_TEMPLATE)
    ]
    assert lengths[1] - lengths[0] >= 28  # the constant preamble
    Xb = _vectors(base, no_tmpl, prompts, tmp_path / "b.parquet", False, "content")
    runs = {}
    for name, template in (("plain", TEMPLATE), ("preamble", PREAMBLE_TEMPLATE)):
        Xi = _vectors(inst, planted_tokenizer(template), prompts, tmp_path / f"{name}.parquet",
                      True, "content")
        runs[name] = _headline(Xb, Xi, prompts)
    ratio = runs["plain"]["variance_ratio"]
    assert abs(ratio.value / PLANTED_RATIO - 1) < 0.1 and ratio.covers(PLANTED_RATIO), ratio
    assert runs["plain"]["cosine_base_instruct"].value > 0.95
    for key, e in runs["plain"].items():
        f = runs["preamble"][key]
        for a, b in ((e.value, f.value), (e.lo, f.lo), (e.hi, f.hi)):
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-9), (
                key, e, f)


def test_pooling_template_tokens_distorts_the_ratio(pair, tmp_path):
    # The negative control: the same preamble pooled in ("all") dilutes instruct's vectors.
    base, inst, prompts = pair
    Xb = _vectors(base, planted_tokenizer(None), prompts, tmp_path / "b.parquet", False, "all")
    Xi = _vectors(inst, planted_tokenizer(PREAMBLE_TEMPLATE), prompts, tmp_path / "i.parquet",
                  True, "all")
    ratio = _headline(Xb, Xi, prompts)["variance_ratio"]
    assert ratio.value < 0.5 * PLANTED_RATIO, ratio
