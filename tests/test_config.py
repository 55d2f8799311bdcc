"""Invalid configs fail before any job runs, naming the key."""

import copy
from pathlib import Path

import pytest
import yaml

from rlhf_audit.config import ConfigError, load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")


def default_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def check(cfg):
    return validate_config(copy.deepcopy(cfg), SCHEMA)


def test_default_and_paper_configs_validate():
    check(default_config())
    check(yaml.safe_load((ROOT / "configs/paper.yaml").read_text()))
    check(yaml.safe_load((ROOT / "configs/template.yaml").read_text()))


def test_defaults_are_filled():
    cfg = check({"models": {}})
    assert cfg["partisan"]["n_folds"] == 5
    assert cfg["extract"]["chat_template"] == {"base": False, "instruct": True}


def walk(schema, path="(top)"):
    """Yield (path, node) for every property in the schema."""
    for key, node in schema.get("properties", {}).items():
        yield f"{path}.{key}", node
        yield from walk(node, f"{path}.{key}")
    add = schema.get("additionalProperties")
    if isinstance(add, dict):
        yield from walk(add, f"{path}.*")
    for name, node in schema.get("$defs", {}).items():
        yield from walk(node, f"$defs.{name}")


def test_every_key_has_a_description_and_top_level_keys_a_default():
    for path, node in walk(SCHEMA):
        assert node.get("description") or "$ref" in node, f"{path} has no description"
    for key, node in SCHEMA["properties"].items():
        assert "default" in node, f"top-level key {key} has no default"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["partisan"].update(n_fold=3), r"unknown key 'partisan.n_fold'.*n_folds"),
        (lambda c: c.update(colour="red"), r"unknown key 'colour'"),
        (lambda c: c["partisan"].update(n_folds="five"), r"key 'partisan.n_folds': 'five' is not of type 'integer'"),
        (lambda c: c["steering"].update(alphas=[1, "x"]), r"key 'steering.alphas.1'"),
        (lambda c: c["models"].update(broken={}), r"key 'models.broken'"),
        (lambda c: c["models"].update(broken={"hf": "a", "path": "b"}), r"key 'models.broken'"),
        (lambda c: c["model_pairs"]["organism"].pop("base"), r"missing key 'model_pairs.organism.base'"),
        (lambda c: c["model_pairs"]["organism"].update(base="nope"), r"model_pairs.organism.base' names model 'nope'"),
        (lambda c: c["reward_pairs"]["organism"].update(post="nope"), r"reward_pairs.organism.post' names reward model 'nope'"),
        (lambda c: c["sae"]["saes"]["organism_sae"].update(layer=7), r"key 'sae.saes.organism_sae.layer': layer 7 is out of range .* 3 layers \(valid: 0..2"),
        (lambda c: c["extract"].update(layers=[0, 12]), r"key 'extract.layers': layer 12 is out of range"),
        (lambda c: c["extract"].update(dataset="gsm8k"), r"key 'extract.dataset': dataset 'gsm8k' has format 'gsm8k'"),
        (lambda c: c["calibration"].update(dataset="missing"), r"'calibration.dataset' names dataset 'missing'"),
        (lambda c: c["datasets"]["gsm8k"].update(format="csv"), r"key 'datasets.gsm8k.format'"),
        (lambda c: c.update(device="tpu"), r"key 'device': 'tpu' is not one of"),
        (lambda c: c["partisan"].update(pairs=["llama"]), r"'partisan.pairs' names pair 'llama'"),
    ],
)
def test_invalid_configs_name_the_key(mutate, message):
    cfg = default_config()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        check(cfg)


def test_layer_check_reads_local_model_config(tmp_path):
    from tiny import save_tiny_llama

    d = save_tiny_llama(tmp_path / "m", n_layers=3)
    cfg = {"models": {"a": {"path": str(d)}, "b": {"path": str(d)}},
           "model_pairs": {"p": {"base": "a", "instruct": "b"}},
           "steering": {"layer": 3, "judge": {"kind": "hf", "model": "b"}},
           "datasets": {"partisan": {"format": "partisan", "source": {"path": "x.jsonl"}},
                        "gsm8k": {"format": "gsm8k", "source": {"path": "y.jsonl"}}}}
    with pytest.raises(ConfigError, match="model 'a', which has 3 layers"):
        check(cfg)
