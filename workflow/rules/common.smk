# Helper and input functions shared by the rule files. No rules here.

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

# Polars sums floats across threads in a varying order; one thread makes every
# table bit-for-bit reproducible (jobs inherit this environment).
os.environ.setdefault("POLARS_MAX_THREADS", "1")

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
    """Everything a full run makes: the headline, the claims table and every figure."""
    return ["results/headline.json", *figure_targets()]


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


ORGANISM_DATA = ("base_corpus", "base_copy", "sft", "dpo", "sham_sft", "rep_statements",
                 "rm_post", "rm_pre", "eval_political", "eval_math", "eval_rm_hh", "eval_rm_alt",
                 "split")


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


def organism_calibration_templates():
    """The calibration templates the organism's math texts are rendered in (the study's own)."""
    return config["calibration"]["templates"]


def organism_params(wildcards):
    o = config["organism"]
    return {"preset": o["preset"], "seed": o["seed"], "n_layers": o["n_layers"]}


def organism_planted():
    """The planted-values file the claims table compares with (organism runs only), or ''."""
    o = config["organism"]
    return o.get("planted", "") if o["enabled"] else ""


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


# ---- partisan


def activation_set(model, dataset=None):
    ds = dataset or config["extract"]["dataset"]
    return {"manifest": f"results/activations/{model}/{ds}/manifest.json",
            "shards": shard_paths(model, ds)}


def pair_activation_inputs(wildcards):
    out = {"prompts": normalised(config["extract"]["dataset"])}
    for role, model in pair_models(wildcards.pair).items():
        a = activation_set(model)
        out[f"{role}_manifest"] = a["manifest"]
        out[f"{role}_shards"] = a["shards"]
    return out


def partisan_settings(wildcards):
    p = config["partisan"]
    return {"methods": list(p["methods"]), "headline_method": p["methods"][0],
            "n_folds": p["n_folds"], "C": p["C"], "n_boot": p["n_boot"], "seed": p["seed"]}


# ---- SAE


def sae_is_organism(name):
    return str(config["sae"]["saes"][name].get("path", "")).startswith(ORGANISM_DIR + "/")


def sae_files(name):
    s = config["sae"]["saes"][name]
    if "path" not in s:
        return []
    if sae_is_organism(name):
        return [f"{s['path']}/cfg.json"]
    return [str(p) for p in sorted(Path(s["path"]).glob("*"))]


def organism_base_model():
    for name, spec in config["models"].items():
        if spec.get("path") == f"{ORGANISM_DIR}/base":
            return name
    raise WorkflowError(f"an SAE under {ORGANISM_DIR}/ needs the organism base model "
                        f"({{path: {ORGANISM_DIR}/base}}) under 'models'")


def organism_sae_inputs(wildcards):
    return {"shards": activation_set(organism_base_model())["shards"]}


def organism_sae_settings(wildcards):
    layer = next(s["layer"] for n, s in config["sae"]["saes"].items() if sae_is_organism(n))
    t = config["sae"]["train"]
    return {"layer": layer, "d_sae": t["d_sae"], "k": t["k"],
            "training_tokens": t["training_tokens"], "seed": config["sae"]["seed"]}


def sae_params(wildcards):
    s = dict(config["sae"]["saes"][wildcards.sae])
    return {"name": wildcards.sae, **s}


