"""One-call settings of the rules (``from_params``) and the library pieces that replaced
logic in scripts: the judge's settings, the partisan direction lookup, shard rows put back
in prompt order and the model shape the activation manifest records."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_audit.extract.manifest import model_shape
from rlhf_audit.extract.read import read_vectors_in_order
from rlhf_audit.extract.settings import ExtractSettings
from rlhf_audit.params import settings_from_params
from rlhf_audit.partisan import PartisanSettings
from rlhf_audit.sae.train import SAESettings
from rlhf_audit.stance import StanceSettings
from rlhf_audit.steering.judging import judge_settings
from rlhf_audit.steering.settings import SteeringSettings
from rlhf_audit.steering.vectors import partisan_direction

# The params dicts as workflow/rules/common.smk builds them for each steering rule.
STEERING_PARAMS = {
    "generate_steering": {"layer": 3, "alphas": [-1.0, 0.5], "positions": "generated",
                          "max_new_tokens": 7, "samples": 2, "do_sample": True,
                          "temperature": 0.9, "seed": 5, "n_questions": 4},
    "generate_primes": {"max_new_tokens": 7, "samples": 2, "do_sample": True,
                        "temperature": 0.9, "seed": 5, "n_prime_questions": 6},
    "build_steering_vectors": {"layer": 3, "n_questions": 4, "seed": 5, "n_sae_features": 2,
                               "n_random_directions": 3, "n_random_feature_sets": 4,
                               "method": "diffmean", "sae_spec": None},
    "score_steering": {"layer": 3, "projection_folds": 2, "seed": 5},
    "analyse_steering": {"n_boot": 17, "seed": 5, "degenerate_text_share": 0.3,
                         "max_degenerate_rate": 0.1},
}


@pytest.mark.parametrize("rule", sorted(STEERING_PARAMS))
def test_steering_settings_take_every_field_the_rule_passes(rule):
    p = STEERING_PARAMS[rule]
    s = SteeringSettings.from_params(p)
    names = {f.name for f in fields(SteeringSettings)}
    for k, v in p.items():
        if k in names:
            assert getattr(s, k) == (tuple(v) if isinstance(v, list) else v), k
    untouched = names - set(p)
    assert all(getattr(s, k) == getattr(SteeringSettings(), k) for k in untouched)


def test_an_unknown_params_key_is_an_error_naming_it():
    with pytest.raises(KeyError, match="max_new_tokns"):
        SteeringSettings.from_params({"layer": 1, "max_new_tokns": 3})
    with pytest.raises(KeyError, match="n_perms"):
        PartisanSettings.from_params({"n_perms": 3})


def test_settings_from_params_turns_lists_into_tuples_and_takes_extras():
    p = PartisanSettings.from_params({"methods": ["diffmean"], "headline_method": "diffmean",
                                      "n_boot": 9})
    assert p.methods == ("diffmean",) and p.n_boot == 9
    s = SAESettings.from_params({"layer": 1, "d_sae": 64, "k": 4, "training_tokens": 10,
                                 "seed": 2}, n_threads=3, model_name="m")
    assert (s.layer, s.d_sae, s.k, s.n_threads, s.model_name) == (1, 64, 4, 3, "m")
    st = StanceSettings.from_params({"dataset": "partisan", "ngram_max": 1, "min_df": 3,
                                     "C": 2.0, "n_boot": 11, "seed": 4})
    assert (st.ngram_max, st.min_df, st.C, st.n_boot, st.seed) == (1, 3, 2.0, 11, 4)
    assert settings_from_params(StanceSettings, {"seed": 1}, seed=8).seed == 8


def test_extract_settings_add_the_token_position_only_with_token_layers():
    base = {"layers": [0, 2], "positions": ["last", "mean"], "token_layers": [],
            "dtype": "float16", "max_length": 64, "batch_size": 4, "chat_template": False,
            "pool_over": "content", "compute_dtype": "float32"}
    assert ExtractSettings.from_params(base).positions == ("last", "mean")
    with_tokens = ExtractSettings.from_params({**base, "token_layers": [2]})
    assert with_tokens.positions == ("last", "mean", "token")
    assert with_tokens.token_layers == (2,) and base["positions"] == ["last", "mean"]


def test_judge_settings_from_the_config_section():
    from rlhf_audit.judge import JudgeSettings

    j = judge_settings({"kind": "openai", "model": "judge-7b", "method": "generate",
                        "max_new_tokens": 9, "timeout_s": 12, "max_retries": 1,
                        "api_key_env": "KEY", "base_url": "http://h:1/v1"})
    assert (j.kind, j.model, j.api_model, j.base_url, j.timeout_s, j.max_retries,
            j.api_key_env, j.max_new_tokens) == ("openai", "judge-7b", "judge-7b",
                                                 "http://h:1/v1", 12, 1, "KEY", 9)
    h = judge_settings({"kind": "hf", "model": "j", "method": "logits", "max_new_tokens": 8,
                        "timeout_s": 60, "max_retries": 3, "api_key_env": "OPENAI_API_KEY",
                        "spec": {"path": "x"}})
    assert h.api_model == "" and h.method == "logits" and h.base_url == JudgeSettings.base_url
    s = judge_settings({"kind": "stance_classifier", "dataset": "partisan", "ngram_max": 2,
                        "min_df": 2, "C": 4.0}, "results/c.json")
    assert s.kind == "stance_classifier" and s.classifier_path == "results/c.json"


def test_partisan_direction_picks_one_row_or_names_what_is_missing():
    t = pl.DataFrame({"model": ["base", "instruct", "base"], "layer": [1, 1, 2],
                      "method": ["diffmean"] * 3,
                      "direction": [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]})
    assert partisan_direction(t, "instruct", 1, "diffmean").tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="no base 'logreg' direction at layer 1"):
        partisan_direction(t, "base", 1, "logreg", "d.parquet")
    with pytest.raises(ValueError, match="lacks columns"):
        partisan_direction(t.drop("method"), "base", 1, "diffmean")


def _shard(path, ids, X, layer=1, position="mean"):
    n, d = X.shape
    t = pa.table({
        "prompt_id": pa.array(ids, pa.string()), "label": pa.array([None] * n, pa.string()),
        "issue": pa.array([None] * n, pa.string()), "layer": pa.array([layer] * n, pa.int16()),
        "position": pa.array([position] * n, pa.string()),
        "token_index": pa.array([-1] * n, pa.int32()), "token_id": pa.array([-1] * n, pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), d)})
    pq.write_table(t, path)


def test_shard_rows_come_back_in_prompt_order(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"p{i:03d}" for i in range(40)]
    X = rng.standard_normal((40, 8)).astype(np.float32)
    perm = rng.permutation(40)  # shards store length order, not prompt order
    _shard(tmp_path / "shard-00000.parquet", [ids[i] for i in perm[:25]], X[perm[:25]])
    _shard(tmp_path / "shard-00001.parquet", [ids[i] for i in perm[25:]], X[perm[25:]])
    got = read_vectors_in_order(tmp_path, 1, "mean", ids)
    np.testing.assert_array_equal(got, X)
    with pytest.raises(ValueError, match="base activations cover 40 of 41 prompts"):
        read_vectors_in_order(tmp_path, 1, "mean", [*ids, "p999"], "base activations")


def test_model_shape_reads_a_local_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 4,
                                                      "hidden_size": 192}))
    assert model_shape({"path": str(tmp_path)}) == (4, 192)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 192}))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        model_shape({"path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_shape({"path": str(tmp_path / "missing")})


def test_a_model_in_both_roles_is_read_with_one_template_in_every_study():
    """An SFT checkpoint that is the instruct model of (base, sft) and the base of (sft,
    rlhf): extraction, the SAE scan, steering and diffing generation must all wrap its
    prompts alike (before, the scan and the generations followed the pair's role and
    extraction the model's, so one model was read two ways)."""
    from types import SimpleNamespace as W

    cfg = {"models": {m: {"path": m} for m in ("base", "sft", "rlhf")},
           "model_pairs": {"sft_step": {"base": "base", "instruct": "sft"},
                           "rl_step": {"base": "sft", "instruct": "rlhf"}},
           "extract": {"chat_template": {"base": False, "instruct": True}, "layers": "all",
                       "positions": ["mean"], "dtype": "float32", "max_length": 32,
                       "batch_size": 4, "pool_over": "content"},
           "sae": {"saes": {}, "spliced_loss": True}, "device": "cpu", "dtype": "float32"}
    from common_smk import smk_functions

    ns = smk_functions(cfg, ["model_spec", "pair_models", "model_role", "model_chat",
                             "extract_settings", "sae_scan_model", "steering_model_params",
                             "diffing_steering_models"],
                       study_chosen=lambda study: True, diffing_token_layers=set)
    for pair, role, model in [("rl_step", "base", "sft"), ("sft_step", "instruct", "sft"),
                              ("sft_step", "base", "base"), ("rl_step", "instruct", "rlhf")]:
        want = model != "base"
        w = W(pair=pair, role=role, model=model)
        assert ns["extract_settings"](w)["chat_template"] is want, (pair, role)
        assert ns["sae_scan_model"](w)["chat_template"] is want, (pair, role)
        assert ns["steering_model_params"](w)["chat"] is want, (pair, role)
        assert ns["diffing_steering_models"](w)[role]["chat"] is want, (pair, role)
    # A config that turns templates off for instruct models turns them off everywhere.
    cfg["extract"]["chat_template"]["instruct"] = False
    assert not ns["sae_scan_model"](W(pair="rl_step", role="instruct", model="rlhf"))[
        "chat_template"]
