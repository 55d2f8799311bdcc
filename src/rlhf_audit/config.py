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
    check_references(config)
    return config


def check_references(config: dict) -> None:
    """Cross-key checks: pairs name declared models, stage datasets exist, layers fit."""
    models = config.get("models", {})
    rms = config.get("reward_models", {})
    for pair, spec in config.get("model_pairs", {}).items():
        for role in ("base", "instruct"):
            name = spec[role]
            if name not in models:
                raise ConfigError(f"key 'model_pairs.{pair}.{role}' names model '{name}', which "
                                  f"is not under 'models' (declared: {', '.join(models) or 'none'})")
    for pair, spec in config.get("reward_pairs", {}).items():
        for role in ("pre", "post"):
            name = spec[role]
            if name not in rms:
                raise ConfigError(f"key 'reward_pairs.{pair}.{role}' names reward model '{name}', "
                                  f"which is not under 'reward_models' "
                                  f"(declared: {', '.join(rms) or 'none'})")
    datasets = config.get("datasets", {})
    has_lm = bool(config.get("model_pairs"))
    has_rm = bool(config.get("reward_pairs"))
    for stage, key, fmt, used in (("extract", "dataset", "partisan", has_lm),
                                  ("calibration", "dataset", "gsm8k", has_lm),
                                  ("reward", "dataset", "hh_rlhf", has_rm)):
        name = config.get(stage, {}).get(key)
        if name is None or not used:  # a stage with no pair to run never reads its dataset
            continue
        if name not in datasets:
            raise ConfigError(f"key '{stage}.{key}' names dataset '{name}', which is not under "
                              f"'datasets' (declared: {', '.join(datasets) or 'none'})")
        if datasets[name]["format"] != fmt:
            raise ConfigError(f"key '{stage}.{key}': dataset '{name}' has format "
                              f"'{datasets[name]['format']}', but this stage needs '{fmt}'")
    for study in ("partisan", "sae", "steering", "calibration"):
        for pair in config.get(study, {}).get("pairs") or []:
            if pair not in config.get("model_pairs", {}):
                raise ConfigError(f"key '{study}.pairs' names pair '{pair}', which is not under "
                                  "'model_pairs'")
    for pair in config.get("reward", {}).get("pairs") or []:
        if pair not in config.get("reward_pairs", {}):
            raise ConfigError(f"key 'reward.pairs' names pair '{pair}', which is not under "
                              "'reward_pairs'")
    check_layers(config)


def model_n_layers(config: dict, name: str) -> int | None:
    """Number of transformer blocks of a declared model, when knowable before running."""
    spec = config["models"][name]
    if spec.get("n_layers"):
        return int(spec["n_layers"])
    if spec.get("path"):
        cfg = Path(spec["path"]) / "config.json"
        if cfg.exists():
            return int(json.loads(cfg.read_text()).get("num_hidden_layers", 0)) or None
        org = config.get("organism", {})
        if org.get("enabled") and str(spec["path"]).startswith("results/organism/"):
            return int(org.get("n_layers", 0)) or None
    return None


def check_layers(config: dict) -> None:
    """Every configured layer index must exist in every model it is read from."""
    wanted = []
    ext = config.get("extract", {})
    if isinstance(ext.get("layers"), list):
        wanted += [("extract.layers", layer) for layer in ext["layers"]]
    if config.get("steering", {}).get("layer") is not None:
        wanted.append(("steering.layer", config["steering"]["layer"]))
    for name, sae in config.get("sae", {}).get("saes", {}).items():
        wanted.append((f"sae.saes.{name}.layer", sae["layer"]))
    if not wanted:
        return
    for name in config.get("models", {}):
        n = model_n_layers(config, name)
        if n is None:
            continue
        for key, layer in wanted:
            if not 0 <= int(layer) < n:
                raise ConfigError(f"key '{key}': layer {layer} is out of range for model "
                                  f"'{name}', which has {n} layers (valid: 0..{n - 1}; layer L is "
                                  "the residual stream after block L)")
