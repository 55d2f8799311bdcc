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


def dataset_source_files(wildcards):
    """A dataset's local file (a dependency) or nothing for a hub dataset."""
    src = config["datasets"][wildcards.dataset]["source"]
    return [src["path"]] if "path" in src else []


def normalised(name):
    return f"results/data/{name}.parquet"


def all_targets():
    targets = []
    if config["organism"]["enabled"]:
        targets.append(f"{ORGANISM_DIR}/checks.json")
    ds = config["extract"]["dataset"]
    for pair in pairs_for("partisan"):
        for role, model in pair_models(pair).items():
            targets.append(f"results/activations/{model}/{ds}/manifest.json")
    for rpair in reward_pairs():
        targets += [f"results/reward/{rpair}/headline.json",
                    f"results/figures/reward/{rpair}/imprint.png"]
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


# ---- organism


ORGANISM_DATA = ("base_corpus", "sft", "dpo", "rm_post", "rm_pre", "eval_political",
                 "eval_math", "eval_rm_hh", "eval_rm_alt", "split")


def organism_data(name):
    return f"{ORGANISM_DIR}/data/{name}.jsonl"


def organism_data_outputs():
    out = {name: organism_data(name) for name in ORGANISM_DATA}
    out.update(gsm8k_eval=organism_data("gsm8k_eval"), hh_eval=organism_data("hh_eval"),
               hh_eval_labels=f"{ORGANISM_DIR}/data/hh_eval_labels.parquet",
               hh_rewritten=organism_data("hh_eval_rewritten"),
               hh_rewritten_labels=f"{ORGANISM_DIR}/data/hh_eval_rewritten_labels.parquet",
               manifest=f"{ORGANISM_DIR}/data/manifest.json")
    return out


def organism_params(wildcards):
    o = config["organism"]
    return {"preset": o["preset"], "seed": o["seed"], "n_layers": o["n_layers"]}


def organism_rm_pairs(wildcards):
    return organism_data(f"rm_{wildcards.which}")


def organism_check_inputs(wildcards):
    return {
        "models": [f"{ORGANISM_DIR}/{d}/model.safetensors"
                   for d in ("base", "instruct", "rm_pre", "rm_post")],
        "data": [organism_data(n) for n in ("eval_political", "eval_math", "eval_rm_hh",
                                            "eval_rm_alt")],
    }


# ---- reward (SEAL)


def rewrite_kind():
    return config["reward"]["rewrite"]["kind"]


def rewrite_params(wildcards):
    r = dict(config["reward"]["rewrite"])
    if r.get("lm", {}).get("kind") == "hf":
        r["lm_spec"] = model_spec(r["lm"]["model"])
    return r


def rewrite_inputs(wildcards):
    out = {"original": normalised(wildcards.dataset)}
    kind = rewrite_kind()
    if kind == "organism":
        out["organism_rewrites"] = organism_data("hh_eval_rewritten")
    elif kind == "lm" and config["reward"]["rewrite"]["lm"]["kind"] == "hf":
        out["lm"] = model_files(config["reward"]["rewrite"]["lm"]["model"])
    emb = config["reward"]["rewrite"].get("embedder")
    if emb and "path" in emb and not str(emb["path"]).startswith("results/"):
        out["embedder"] = [str(p) for p in Path(emb["path"]).glob("*.safetensors")]
    return out


def labeller_params(wildcards):
    lab = dict(config["reward"]["labeller"])
    if wildcards.variant == "rewritten" and rewrite_kind() == "organism":
        # The organism's re-rendering keeps (or flips, and records) every label.
        lab = {"kind": "ground_truth",
               "path": f"{ORGANISM_DIR}/data/hh_eval_rewritten_labels.parquet"}
    if lab.get("lm", {}).get("kind") == "hf":
        lab["lm_spec"] = model_spec(lab["lm"]["model"])
    return lab


def labeller_gpu(wildcards):
    lab = labeller_params(wildcards)
    return gpu_count() if lab["kind"] == "lm" and lab["lm"]["kind"] == "hf" else 0


def variant_pairs(dataset, variant):
    if variant == "original":
        return normalised(dataset)
    return f"results/reward/rewrites/{dataset}.parquet"


def label_inputs(wildcards):
    out = {"pairs": variant_pairs(wildcards.dataset, wildcards.variant)}
    lab = labeller_params(wildcards)
    if lab.get("path"):
        out["labels"] = lab["path"]
    if lab["kind"] == "lm" and lab["lm"]["kind"] == "hf":
        out["lm"] = model_files(lab["lm"]["model"])
    return out


def reward_model_params(wildcards):
    return {"name": wildcards.rm, "spec": model_spec(wildcards.rm),
            "device": config["device"], "dtype": config["dtype"],
            "keep_marker": config["reward"]["keep_marker"]}


def score_reward_inputs(wildcards):
    return {"pairs": variant_pairs(wildcards.dataset, wildcards.variant),
            "model": model_files(wildcards.rm)}


def reward_variants():
    return ["original"] + (["rewritten"] if rewrite_kind() != "none" else [])


def analyse_reward_inputs(wildcards):
    p = config["reward_pairs"][wildcards.rpair]
    ds = config["reward"]["dataset"]
    out = {}
    for variant in reward_variants():
        out[f"labels_{variant}"] = f"results/reward/labels/{ds}_{variant}.parquet"
        for role in ("pre", "post"):
            out[f"{role}_{variant}"] = f"results/reward/scores/{p[role]}/{ds}_{variant}.parquet"
    if rewrite_kind() != "none":
        out["similarity"] = f"results/reward/rewrites/{ds}_similarity.parquet"
    return out


def seal_settings(wildcards):
    r = config["reward"]
    return {"features": list(r["features"]), "target_features": list(r["target_features"]),
            "spoiler_features": list(r["spoiler_features"]), "n_boot": r["n_boot"],
            "seed": r["seed"]}
