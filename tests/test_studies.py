"""Choosing studies: a study left out plans no jobs and needs none of its config;
cross-references of the studies that run are checked before any job, naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from rlhf_audit.config import STUDIES, ConfigError, load_schema, study_pairs, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")


def check(cfg):
    return validate_config(copy.deepcopy(cfg), SCHEMA)


def lm_only(**extra):
    """One LM pair and the partisan prompts: what a partisan-only user writes."""
    cfg = {"studies": ["partisan"],
           "models": {"b": {"hf": "org/base"}, "i": {"hf": "org/instruct"}},
           "model_pairs": {"p": {"base": "b", "instruct": "i"}},
           "datasets": {"partisan": {"format": "partisan",
                                     "source": {"path": "resources/prompts/partisan_statements.jsonl"}}}}
    cfg.update(extra)
    return cfg


def reward_only():
    """Two reward models, hh-rlhf pairs and a labels file; no LM at all."""
    return {"studies": ["reward"],
            "reward_models": {"pre": {"hf": "org/rm-pre"}, "post": {"hf": "org/rm-post"}},
            "reward_pairs": {"r": {"pre": "pre", "post": "post"}},
            "datasets": {"hh_rlhf": {"format": "hh_rlhf", "source": {"path": "hh.jsonl"}}},
            "reward": {"labeller": {"kind": "file", "path": "labels.jsonl"}}}


def test_default_is_every_study():
    cfg = check({})
    assert cfg["studies"] == list(STUDIES)


def test_partisan_only_needs_no_gsm8k_judge_or_reward_section():
    cfg = check(lm_only())
    assert study_pairs(cfg, "partisan") == ["p"]
    for study in ("sae", "steering", "calibration", "reward", "diffing"):
        assert study_pairs(cfg, study) == []


def test_the_same_config_with_every_study_asks_for_what_they_need():
    cfg = lm_only()
    del cfg["studies"]
    cfg["steering"] = {"judge": {"kind": "hf", "model": "i"}}
    with pytest.raises(ConfigError, match=r"'calibration.dataset' names dataset 'gsm8k'"):
        check(cfg)


def test_reward_only_config_validates():
    cfg = check(reward_only())
    assert study_pairs(cfg, "reward") == ["r"] and study_pairs(cfg, "partisan") == []


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(studies=["partisan", "reward"]),
     r"key 'studies' lists 'reward', which needs at least one entry under 'reward_pairs'"),
    (lambda c: c.update(studies=["partisan", "stearing"]), r"key 'studies.1'"),
    (lambda c: c.update(studies=["steering"],
                        steering={"judge": {"kind": "stance_classifier", "dataset": "nope"}}),
     r"key 'steering.judge.dataset' names dataset 'nope'.*declared: partisan"),
    (lambda c: c.update(studies=["steering"], steering={"judge": {"kind": "hf", "model": "q"}}),
     r"key 'steering.judge.model' names model 'q', which is not under 'models' \(declared: b, i\)"),
    (lambda c: c.update(studies=["steering"], steering={"judge": {"kind": "openai", "model": "m"}}),
     r"key 'steering.judge.base_url' is missing"),
    (lambda c: c.update(studies=["sae"], sae={"pairs": ["nope"]}),
     r"key 'sae.pairs' names pair 'nope', which is not under 'model_pairs'"),
    (lambda c: c["models"].update(b={"path": "x", "n_layers": 0}), r"key 'models.b.n_layers'"),
])
def test_bad_lm_configs_name_the_key(mutate, message):
    cfg = lm_only()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        check(cfg)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["reward"].update(target_features=["no_such_feature"]),
     r"key 'reward.target_features' names \['no_such_feature'\].*reward.features"),
    (lambda c: c["reward"].update(spoiler_features=["helpful", "zany"]),
     r"key 'reward.spoiler_features' names \['zany'\]"),
    (lambda c: c["reward"].update(labeller={"kind": "file"}), r"key 'reward.labeller.path' is missing"),
    (lambda c: c["reward"].update(labeller={"kind": "lm", "lm": {"kind": "hf", "model": "x"}}),
     r"key 'reward.labeller.lm.model' names model 'x'"),
    (lambda c: c["reward"].update(labeller={"kind": "lm"}), r"key 'reward.labeller.lm' is not set"),
    (lambda c: c["reward"].update(rewrite={"kind": "lm", "lm": {"kind": "openai", "model": "m",
                                                                "base_url": "ftp://x"}}),
     r"key 'reward.rewrite.lm.base_url'.*http"),
    (lambda c: c.update(datasets={}), r"key 'reward.dataset' names dataset 'hh_rlhf'.*none"),
    (lambda c: c["reward_pairs"]["r"].update(pre="gone"), r"reward_pairs.r.pre' names reward model"),
])
def test_bad_reward_configs_name_the_key(mutate, message):
    cfg = reward_only()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        check(cfg)


def test_no_schema_default_names_a_model():
    """A default that names a model the user never declared is a KeyError waiting."""
    text = json.dumps(SCHEMA)
    assert "organism_" not in text


def test_layers_are_checked_against_the_models_that_read_them(tmp_path):
    from tiny import save_tiny_llama

    d = save_tiny_llama(tmp_path / "m", n_layers=3)
    cfg = lm_only(models={"b": {"path": str(d)}, "i": {"path": str(d)}},
                  studies=["sae"], sae={"saes": {"s": {"path": "sae", "layer": 5}}})
    with pytest.raises(ConfigError, match=r"key 'sae.saes.s.layer': layer 5 .* 3 layers"):
        check(cfg)
    cfg["studies"] = ["partisan"]  # the SAE is not read when the sae study is left out
    check(cfg)


def test_declared_n_layers_must_agree_with_the_model(tmp_path):
    from tiny import save_tiny_llama

    d = save_tiny_llama(tmp_path / "m", n_layers=3)
    cfg = lm_only(models={"b": {"path": str(d), "n_layers": 4}, "i": {"path": str(d)}},
                  extract={"layers": [0]})
    with pytest.raises(ConfigError, match=r"'models.b.n_layers' is 4, but .* 3 layers"):
        check(cfg)


# ---- the workflow: plans and a partisan-only run


def _workflow():
    from test_workflow import copy_code, plan, snakemake

    return copy_code, plan, snakemake


def write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_reward_only_and_partisan_only_plan_only_their_jobs(tmp_path):
    copy_code, plan, _ = _workflow()
    code = copy_code(tmp_path / "code")
    (code / "hh.jsonl").write_text("")
    (code / "labels.jsonl").write_text("")
    reward = plan(code, "--configfile", write(code / "reward.yaml", reward_only()))
    assert set(reward) == {"all", "normalise_dataset", "score_rewards", "label_texts",
                           "analyse_rewards", "plot_rewards", "collect_headline"}, reward
    assert reward["score_rewards"] == 2
    partisan = plan(code, "--configfile", write(code / "partisan.yaml", lm_only()))
    assert set(partisan) == {"all", "normalise_dataset", "extract_activations",
                             "write_activation_manifest", "fit_partisan_probes", "plot_partisan",
                             "collect_headline"}, partisan
    assert partisan["normalise_dataset"] == 1  # only the partisan prompts


@pytest.mark.slow
def test_partisan_only_config_runs_end_to_end_on_tiny_models(tmp_path):
    """A new user's partisan-only config: one pair of local models and the prompts."""
    from scenario import make_tiny_scenario

    copy_code, _, snakemake = _workflow()
    code = copy_code(tmp_path / "code")
    full = yaml.safe_load(make_tiny_scenario(code).read_text())
    cfg = {"studies": ["partisan"], "run_label": "partisan-only", "device": "cpu",
           "models": full["models"], "model_pairs": full["model_pairs"],
           "datasets": {"partisan": full["datasets"]["partisan"]},
           "extract": {"shards": 1, "max_length": 48}, "partisan": {"n_boot": 100, "n_folds": 3}}
    snakemake(code, "--cores", "2", "--configfile", write(code / "partisan.yaml", cfg))
    headline = json.loads((code / "results/headline.json").read_text())
    studies = {key.split(".")[0] for key in headline["numbers"]}
    assert studies == {"partisan"}, studies
    assert (code / "results/figures/partisan/tiny/auc_by_layer.png").exists()
    assert not (code / "results/reward").exists() and not (code / "results/calibration").exists()


