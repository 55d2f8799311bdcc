# Helper and input functions shared by the rule files. No rules here.

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

# Polars sums floats across threads in a varying order; one thread makes every
# table bit-for-bit reproducible (jobs inherit this environment).
os.environ.setdefault("POLARS_MAX_THREADS", "1")

from rlhf_audit.numerics import pin_cpu_numerics

# torch's CPU kernels follow the host's instruction set unless pinned, and a training
# run turns the last bit into different weights: the same seed trained a different
# organism on an AVX-512 host. Jobs inherit the AVX2 paths (rlhf_audit.numerics).
pin_cpu_numerics()

from snakemake.exceptions import WorkflowError

from rlhf_audit.codehash import code_hash
from rlhf_audit.diffing.context import reads_native
from rlhf_audit.config import (STUDIES, ConfigError, chosen_studies, load_schema,
                               study_pairs, validate_config)
from rlhf_audit.gpu import cuda_visible, gpu_slots, lift_local_gpu_limit
from rlhf_audit.joberrors import user_errors
from rlhf_audit.studies import BY_NAME
from rlhf_audit.studies import targets as registry_targets

SCHEMA = "workflow/schemas/config.schema.yaml"
ORGANISM_DIR = "results/organism"


def check_config(cfg):
    """Validate (and default) the config before any job runs; exit with the key named."""
    try:
        validate_config(cfg, load_schema(Path(workflow.basedir) / SCHEMA))
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


WORKFLOW_START = time.time()


def report_user_errors(snakemake_log):
    """onerror: repeat the one-line message of each failed job's input error (bad
    file, line, reason, fix) at the very end of the output, below the tracebacks."""
    for job_log, message in user_errors(snakemake_log, "results/logs", since=WORKFLOW_START):
        sys.stderr.write(f"rlhf-audit: {message}\n    (job log: {job_log})\n")


def script_code(name):
    """Content hash of scripts/NAME and the library modules it imports (a params entry)."""
    return code_hash(Path(workflow.basedir) / "scripts" / name)


def model_spec(name):
    """The spec of a causal LM or reward model declared in the config, as the loader
    takes it (n_layers only serves the config check before any job runs)."""
    spec = config["models"][name] if name in config["models"] else config["reward_models"][name]
    return {k: v for k, v in spec.items() if k != "n_layers"}


def is_organism_path(spec):
    return "path" in spec and str(spec["path"]).startswith(ORGANISM_DIR + "/")


def model_files(name):
    """Files a job that loads model NAME depends on: for local directories the
    config, weights and tokenizer files (so a retrained organism reruns its consumers,
    and an edited chat template reruns what reads through it); nothing for hub ids,
    whose id and revision are params instead."""
    spec = model_spec(name)
    if "path" not in spec:
        return []
    d = spec["path"]
    if is_organism_path(spec):
        return [f"{d}/config.json", f"{d}/model.safetensors"]
    return (sorted(str(p) for p in Path(d).glob("*.safetensors")) + [f"{d}/config.json"]
            + tokenizer_files(name))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def tokenizer_files(name):
    """A local model's tokenizer and chat-template files that exist (the organism's: its
    config.json, written with them by the same training job; none for hub ids)."""
    spec = model_spec(name)
    if "path" not in spec:
        return []
    d = spec["path"]
    if is_organism_path(spec):
        return [f"{d}/config.json"]
    return [f"{d}/{f}" for f in TOKENIZER_FILES if Path(d, f).exists()]


def study_chosen(study):
    """Whether the config's `studies:` list names STUDY."""
    return study in chosen_studies(config)


def pairs_for(study):
    """Model pairs a study runs on (its 'pairs' key, or all pairs; none when the
    study is left out of `studies:`)."""
    return study_pairs(config, study)


