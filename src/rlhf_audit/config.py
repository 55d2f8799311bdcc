"""Config validation with messages that name the key and say how to fix it.

The workflow validates ``config`` against workflow/schemas/config.schema.yaml
(JSON Schema in YAML, every key described and defaulted) and then checks what a
schema cannot: that pairs name models that exist, that layers fit the models,
and that datasets referenced by stages are declared. Everything fails before
any job runs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml

from rlhf_audit.studies import CHOOSABLE


class ConfigError(ValueError):
    """An invalid config; the message names the key."""


def load_schema(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _with_defaults(validator_cls):
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, Mapping) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(schema: dict, path) -> str:
    node = schema
    for p in path:
        if not isinstance(node, Mapping):
            return ""
        if isinstance(p, int):
            node = node.get("items", {})
        elif p in node.get("properties", {}):
            node = node["properties"][p]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            return ""
    return node.get("description", "") if isinstance(node, Mapping) else ""


def validate_config(config: dict, schema: dict, source: str = "config") -> dict:
    """Fill defaults into ``config`` in place and validate it; raise ConfigError naming the key."""
    explicit = "studies" in config  # a user's own list must be satisfiable; the default need not
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:5]:
            path = list(e.absolute_path)
            if e.validator == "additionalProperties":
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                allowed = sorted(e.schema.get("properties", {}))
                where = _key(path + [extra[0]]) if extra else _key(path)
                msg = (f"unknown key '{where}'. Allowed here: {', '.join(allowed)}. "
                       "Check the spelling, or remove it.")
            elif e.validator == "required":
                missing = e.message.split("'")[1] if "'" in e.message else e.message
                where = _key(path + [missing])
                desc = _describe(schema, path + [missing])
                msg = f"missing key '{where}'" + (f" ({desc})" if desc else "")
            else:
                desc = _describe(schema, path)
                msg = (f"key '{_key(path)}': {e.message}" + (f". Expected: {desc}" if desc else ""))
            lines.append(msg)
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError(f"invalid {source}: " + "; ".join(lines) + more)
    check_references(config, explicit_studies=explicit)
    return config


STUDIES = CHOOSABLE
"""Studies a config can choose with its top-level ``studies:`` list (the registry's)."""

# Studies that read activations of the extraction dataset (extract.dataset).
EXTRACT_STUDIES = ("partisan", "sae", "steering", "diffing")


def chosen_studies(config: Mapping) -> list[str]:
    """The studies this run makes (the ``studies:`` list; every study when unset)."""
    chosen = config.get("studies")
    return list(STUDIES) if chosen is None else list(chosen)


def study_pairs(config: Mapping, study: str) -> list[str]:
    """Pairs a study runs on: none when the study is left out of ``studies:``; else its
    own ``pairs`` key, or every pair (model pairs; reward pairs for ``reward``)."""
    if study not in chosen_studies(config):
        return []
    pool = config.get("reward_pairs" if study == "reward" else "model_pairs") or {}
    chosen = (config.get(study) or {}).get("pairs")
    return list(chosen) if chosen else list(pool)


def study_runs(config: Mapping, study: str) -> bool:
    """A study plans jobs when it is chosen and has at least one pair to run on."""
    return bool(study_pairs(config, study))


def _names(d: Mapping) -> str:
    return ", ".join(d) or "none"


def _check_endpoint(config: dict, key: str, ep: Mapping | None, fix: str) -> None:
    """An LM endpoint (judge, labeller, rewriter) names a declared model or a usable URL."""
    if not ep:
        raise ConfigError(f"key '{key}' is not set, and this study needs it. {fix}")
    if ep["kind"] in ("stance_classifier", "none"):  # no model to name
        return
    models = config.get("models") or {}
    if ep["kind"] == "hf":
        name = ep.get("model")
        if name not in models:
            raise ConfigError(f"key '{key}.model' names model {name!r}, which is not under "
                              f"'models' (declared: {_names(models)}). Declare it under 'models' "
                              "or use kind: openai with base_url and model.")
    else:
        for need in ("base_url", "model"):
            if not ep.get(need):
                raise ConfigError(f"key '{key}.{need}' is missing: an openai endpoint needs "
                                  "base_url (e.g. http://127.0.0.1:8000/v1) and the model name "
                                  "the server expects.")
        if not str(ep["base_url"]).startswith(("http://", "https://")):
            raise ConfigError(f"key '{key}.base_url': {ep['base_url']!r} must start with "
                              "http:// or https://")


def check_references(config: dict, explicit_studies: bool = True) -> None:
    """Cross-key checks for the studies this run makes: pairs name declared models,
    stage datasets exist with the right format, LM endpoints name declared models,
    features and layers fit. A study left out of ``studies:`` is not checked: its
    section, datasets and models need not exist."""
    models = config.get("models") or {}
    rms = config.get("reward_models") or {}
    for pair, spec in (config.get("model_pairs") or {}).items():
        for role in ("base", "instruct"):
            name = spec[role]
            if name not in models:
                raise ConfigError(f"key 'model_pairs.{pair}.{role}' names model '{name}', which "
                                  f"is not under 'models' (declared: {_names(models)})")
    for pair, spec in (config.get("reward_pairs") or {}).items():
        for role in ("pre", "post"):
            name = spec[role]
            if name not in rms:
                raise ConfigError(f"key 'reward_pairs.{pair}.{role}' names reward model '{name}', "
                                  f"which is not under 'reward_models' (declared: {_names(rms)})")
    studies = chosen_studies(config)
    for study in studies:
        pool_key = "reward_pairs" if study == "reward" else "model_pairs"
        pool = config.get(pool_key) or {}
        for pair in (config.get(study) or {}).get("pairs") or []:
            if pair not in pool:
                raise ConfigError(f"key '{study}.pairs' names pair '{pair}', which is not under "
                                  f"'{pool_key}' (declared: {_names(pool)})")
        if explicit_studies and not pool:
            raise ConfigError(f"key 'studies' lists '{study}', which needs at least one entry "
                              f"under '{pool_key}' (none declared). Declare a pair, or leave "
                              f"'{study}' out of 'studies'.")
    runs = {s: study_runs(config, s) for s in STUDIES}
    datasets = config.get("datasets") or {}
    for stage, fmt, used in (("extract", "partisan", any(runs[s] for s in EXTRACT_STUDIES)),
                             ("calibration", "gsm8k", runs["calibration"]),
                             ("reward", "hh_rlhf", runs["reward"])):
        name = (config.get(stage) or {}).get("dataset")
        if name is None or not used:  # a stage with no pair to run never reads its dataset
            continue
        if name not in datasets:
            raise ConfigError(f"key '{stage}.dataset' names dataset '{name}', which is not under "
                              f"'datasets' (declared: {_names(datasets)}). Declare it with "
                              f"format: {fmt} and a source, or set '{stage}.dataset'.")
        if datasets[name]["format"] != fmt:
            raise ConfigError(f"key '{stage}.dataset': dataset '{name}' has format "
                              f"'{datasets[name]['format']}', but this stage needs '{fmt}'")
    if runs["steering"]:
        _check_endpoint(config, "steering.judge", (config.get("steering") or {}).get("judge"),
                        "Name the scorer of partisanship: {kind: stance_classifier}, {kind: hf, "
                        "model: <a key of models>} or {kind: openai, base_url: URL, model: NAME}.")
        judge = (config.get("steering") or {}).get("judge") or {}
        if judge.get("kind") == "stance_classifier":
            name = judge.get("dataset", "partisan")
            if (datasets.get(name) or {}).get("format") != "partisan":
                raise ConfigError(f"key 'steering.judge.dataset' names dataset '{name}', which "
                                  "is not a dataset of format partisan under 'datasets' "
                                  f"(declared: {_names(datasets)}). The stance classifier is "
                                  "trained on its left and right statements.")
    if runs["reward"]:
        _check_reward(config)
    diffing = config.get("diffing") or {}
    if (runs["diffing"] and diffing.get("context") == "chat"
            and (config.get("extract") or {}).get("pool_over") == "all"):
        raise ConfigError("key 'diffing.context' is chat while 'extract.pool_over' is all: two "
                          "models that both read the chat template would have their template "
                          "tokens paired and diffed as if they were the statements. Set "
                          "extract.pool_over: content, or diffing.context: raw.")
    check_layers(config)


def _check_reward(config: dict) -> None:
    r = config.get("reward") or {}
    features = list(r.get("features") or [])
    for key in ("target_features", "spoiler_features"):
        unknown = [f for f in r.get(key) or [] if f not in features]
        if unknown:
            raise ConfigError(f"key 'reward.{key}' names {unknown}, which are not in "
                              f"'reward.features' ({', '.join(features)}). Add them to "
                              "reward.features or remove them here.")
    lab = r.get("labeller") or {}
    if lab.get("kind") in ("ground_truth", "file") and not lab.get("path"):
        raise ConfigError(f"key 'reward.labeller.path' is missing: labeller kind "
                          f"'{lab['kind']}' reads labels from a file (JSONL/Parquet keyed by "
                          "pair_id and side). Set the path, or use kind: lm with an lm endpoint.")
    if lab.get("kind") == "lm":
        _check_endpoint(config, "reward.labeller.lm", lab.get("lm"),
                        "Name the labelling LM: {kind: openai, base_url: URL, model: NAME} or "
                        "{kind: hf, model: <a key of models>}.")
    rw = r.get("rewrite") or {}
    if rw.get("kind") == "lm":
        _check_endpoint(config, "reward.rewrite.lm", rw.get("lm"),
                        "Name the rewriting LM, or set reward.rewrite.kind: none.")


def model_n_layers(config: dict, name: str) -> int | None:
    """Number of transformer blocks of a declared model, when knowable before running:
    its local config.json, a hub model's config.json in the local Hugging Face cache,
    its declared ``n_layers``, or the organism's setting. A declared ``n_layers`` that
    disagrees with the model's own config is an error."""
    spec = config["models"][name]
    found = None
    if spec.get("path"):
        cfg = Path(spec["path"]) / "config.json"
        if cfg.exists():
            found = int(json.loads(cfg.read_text()).get("num_hidden_layers", 0)) or None
        else:
            org = config.get("organism", {})
            if org.get("enabled") and str(spec["path"]).startswith("results/organism/"):
                found = int(org.get("n_layers", 0)) or None
    elif spec.get("hf"):
        found = _cached_hub_layers(spec["hf"], spec.get("revision"))
    declared = spec.get("n_layers")
    if declared and found and int(declared) != found:
        raise ConfigError(f"key 'models.{name}.n_layers' is {declared}, but the model's "
                          f"config.json says {found} layers: correct n_layers or remove it")
    return found or (int(declared) if declared else None)


def _cached_hub_layers(repo: str, revision: str | None) -> int | None:
    """num_hidden_layers from a hub model's config.json in the local cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # an odd cache is no reason to refuse a config
        return None
    if not isinstance(path, str):
        return None
    try:
        return int(json.loads(Path(path).read_text()).get("num_hidden_layers", 0)) or None
    except (OSError, ValueError):
        return None


def _study_models(config: dict, studies) -> set[str]:
    out = set()
    for study in studies:
        for pair in study_pairs(config, study):
            if study != "reward" and pair in (config.get("model_pairs") or {}):
                out.update(config["model_pairs"][pair][r] for r in ("base", "instruct"))
    return out


def check_layers(config: dict) -> None:
    """Every configured layer index must exist in every model it is read from."""
    wanted = []  # (key, layer, models read at that layer)
    ext = config.get("extract", {})
    if isinstance(ext.get("layers"), list):
        users = _study_models(config, EXTRACT_STUDIES)
        wanted += [("extract.layers", layer, users) for layer in ext["layers"]]
    if study_runs(config, "steering") and config.get("steering", {}).get("layer") is not None:
        wanted.append(("steering.layer", config["steering"]["layer"],
                       _study_models(config, ["steering"])))
    sae_users = _study_models(config, ["sae", "steering"])
    for name, sae in (config.get("sae", {}).get("saes") or {}).items():
        wanted.append((f"sae.saes.{name}.layer", sae["layer"], sae_users))
    for key, layer, users in wanted:
        for name in sorted(users):
            if name not in config.get("models", {}):
                continue
            n = model_n_layers(config, name)
            if n is None:
                continue
            if not 0 <= int(layer) < n:
                raise ConfigError(f"key '{key}': layer {layer} is out of range for model "
                                  f"'{name}', which has {n} layers (valid: 0..{n - 1}; layer L is "
                                  "the residual stream after block L)")