def test_job_error_lines_are_found_in_failed_jobs_logs(tmp_path):
    from rlhf_audit.joberrors import failed_job_logs, user_errors

    job = tmp_path / "results/logs/normalise_dataset/hh.log"
    job.parent.mkdir(parents=True)
    job.write_text("2026 rlhf_audit CRITICAL job failed\nTraceback (most recent call last):\n"
                   '  File "x.py", line 1\nrlhf_audit.formats.InputFormatError: hh.jsonl:2: '
                   "'chosen' has no '\\n\\nHuman:' turn. Each row needs {chosen, rejected}.\n")
    other = tmp_path / "results/logs/ok.log"
    other.write_text("ValueError: not a user error\n")
    main = tmp_path / "snakemake.log"
    main.write_text(f"Error in rule normalise_dataset:\n    jobid: 1\n    log: {job} "
                    "(check log file(s) for error details)\n")
    assert failed_job_logs([str(main)]) == [str(job)]
    assert user_errors(str(main), tmp_path / "results/logs") == [
        (str(job), "hh.jsonl:2: 'chosen' has no '\\n\\nHuman:' turn. Each row needs "
                   "{chosen, rejected}.")]
    assert user_errors(None, tmp_path / "nothing") == []


def test_a_bad_input_row_is_the_last_thing_the_user_reads(tmp_path):
    _, _, snakemake = _workflow()
    from test_workflow import copy_code

    code = copy_code(tmp_path / "code")
    (code / "hh.jsonl").write_text(
        json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\n"
                    "Assistant: no"}) + "\n" + json.dumps({"chosen": "no turns", "rejected": "x"})
        + "\n")
    (code / "labels.jsonl").write_text("")
    out = snakemake(code, "results/data/hh_rlhf.parquet", "--cores", "1", "--retries", "0",
                    "--configfile", write(code / "reward.yaml", reward_only()), check=False)
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).strip().splitlines()
    # Below Snakemake's report of the failure, with only its closing lines after it.
    mine = [i for i, line in enumerate(lines) if line.startswith("rlhf-audit: ")]
    assert mine and mine[-1] >= len(lines) - 8, lines[-12:]
    i = mine[-1]
    assert lines[i].startswith("rlhf-audit: hh.jsonl:2: 'chosen' has no '\\n\\nHuman:' turn.")
    assert i > max(k for k, line in enumerate(lines) if "Traceback" in line)
    assert "results/logs/normalise_dataset/hh_rlhf.log" in lines[i + 1]