def sae_scan_inputs(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    return {"shards": activation_set(model)["shards"], "sae": sae_files(wildcards.sae)}


def sae_analysis_settings(wildcards):
    s = config["sae"]
    return {"q": s["fdr_q"], "min_firing_rate": s["min_firing_rate"],
            "top_k_prompts": s["top_prompts"], "n_boot": s["n_boot"], "seed": s["seed"]}


# ---- steering


STEERING_SCORERS = ("projection", "judge")


def steering_sae():
    """The first configured SAE at the steering layer (its policy features give the
    feature-level vector), or None."""
    for name, s in config["sae"]["saes"].items():
        if s["layer"] == config["steering"]["layer"]:
            return name
    return None


def steering_model_params(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    return {"name": model, "role": wildcards.role, "spec": model_spec(model),
            "device": config["device"], "dtype": config["dtype"],
            "chat": bool(config["extract"]["chat_template"][wildcards.role])}


def steering_settings(wildcards):
    s = config["steering"]
    return {"layer": s["layer"], "alphas": list(s["alphas"]), "positions": s["positions"],
            "max_new_tokens": s["max_new_tokens"], "samples": s["samples"],
            "do_sample": s["do_sample"], "temperature": s["temperature"], "seed": s["seed"],
            "random_vector_seed": s["seed"], "n_boot": s["n_boot"],
            "n_questions": s["n_questions"], "n_sae_features": s["n_sae_features"],
            "method": config["partisan"]["methods"][0], "sae_spec": steering_sae_spec()}


def steering_sae_spec():
    sae = steering_sae()
    if sae is None:
        return None
    return {k: v for k, v in config["sae"]["saes"][sae].items() if k in ("release", "id", "path")}


def steering_generation_inputs(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    out = {"model": model_files(model), "questions": config["steering"]["questions"],
           "directions": f"results/partisan/{wildcards.pair}/directions.parquet",
           "shards": activation_set(model)["shards"]}
    sae = steering_sae()
    if sae:
        out["policy_features"] = f"results/sae/{wildcards.pair}/{sae}/policy_features.parquet"
        out["sae"] = sae_files(sae)
    return out


def steering_scorer_params(wildcards):
    base = pair_models(wildcards.pair)["base"]
    out = {"scorer": wildcards.scorer, "device": config["device"], "dtype": config["dtype"]}
    if wildcards.scorer == "projection":
        out["base"] = {"name": base, "spec": model_spec(base)}
    else:
        j = dict(config["steering"]["judge"])
        if j["kind"] == "hf":
            j["spec"] = model_spec(j["model"])
        out["judge"] = j
    sae = steering_sae()
    out["sae"] = {"name": sae, **config["sae"]["saes"][sae]} if sae else None
    return out


def steering_score_inputs(wildcards):
    out = {"sweep": f"results/steering/{wildcards.pair}/{wildcards.role}/sweep.parquet",
           "primes": f"results/steering/{wildcards.pair}/{wildcards.role}/primes.parquet"}
    if wildcards.scorer == "projection":
        base = pair_models(wildcards.pair)["base"]
        out["model"] = model_files(base)
        out["directions"] = f"results/partisan/{wildcards.pair}/directions.parquet"
    elif config["steering"]["judge"]["kind"] == "hf":
        out["model"] = model_files(config["steering"]["judge"]["model"])
    return out


def steering_analysis_inputs(wildcards):
    out = {}
    for role in ("base", "instruct"):
        d = f"results/steering/{wildcards.pair}/{role}"
        out[f"{role}_sweep"] = f"{d}/sweep.parquet"
        out[f"{role}_primes"] = f"{d}/primes.parquet"
        for scorer in STEERING_SCORERS:
            out[f"{role}_sweep_{scorer}"] = f"{d}/sweep_scores_{scorer}.parquet"
            out[f"{role}_primes_{scorer}"] = f"{d}/primes_scores_{scorer}.parquet"
    return out


# ---- calibration


def calibration_settings(wildcards):
    c = config["calibration"]
    return {"levels": list(c["levels"]), "strategies": list(c["strategies"]),
            "templates": c["templates"], "max_new_tokens": c["max_new_tokens"],
            "batch_size": c["batch_size"], "n_boot": c["n_boot"], "seed": c["seed"]}


def calibration_generation_inputs(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    return {"model": model_files(model), "problems": normalised(config["calibration"]["dataset"]),
            "templates": config["calibration"]["templates"]}


def calibration_models(wildcards):
    return {role: {"name": m, "spec": model_spec(m)} for role, m in
            pair_models(wildcards.pair).items()}


def calibration_score_inputs(wildcards):
    out = {}
    for role, model in pair_models(wildcards.pair).items():
        out[role] = f"results/calibration/{wildcards.pair}/{role}/generations.parquet"
        out[f"{role}_model"] = model_files(model)
    return out


# ---- report


def _fragments():
    """(study, pair label) -> headline fragment path, for every stage this config runs."""
    out = {}
    if config["organism"]["enabled"]:
        out[("organism", "organism")] = f"{ORGANISM_DIR}/checks.json"
    for pair in pairs_for("partisan"):
        out[("partisan", pair)] = f"results/partisan/{pair}/headline.json"
    for pair in pairs_for("sae"):
        for sae in config["sae"]["saes"]:
            out[("sae", f"{pair}.{sae}")] = f"results/sae/{pair}/{sae}/headline.json"
    for pair in pairs_for("steering"):
        out[("steering", pair)] = f"results/steering/{pair}/headline.json"
    for pair in pairs_for("calibration"):
        out[("calibration", pair)] = f"results/calibration/{pair}/headline.json"
    for rpair in reward_pairs():
        out[("reward", rpair)] = f"results/reward/{rpair}/headline.json"
    return out


def headline_fragments(wildcards):
    return {f"{s}|{p}": path for (s, p), path in _fragments().items()}


def headline_fragment_names(wildcards):
    return sorted(f"{s}|{p}" for s, p in _fragments())


def figure_targets():
    out = []
    for pair in pairs_for("partisan"):
        out.append(f"results/figures/partisan/{pair}/auc_by_layer.png")
    for pair in pairs_for("sae"):
        out += [f"results/figures/sae/{pair}/{sae}/policy_firing.png"
                for sae in config["sae"]["saes"]]
    for pair in pairs_for("steering"):
        out.append(f"results/figures/steering/{pair}/dose_response_projection.png")
    for pair in pairs_for("calibration"):
        out.append(f"results/figures/calibration/{pair}/verbalized_vs_injected.png")
    for rpair in reward_pairs():
        out.append(f"results/figures/reward/{rpair}/imprint.png")
    return out


def report_models(wildcards):
    """Every model and SAE the run names, for the report's provenance section."""
    return {"models": config["models"], "reward_models": config["reward_models"],
            "saes": config["sae"]["saes"]}
