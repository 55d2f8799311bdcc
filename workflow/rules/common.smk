# Helper and input functions shared by the rule files. No rules here.

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError

from rlhf_audit.codehash import code_hash
from rlhf_audit.config import ConfigError, load_schema, validate_config

SCHEMA = "workflow/schemas/config.schema.yaml"
ORGANISM_DIR = "results/organism"


def check_config(cfg):
    """Validate (and default) the config before any job runs; exit with the key named."""
    try:
        validate_config(cfg, load_schema(Path(workflow.basedir) / SCHEMA))
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def script_code(name):
    """Content hash of scripts/NAME and the library modules it imports (a params entry)."""
    return code_hash(Path(workflow.basedir) / "scripts" / name)


def model_spec(name):
    """The spec of a causal LM or reward model declared in the config."""
    if name in config["models"]:
        return config["models"][name]
    return config["reward_models"][name]


def is_organism_path(spec):
    return "path" in spec and str(spec["path"]).startswith(ORGANISM_DIR + "/")


def model_files(name):
    """Files a job that loads model NAME depends on: for local directories the
    config and weights (so a retrained organism reruns its consumers); nothing
    for hub ids, whose id and revision are params instead."""
    spec = model_spec(name)
    if "path" not in spec:
        return []
    d = spec["path"]
    if is_organism_path(spec):
        return [f"{d}/config.json", f"{d}/model.safetensors"]
    return sorted(str(p) for p in Path(d).glob("*.safetensors")) + [f"{d}/config.json"]


def pairs_for(study):
    """Model pairs a study runs on (its 'pairs' key, or all pairs)."""
    chosen = config[study].get("pairs")
    return list(chosen) if chosen else list(config["model_pairs"])


def reward_pairs():
    chosen = config["reward"].get("pairs")
    return list(chosen) if chosen else list(config["reward_pairs"])


def pair_models(pair):
    p = config["model_pairs"][pair]
    return {"base": p["base"], "instruct": p["instruct"]}


def dataset_source_files(name):
    """A dataset's local file (a dependency) or nothing for a hub dataset."""
    src = config["datasets"][name]["source"]
    return [src["path"]] if "path" in src else []


def normalised(name):
    return f"results/data/{name}.parquet"


def all_targets():
    targets = [normalised(d) for d in config["datasets"]]
    ds = config["extract"]["dataset"]
    for pair in pairs_for("partisan"):
        for role, model in pair_models(pair).items():
            targets.append(f"results/activations/{model}/{ds}/manifest.json")
    return targets


def dataset_params(wildcards):
    return config["datasets"][wildcards.dataset]


def gpu_count():
    """GPU stages declare gpu=1 when the config may use CUDA, so the workstation
    profile never oversubscribes the card and SLURM asks for one."""
    return 0 if config["device"] == "cpu" else 1


def n_shards():
    return config["extract"]["shards"]


def shard_names():
    return [f"{i:05d}" for i in range(n_shards())]


def model_role(model):
    """'base' or 'instruct': the role a model plays in the pairs that use it."""
    for p in config["model_pairs"].values():
        if p["instruct"] == model:
            return "instruct"
    return "base"


def extract_model_params(wildcards):
    return {"name": wildcards.model, "spec": model_spec(wildcards.model),
            "device": config["device"], "dtype": config["dtype"]}


def extract_settings(wildcards):
    e = config["extract"]
    token_layers = sorted({s["layer"] for s in config["sae"]["saes"].values()})
    return {"layers": e["layers"], "positions": list(e["positions"]),
            "token_layers": token_layers, "dtype": e["dtype"],
            "max_length": e["max_length"], "batch_size": e["batch_size"],
            "chat_template": bool(e["chat_template"][model_role(wildcards.model)])}


def extract_shard_index(wildcards):
    return {"index": int(wildcards.shard), "n_shards": n_shards()}


def extract_inputs(wildcards):
    return {"prompts": normalised(wildcards.dataset), "model": model_files(wildcards.model)}


def shard_paths(model, dataset):
    return [f"results/activations/{model}/{dataset}/shard-{s}.parquet" for s in shard_names()]


def manifest_inputs(wildcards):
    return {"prompts": normalised(wildcards.dataset), "model": model_files(wildcards.model),
            "shards": shard_paths(wildcards.model, wildcards.dataset)}