def reward_pairs():
    return study_pairs(config, "reward")


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
    profile never oversubscribes the card and SLURM asks for one (rlhf_audit.gpu)."""
    return gpu_slots(config["device"])


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


def model_chat(model):
    """Whether a model's prompts are wrapped in its chat template (extract.chat_template
    of its model_role): a property of the model, the same in every pair and study, so a
    model that is the instruct of one pair and the base of another (an SFT checkpoint
    between base and RLHF; the organism's sham in instruct_vs_sham) is extracted,
    scanned and prompted alike."""
    return bool(config["extract"]["chat_template"][model_role(model)])


def extract_model_params(wildcards):
    return {"name": wildcards.model, "spec": model_spec(wildcards.model),
            "device": config["device"], "dtype": config["dtype"]}


def extract_settings(wildcards):
    e = config["extract"]
    saes = config["sae"]["saes"].values() if study_chosen("sae") else ()
    token_layers = sorted({s["layer"] for s in saes} | diffing_token_layers())
    return {"layers": e["layers"], "positions": list(e["positions"]),
            "token_layers": token_layers, "dtype": e["dtype"],
            "max_length": e["max_length"], "batch_size": e["batch_size"],
            "chat_template": model_chat(wildcards.model),
            "pool_over": e["pool_over"], "compute_dtype": config["dtype"]}


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


# rlhf_audit.organism.corpus.DATA_FILES (not imported: it pulls polars into every dry run;
# tests/test_organism_data.py checks that the two agree)
ORGANISM_DATA = ("base_corpus", "base_copy", "sft", "dpo", "sham_sft", "rep_statements",
                 "placebo_statements", "rm_post", "rm_pre", "eval_political", "eval_math", "eval_rm_hh", "eval_rm_alt",
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


def organism_planted_input(wildcards):
    """The planted-values file as an input of the claims table, so that editing it rebuilds
    the table (as a bare path parameter an edit went unnoticed); none without an organism."""
    path = organism_planted()
    return [path] if path else []


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
    r["seed"] = config["reward"]["seed"]  # "seed of rewrite sampling and bootstrap"
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
    # Reward models score in reward.score_dtype (float32), not the LMs' workflow-wide dtype.
    return {"name": wildcards.rm, "spec": model_spec(wildcards.rm),
            "device": config["device"], "dtype": config["reward"]["score_dtype"],
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
    # Analysis settings only: they reach analyse_rewards, never scoring or labelling.
    r = config["reward"]
    return {"features": list(r["features"]), "target_features": list(r["target_features"]),
            "spoiler_features": list(r["spoiler_features"]), "n_boot": r["n_boot"],
            "seed": r["seed"],
            "exclude_from_regression": list(r["exclude_from_regression"]),
            "gamma_features": list(r["gamma_features"]),
            "vif_threshold": r["vif_threshold"],
            "robustness_rm": r["robustness_rm"],
            "robustness_population": r["robustness_population"],
            "flip_encoding": r["flip_encoding"]}


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
            "n_folds": p["n_folds"], "C": p["C"], "n_boot": p["n_boot"], "seed": p["seed"],
            "n_splits": p["n_splits"], "n_perm": p["n_perm"]}


# ---- SAE


def sae_is_organism(name):
    return str(config["sae"]["saes"][name].get("path", "")).startswith(ORGANISM_DIR + "/")


def sae_spec(name):
    """The config's spec of SAE NAME, as the loader takes it. A pretrained
    {release, id} is replaced by a local sae-lens folder when the environment
    variable RLHF_AUDIT_SAE_DIR holds <release>/<id>/cfg.json (air-gapped sites
    with their own copies; the paper rehearsal test's stand-ins)."""
    s = dict(config["sae"]["saes"][name])
    root = os.environ.get("RLHF_AUDIT_SAE_DIR")
    if root and "release" in s:
        local = Path(root) / s["release"] / s["id"]
        if (local / "cfg.json").exists():
            s = {"path": str(local), "layer": s["layer"]}
    return s


def sae_files(name):
    s = sae_spec(name)
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
    return {"name": wildcards.sae, **sae_spec(wildcards.sae)}


def sae_scan_inputs(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    out = {"shards": activation_set(model)["shards"], "sae": sae_files(wildcards.sae),
           "prompts": normalised(config["extract"]["dataset"])}
    if config["sae"]["spliced_loss"]:
        out["model"] = model_files(model)
    return out


def sae_scan_model(wildcards):
    """The model the scan job splices the SAE into, tokenised as extraction did."""
    model = pair_models(wildcards.pair)[wildcards.role]
    return {"name": model, "spec": model_spec(model), "dtype": config["dtype"],
            "splice": bool(config["sae"]["spliced_loss"]),
            "chat_template": model_chat(model),
            "max_length": config["extract"]["max_length"]}


def sae_scan_settings(wildcards):
    return {"splice_batch_size": config["sae"]["splice_batch_size"]}


def sae_analysis_settings(wildcards):
    s = config["sae"]
    return {"q": s["fdr_q"], "min_firing_rate": s["min_firing_rate"],
            "top_k_prompts": s["top_prompts"], "n_boot": s["n_boot"], "seed": s["seed"],
            "min_statements_fired": s["min_statements_fired"], "split_seed": s["split_seed"],
            "controls_per_feature": s["controls_per_feature"],
            "statement_pattern": s["statement_pattern"], "plain_framing": s["plain_framing"]}


def sae_scan_dirs(wildcards):
    return {role: f"results/sae/{wildcards.pair}/{wildcards.sae}/scan_{role}"
            for role in ("base", "instruct")}


SAE_SCAN_TABLES = ("scan.json", "prompts.parquet", "prompt_features.parquet",
                   "prompt_means.parquet", "splice.parquet")


def sae_select_inputs(wildcards):
    out = {f"{role}_{name.split('.')[0]}": f"{d}/{name}"
           for role, d in sae_scan_dirs(wildcards).items() for name in SAE_SCAN_TABLES}
    if sae_direction(wildcards)["source"] == "partisan":
        out["directions"] = f"results/partisan/{wildcards.pair}/directions.parquet"
    return out


def sae_direction(wildcards):
    """Where the partisan direction of the SAE's reconstruction check comes from."""
    source = config["sae"]["partisan_direction"]
    if source == "partisan" and wildcards.pair not in pairs_for("partisan"):
        raise WorkflowError(f"sae.partisan_direction: partisan needs the partisan study on pair "
                            f"{wildcards.pair!r}; add it to partisan.pairs or use selection_half")
    return {"source": source, "layer": config["sae"]["saes"][wildcards.sae]["layer"],
            "method": config["partisan"]["methods"][0]}


# ---- steering


STEERING_SCORERS = ("projection", "judge")
STANCE_CLASSIFIER = "results/steering/stance_classifier.json"


def steering_sae():
    """The first configured SAE at the steering layer (its policy features give the
    feature-level vector), or None (also when the sae study is left out)."""
    if not study_chosen("sae"):
        return None
    for name, s in config["sae"]["saes"].items():
        if s["layer"] == config["steering"]["layer"]:
            return name
    return None


def steering_model_params(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    return {"name": model, "role": wildcards.role, "spec": model_spec(model),
            "device": config["device"], "dtype": config["dtype"],
            "chat": model_chat(model)}


def steering_settings(wildcards):
    """What the sweep's generations depend on (and nothing else, so that a scorer, analysis
    or prime setting never reruns the sweep)."""
    s = config["steering"]
    return {"layer": s["layer"], "alphas": list(s["alphas"]), "positions": s["positions"],
            "max_new_tokens": s["max_new_tokens"], "samples": s["samples"],
            "do_sample": s["do_sample"], "temperature": s["temperature"], "seed": s["seed"],
            "n_questions": s["n_questions"]}


def steering_prime_settings(wildcards):
    """What the identity-prime generations depend on: no layer, alpha or vector, so that a
    sweep setting never reruns them."""
    s = config["steering"]
    return {"max_new_tokens": s["max_new_tokens"], "samples": s["samples"],
            "do_sample": s["do_sample"], "temperature": s["temperature"], "seed": s["seed"],
            "n_prime_questions": s["n_prime_questions"]}


def steering_vector_settings(wildcards):
    s = config["steering"]
    return {"layer": s["layer"], "n_questions": s["n_questions"], "seed": s["seed"],
            "n_sae_features": s["n_sae_features"],
            "n_random_directions": s["n_random_directions"],
            "n_random_feature_sets": s["n_random_feature_sets"],
            "method": config["partisan"]["methods"][0], "sae_spec": steering_sae_spec()}


def steering_score_settings(wildcards):
    s = config["steering"]
    return {"layer": s["layer"], "projection_folds": s["projection_folds"], "seed": s["seed"]}


def steering_analysis_settings(wildcards):
    s = config["steering"]
    return {"n_boot": s["n_boot"], "seed": s["seed"],
            "degenerate_text_share": s["degenerate_text_share"],
            "max_degenerate_rate": s["max_degenerate_rate"]}


def steering_sae_spec():
    sae = steering_sae()
    if sae is None:
        return None
    return {k: v for k, v in sae_spec(sae).items() if k in ("release", "id", "path")}


def steering_vector_inputs(wildcards):
    base = pair_models(wildcards.pair)["base"]
    out = {"model": model_files(base), "questions": config["steering"]["questions"],
           "directions": f"results/partisan/{wildcards.pair}/directions.parquet"}
    sae = steering_sae()
    if sae:
        out["policy_features"] = f"results/sae/{wildcards.pair}/{sae}/policy_features.parquet"
        out["sae"] = sae_files(sae)
    return out


def steering_base_params(wildcards):
    base = pair_models(wildcards.pair)["base"]
    return {"name": base, "spec": model_spec(base), "device": config["device"],
            "dtype": config["dtype"]}


def steering_generation_inputs(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    return {"model": model_files(model), "questions": config["steering"]["questions"],
            "vectors": f"results/steering/{wildcards.pair}/vectors.parquet"}


def steering_prime_inputs(wildcards):
    model = pair_models(wildcards.pair)[wildcards.role]
    s = config["steering"]
    return {"model": model_files(model), "questions": s["questions"],
            "identity_primes": s["identity_primes"], "personas": s["personas"]}


def steering_judge_settings():
    j = dict(config["steering"]["judge"])
    if j["kind"] == "hf":
        j["spec"] = model_spec(j["model"])
    return j


def steering_scorer_params(wildcards):
    out = {"scorer": wildcards.scorer, "device": config["device"], "dtype": config["dtype"]}
    if wildcards.scorer == "projection":
        out["base"] = steering_base_params(wildcards)
    else:
        out["judge"] = steering_judge_settings()
    return out


def steering_score_inputs(wildcards):
    out = {"sweep": f"results/steering/{wildcards.pair}/{wildcards.role}/sweep.parquet",
           "primes": f"results/steering/{wildcards.pair}/{wildcards.role}/primes.parquet"}
    kind = config["steering"]["judge"]["kind"]
    if wildcards.scorer == "projection":
        base = pair_models(wildcards.pair)["base"]
        out["model"] = model_files(base)
        out["shards"] = activation_set(base)["shards"]
    elif kind == "hf":
        out["model"] = model_files(config["steering"]["judge"]["model"])
    elif kind == "stance_classifier":
        out["classifier"] = STANCE_CLASSIFIER
    return out


def stance_classifier_inputs(wildcards):
    return {"statements": normalised(config["steering"]["judge"]["dataset"])}


def stance_classifier_settings(wildcards):
    j = config["steering"]["judge"]
    return {"dataset": j["dataset"], "ngram_max": j["ngram_max"], "min_df": j["min_df"],
            "C": j["C"], "n_boot": config["steering"]["n_boot"],
            "seed": config["steering"]["seed"]}


def steering_analysis_inputs(wildcards):
    out = {"vectors": f"results/steering/{wildcards.pair}/vectors.parquet"}
    for role in ("base", "instruct"):
        d = f"results/steering/{wildcards.pair}/{role}"
        out[f"{role}_sweep"] = f"{d}/sweep.parquet"
        out[f"{role}_primes"] = f"{d}/primes.parquet"
        for scorer in STEERING_SCORERS:
            out[f"{role}_sweep_{scorer}"] = f"{d}/sweep_scores_{scorer}.parquet"
            out[f"{role}_primes_{scorer}"] = f"{d}/primes_scores_{scorer}.parquet"
    if config["steering"]["judge"]["kind"] == "stance_classifier":
        out["classifier"] = STANCE_CLASSIFIER
    return out


# ---- calibration


def calibration_generation_settings(wildcards):
    """What the generations depend on; analysis settings stay out so that changing them
    does not regenerate."""
    c = config["calibration"]
    return {"levels": list(c["levels"]), "strategies": list(c["strategies"]),
            "templates": c["templates"], "max_new_tokens": c["max_new_tokens"],
            "batch_size": c["batch_size"], "seed": c["seed"]}


def calibration_analysis_settings(wildcards):
    """Parsing and metric settings (fields of rlhf_audit.calibration.CalibrationSettings)."""
    c = config["calibration"]
    return {"levels": list(c["levels"]), "strategies": list(c["strategies"]),
            "templates": c["templates"], "n_boot": c["n_boot"], "seed": c["seed"],
            "internal_measure": c["internal_measure"],
            "compliance_tol_pp": c["compliance_tol_pp"],
            "truncate_at": list(c["truncate_at"]),
            "cluster_by_problem": c["cluster_by_problem"],
            "answer_abs_tol": c["answer_abs_tol"]}


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


# A study's units: the wildcard values of its headline fragment and figures, whose path
# templates are in the study registry (rlhf_audit.studies). Adding a study is one entry
# there and one line here; a chosen study with no entry yet (its rule file not merged)
# plans nothing.
STUDY_UNITS = {
    "partisan": lambda: [{"pair": pair} for pair in pairs_for("partisan")],
    "sae": lambda: [{"pair": pair, "sae": sae} for pair in pairs_for("sae")
                    for sae in config["sae"]["saes"]],
    "steering": lambda: [{"pair": pair} for pair in pairs_for("steering")],
    "calibration": lambda: [{"pair": pair} for pair in pairs_for("calibration")],
    "reward": lambda: [{"rpair": rpair} for rpair in reward_pairs()],
}


def study_targets(study):
    """The targets STUDY adds to a full run, {"fragments": {pair label: headline
    fragment}, "figures": [...]} (nothing when it is left out)."""
    if not study_chosen(study) or study not in STUDY_UNITS:
        return {"fragments": {}, "figures": []}
    return registry_targets(BY_NAME[study], STUDY_UNITS[study]())


def _fragments():
    """(study, pair label) -> headline fragment path, for every stage this config runs."""
    out = {}
    if config["organism"]["enabled"]:
        out[("organism", "organism")] = f"{ORGANISM_DIR}/checks.json"
    for study in STUDIES:  # a fixed order, whatever the order of the user's list
        for label, path in study_targets(study)["fragments"].items():
            out[(study, label)] = path
    return out


def headline_fragments(wildcards):
    return {f"{s}|{p}": path for (s, p), path in _fragments().items()}


def headline_fragment_names(wildcards):
    return sorted(f"{s}|{p}" for s, p in _fragments())


def figure_targets():
    return [f for study in STUDIES for f in study_targets(study)["figures"]]


def report_models(wildcards):
    """Every model and SAE the run names, for the report's provenance section."""
    return {"models": config["models"], "reward_models": config["reward_models"],
            "saes": config["sae"]["saes"]}


# ---- diffing


def diffing_pairs():
    return pairs_for("diffing") if study_chosen("diffing") else []


def diffing_token_layers():
    """The diffing layer, whose per-token rows extraction must write, when diffing runs."""
    return {config["diffing"]["layer"]} if diffing_pairs() else set()


def diffing_device():
    return "cuda" if config["device"] == "cuda" else (
        "cpu" if config["device"] == "cpu" else "auto")


def diffing_settings(wildcards):
    d = config["diffing"]
    keys = ("layer", "n_latents", "k", "training_tokens", "batch_size", "lr", "auxk_alpha",
            "dead_tokens", "n_seeds", "seed",
            "base_only_max", "instruct_only_min", "max_scaling_ratio", "top_statements",
            "partisan_latents", "n_boot")
    out = {k: d[k] for k in keys}
    out.update(diff_sae_latents=d["diff_sae"]["n_latents"], diff_sae_k=d["diff_sae"]["k"],
               diff_sae_tokens=d["diff_sae"]["training_tokens"])
    return out


def diffing_pair_settings(wildcards):
    d = config["diffing"]
    return {"layer": d["layer"], "seed": d["seed"], "eval_share": d["eval_share"],
            "context": d["context"]}


def diffing_context_key(pair, role):
    """How a pair's model is read for diffing when its own extraction reads the statements
    otherwise than diffing.context asks: "raw", or "chat_of_<instruct>" (inside the pair's
    instruct model's template, borrowed); None when its own extraction already matches (a
    natively templated base in context chat reads its own template: pairing checks that
    the two token sequences are identical). Keyed by model, not pair, so a model in two
    pairs is extracted once (rlhf_audit.diffing.context)."""
    ctx = config["diffing"]["context"]
    m = pair_models(pair)
    if reads_native(ctx, model_chat(m[role])):
        return None
    return "raw" if ctx == "raw" else f"chat_of_{m['instruct']}"


def diffing_role_shards(pair, role):
    """The shards a pair's model is diffed from: its pipeline extraction when that already
    reads the statements as diffing.context asks, else diffing-only shards
    (rule extract_diffing_context)."""
    model = pair_models(pair)[role]
    key = diffing_context_key(pair, role)
    if key is None:
        return shard_paths(model, config["diffing"]["dataset"])
    return [f"results/diffing/activations/{model}/{key}/shard-{s}.parquet"
            for s in shard_names()]


def diffing_pair_inputs(wildcards):
    return {f"{role}_shards": diffing_role_shards(wildcards.pair, role)
            for role in ("base", "instruct")}


def _template_donor(wildcards):
    """The model whose chat template a diffing-only extraction borrows (None for raw, or
    when it is the model itself)."""
    donor = wildcards.context.removeprefix("chat_of_")
    return None if wildcards.context == "raw" or donor == wildcards.model else donor


def diffing_context_model(wildcards):
    out = {"name": wildcards.model, "spec": model_spec(wildcards.model),
           "device": config["device"], "dtype": config["dtype"]}
    donor = _template_donor(wildcards)
    if donor:
        out["chat_template_from"] = model_spec(donor)
    return out


def diffing_context_settings(wildcards):
    """Extraction settings of a diffing-only shard: the diffing layer's token rows only,
    with or without a chat template as its context key says, always the statement's own
    tokens (template tokens must not be paired, whatever extract.pool_over says)."""
    e = config["extract"]
    layer = config["diffing"]["layer"]
    return {"layers": [layer], "positions": [], "token_layers": [layer], "dtype": e["dtype"],
            "max_length": e["max_length"], "batch_size": e["batch_size"],
            "chat_template": wildcards.context != "raw", "pool_over": "content",
            "compute_dtype": config["dtype"]}


def diffing_context_inputs(wildcards):
    files = model_files(wildcards.model)
    donor = _template_donor(wildcards)
    if donor:
        files = files + tokenizer_files(donor)  # the template it borrows, not the weights
    return {"prompts": normalised(config["diffing"]["dataset"]), "model": files}


def diffing_partisan_directions(pair):
    """The partisan study's directions for the pair, or nothing when it does not run."""
    if pair in pairs_for("partisan"):
        return {"directions": f"results/partisan/{pair}/directions.parquet"}
    return {}


def diffing_summary_directions(wildcards):
    """The partisan study's directions, which the summary compares the diffing direction
    with, when the partisan study runs on the pair."""
    return diffing_partisan_directions(wildcards.pair)


def diffing_reads_the_partisan_statements():
    """Whether the diffing dataset is the partisan study's own (extract.dataset): then its
    paired statements carry the sides the study fits on and give the diffing direction
    themselves, and the study's file is no input of the analysis (an edit of the partisan
    study reruns only the summary's comparison). Another dataset (a larger corpus, maybe
    all neutral) gets the study's direction as its fallback."""
    return config["diffing"]["dataset"] == config["extract"]["dataset"]


def diffing_analysis_inputs(wildcards):
    d = f"results/diffing/{wildcards.pair}"
    fallback = {} if diffing_reads_the_partisan_statements() else diffing_partisan_directions(
        wildcards.pair)
    return {"paired": f"{d}/paired.parquet", "crosscoder": f"{d}/crosscoder/index.json",
            "diff_sae": f"{d}/diff_sae/cfg.json",
            "prompts": normalised(config["diffing"]["dataset"]), **fallback}


def diffing_steering_inputs(wildcards):
    d = f"results/diffing/{wildcards.pair}"
    m = pair_models(wildcards.pair)
    return {"latents": f"{d}/latents.parquet", "paired": f"{d}/paired.parquet",
            "summary": f"{d}/summary.json",
            "questions": config["steering"]["questions"],
            "prompts": normalised(config["extract"]["dataset"]),
            "models": model_files(m["base"]) + model_files(m["instruct"])}


def diffing_steering_models(wildcards):
    return {role: {"name": model, "spec": model_spec(model), "device": config["device"],
                   "dtype": config["dtype"],
                   "chat": model_chat(model)}
            for role, model in pair_models(wildcards.pair).items()}


def diffing_steering_settings(wildcards):
    s = config["diffing"]["steer"]
    return {"layer": config["diffing"]["layer"], "alphas": list(s["alphas"]),
            "n_questions": s["n_questions"], "max_new_tokens": s["max_new_tokens"],
            "n_random": s["n_random"], "seed": config["diffing"]["seed"],
            "projection_folds": config["steering"]["projection_folds"],
            "score_seed": config["steering"]["seed"]}


def diffing_summary_settings(wildcards):
    return {"n_boot": config["diffing"]["n_boot"], "seed": config["diffing"]["seed"],
            "n_splits": config["partisan"]["n_splits"]}


STUDY_UNITS["diffing"] = lambda: [{"pair": pair} for pair in diffing_pairs()]

# Every study of the registry (rlhf_audit.studies) must say what it runs over.
_unregistered = [s for s in STUDIES if s not in STUDY_UNITS]
if _unregistered:
    raise WorkflowError(f"studies {_unregistered} have no entry in STUDY_UNITS (common.smk)")
