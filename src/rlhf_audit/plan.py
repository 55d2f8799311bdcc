"""What a config costs before it runs: per stage, jobs, forward-pass tokens,
generated tokens, activation bytes on disk, labeller calls and GPU time.

Counts follow the config exactly (pairs, datasets, layers, alphas, levels, ...);
token lengths are estimated from the local files (4 characters a token) or, for
hub datasets not yet downloaded, from the typical sizes in HUB_DATASETS; model
shapes come from a local or cached config.json, else from MODEL_SHAPES by the
size named in the hub id ("8B"). GPU time divides tokens by the throughput of
THROUGHPUT, a per-model-size table for one 80 GB A100/H100-class GPU in bfloat16.
Those throughputs are planning figures, not measurements of this code: replace
them with what benchmarks/bench_paper.py prints on your GPU.

``python -m rlhf_audit.plan --configfile configs/paper.yaml`` (``make plan``)
prints the table; jobs per stage come from Snakemake's own dry run.

:func:`check_extraction_disk` (in :mod:`rlhf_audit.extract.disk`, re-exported here) is the
extraction job's early check that the disk holds the shard it is about to write; it lives
with the extraction so that the job's code hash holds neither this planner nor the config
and study registry it reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhf_audit.extract.disk import (  # noqa: F401  (re-exported: the planner's API)
    CHARS_PER_TOKEN,
    CHAT_OVERHEAD_TOKENS,
    DiskSpaceError,
    check_extraction_disk,
    extraction_bytes,
)

log = logging.getLogger(__name__)

HUB_DATASETS = {
    "openai/gsm8k": {"rows": {"train": 7473, "test": 1319}, "tokens": 70},
    "Anthropic/hh-rlhf": {"rows": {"train": 160800, "test": 8552}, "tokens": 230},
}
"""Rows per split and mean tokens per text of hub datasets, for plans made before download."""

MODEL_SHAPES = {  # params (billions) -> (n_layers, d_model)
    0.5: (24, 896), 1.0: (16, 2048), 1.5: (28, 1536), 3.0: (28, 3072), 7.0: (28, 3584),
    8.0: (32, 4096), 13.0: (40, 5120), 70.0: (80, 8192),
}
"""Typical decoder shapes by size, when no config.json is at hand."""

THROUGHPUT = {  # params (billions) -> (forward tokens/s, generated tokens/s), batched
    0.5: (60000, 6000), 1.0: (40000, 4000), 3.0: (16000, 2000), 8.0: (7000, 1000),
    13.0: (4500, 600), 70.0: (800, 120),
}
"""Planning throughput on one 80 GB A100/H100-class GPU in bfloat16 (not measured here)."""

REWARD_MODEL_PARAMS = 0.435
"""DeBERTa-v3-large, the paper's reward models (billions)."""

N_POLICY_QUESTIONS = 88
"""Shipped policy questions (resources/prompts/policy_questions.jsonl)."""

PRIME_CONDITIONS = 4
"""Identity-prime generations per question and model: bare, left, right, persona."""

STAGES = ("data", "extract", "partisan", "sae", "steering", "calibration", "reward",
          "diffing", "report")


@dataclass
class StageCost:
    """One row of the plan."""

    stage: str
    jobs: int = 0
    forward_tokens: int = 0
    generated_tokens: int = 0
    activation_bytes: int = 0
    labeller_calls: int = 0
    gpu_hours: float = 0.0


# ---------------------------------------------------------------- shapes and sizes


def _size_from_name(name: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", name)
    return float(m.group(1)) if m else None


def _nearest(table: Mapping[float, tuple], size: float) -> tuple:
    key = min(table, key=lambda k: abs(math.log(k) - math.log(max(size, 1e-3))))
    return table[key]


def _config_json(spec: Mapping) -> dict | None:
    if spec.get("path"):
        p = Path(spec["path"]) / "config.json"
        return json.loads(p.read_text()) if p.exists() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(spec["hf"], "config.json", revision=spec.get("revision"))
    except Exception:  # an unreadable cache only means "not known yet"
        return None
    return json.loads(Path(p).read_text()) if isinstance(p, str) else None


def model_shape(spec: Mapping, organism_layers: int = 4) -> dict:
    """{params_b, n_layers, d_model} of a model spec: its config.json when at hand,
    else the table entry for the size in its hub id (8B if none is named)."""
    cfg = _config_json(spec)
    if cfg and cfg.get("hidden_size"):
        n, d = int(cfg.get("num_hidden_layers", 1)), int(cfg["hidden_size"])
        inter = int(cfg.get("intermediate_size", 4 * d))
        vocab = int(cfg.get("vocab_size", 32000))
        params = (n * (4 * d * d + 3 * d * inter) + 2 * vocab * d) / 1e9
        return {"params_b": params, "n_layers": n, "d_model": d}
    if spec.get("path"):  # the organism before it is trained: tiny
        return {"params_b": 0.01, "n_layers": int(spec.get("n_layers") or organism_layers),
                "d_model": 256}
    size = _size_from_name(str(spec.get("hf", ""))) or 8.0
    n, d = _nearest(MODEL_SHAPES, size)
    return {"params_b": size, "n_layers": int(spec.get("n_layers") or n), "d_model": d}


def dataset_size(spec: Mapping, text_keys: tuple[str, ...]) -> tuple[int, float]:
    """(rows, mean tokens per row over ``text_keys``) of a dataset entry, after its limit."""
    src, limit = spec["source"], spec.get("limit")
    rows, tokens = 0, 0.0
    if src.get("path") and Path(src["path"]).exists() and src["path"].endswith((".jsonl", ".json")):
        chars = 0
        with open(src["path"], encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                chars += sum(len(str(rec.get(k, ""))) for k in text_keys)
                rows += 1
                if limit and rows >= limit:
                    break
        tokens = chars / CHARS_PER_TOKEN / max(rows, 1)
    elif src.get("hf") in HUB_DATASETS:
        info = HUB_DATASETS[src["hf"]]
        rows = info["rows"].get(src.get("split", "train"), max(info["rows"].values()))
        tokens = float(info["tokens"]) * len(text_keys)
    else:  # unknown until the data stage has run
        rows, tokens = 1000, 100.0
    if limit:
        rows = min(rows, int(limit))
    return rows, tokens


def gpu_hours(params_b: float, forward_tokens: float, generated_tokens: float) -> float:
    fwd, gen = _nearest(THROUGHPUT, params_b)
    return (forward_tokens / fwd + generated_tokens / gen) / 3600.0


# ---------------------------------------------------------------- the plan


def _pairs(config: Mapping, study: str) -> list[str]:
    from rlhf_audit.config import study_pairs

    return study_pairs(config, study)


def estimate(config: Mapping) -> dict[str, StageCost]:
    """Tokens, bytes, calls and GPU hours per stage for a validated (defaulted) config."""
    from rlhf_audit.config import EXTRACT_STUDIES

    out = {s: StageCost(s) for s in STAGES}
    models = config.get("models") or {}
    org_layers = (config.get("organism") or {}).get("n_layers", 4)
    shapes = {name: model_shape(spec, org_layers) for name, spec in models.items()}
    datasets = config.get("datasets") or {}
    ext = config["extract"]

    extract_models = sorted({config["model_pairs"][p][r] for s in EXTRACT_STUDIES
                             for p in _pairs(config, s) for r in ("base", "instruct")})
    if extract_models and ext["dataset"] in datasets:
        n, tok = dataset_size(datasets[ext["dataset"]], ("text",))
        tok = min(tok + CHAT_OVERHEAD_TOKENS, ext["max_length"])
        saes = config["sae"]["saes"] if _pairs(config, "sae") else {}
        token_layers = len({s["layer"] for s in saes.values()})
        for m in extract_models:
            sh = shapes[m]
            layers = sh["n_layers"] if ext["layers"] == "all" else len(ext["layers"])
            c = out["extract"]
            c.forward_tokens += int(n * tok)
            c.activation_bytes += extraction_bytes(n, n * tok, layers, len(ext["positions"]),
                                                   token_layers, sh["d_model"], ext["dtype"])
            c.gpu_hours += gpu_hours(sh["params_b"], n * tok, 0)

    s = config["steering"]
    for pair in _pairs(config, "steering"):
        n_q = s["n_questions"] or N_POLICY_QUESTIONS
        n_pq = s.get("n_prime_questions") or N_POLICY_QUESTIONS
        n_vec = 2 + (s["n_sae_features"] if _pairs(config, "sae") and config["sae"]["saes"] else 0)
        settings = 1 + 2 * len(s["alphas"]) * n_vec
        gens = (n_q * settings + PRIME_CONDITIONS * n_pq) * s["samples"]
        for role in ("base", "instruct"):
            sh = shapes[config["model_pairs"][pair][role]]
            c = out["steering"]
            c.forward_tokens += gens * 40
            c.generated_tokens += gens * s["max_new_tokens"]
            c.gpu_hours += gpu_hours(sh["params_b"], gens * 40, gens * s["max_new_tokens"])
            # scoring: the base model's projection and the judge read every generation
            judge = s.get("judge") or {}
            scored = gens * (40 + s["max_new_tokens"])
            c.forward_tokens += 2 * scored
            c.gpu_hours += gpu_hours(shapes[config["model_pairs"][pair]["base"]]["params_b"],
                                     scored, 0)
            if judge.get("kind") == "hf" and judge.get("model") in shapes:
                jgen = gens * (judge.get("max_new_tokens", 64)
                               if judge.get("method", "generate") == "generate" else 0)
                c.generated_tokens += jgen
                c.gpu_hours += gpu_hours(shapes[judge["model"]]["params_b"], scored, jgen)
            elif judge.get("kind") == "openai":
                c.labeller_calls += gens

    cal = config["calibration"]
    for pair in _pairs(config, "calibration"):
        if cal["dataset"] not in datasets:
            continue
        n, tok = dataset_size(datasets[cal["dataset"]], ("question",))
        gens = n * len(cal["levels"]) * len(cal["strategies"])
        for role in ("base", "instruct"):
            sh = shapes[config["model_pairs"][pair][role]]
            c = out["calibration"]
            prompt = tok + 60  # the strategy's confidence sentence and instructions
            c.forward_tokens += int(gens * prompt)
            c.generated_tokens += gens * cal["max_new_tokens"]
            c.gpu_hours += gpu_hours(sh["params_b"], gens * prompt, gens * cal["max_new_tokens"])

    r = config["reward"]
    rpairs = _pairs(config, "reward")
    if rpairs and r["dataset"] in datasets:
        n, tok = dataset_size(datasets[r["dataset"]], ("chosen", "rejected"))
        tok = tok / 2 if r["max_length"] is None else min(tok / 2, r["max_length"])
        rewrite = r["rewrite"]["kind"] != "none"
        n_rw = max(1, round(r["rewrite"]["share"] * n)) if rewrite else 0
        texts = 2 * (n + n_rw)
        rms = sorted({config["reward_pairs"][p][k] for p in rpairs for k in ("pre", "post")})
        c = out["reward"]
        for _ in rms:
            c.forward_tokens += int(texts * tok)
            c.gpu_hours += gpu_hours(REWARD_MODEL_PARAMS, texts * tok, 0)
        lab = r["labeller"]
        if lab["kind"] == "lm":
            c.labeller_calls += texts
            if lab["lm"]["kind"] == "hf" and lab["lm"].get("model") in shapes:
                gen = texts * lab["lm"].get("max_new_tokens", 64)
                c.generated_tokens += gen
                c.gpu_hours += gpu_hours(shapes[lab["lm"]["model"]]["params_b"], texts * tok, gen)
        if r["rewrite"]["kind"] == "lm":
            c.labeller_calls += 2 * n_rw

    _add_jobs_estimate(config, out)
    return out


def _add_jobs_estimate(config: Mapping, out: dict[str, StageCost]) -> None:
    """Job counts from the config alone (the CLI replaces them by Snakemake's dry run)."""
    from rlhf_audit.config import EXTRACT_STUDIES

    lm_models = {config["model_pairs"][p][r] for s in EXTRACT_STUDIES
                 for p in _pairs(config, s) for r in ("base", "instruct")}
    out["extract"].jobs = len(lm_models) * (config["extract"]["shards"] + 1)
    out["partisan"].jobs = 2 * len(_pairs(config, "partisan"))
    n_sae = len(config["sae"]["saes"])
    out["sae"].jobs = len(_pairs(config, "sae")) * n_sae * 4
    out["steering"].jobs = len(_pairs(config, "steering")) * 10
    out["calibration"].jobs = len(_pairs(config, "calibration")) * 4
    rp = _pairs(config, "reward")
    if rp:
        variants = 2 if config["reward"]["rewrite"]["kind"] != "none" else 1
        rms = {config["reward_pairs"][p][k] for p in rp for k in ("pre", "post")}
        out["reward"].jobs = (len(rms) * variants + variants + (variants - 1)
                              + 2 * len(rp))
    out["report"].jobs = 1


RULE_STAGES = {
    "normalise_dataset": "data", "extract_activations": "extract",
    "write_activation_manifest": "extract", "fit_partisan_probes": "partisan",
    "plot_partisan": "partisan", "scan_sae_features": "sae", "select_policy_features": "sae",
    "plot_sae": "sae", "train_organism_sae": "sae", "generate_steering": "steering",
    "generate_primes": "steering",
    "score_steering": "steering", "analyse_steering": "steering", "plot_steering": "steering",
    "generate_calibration": "calibration", "score_calibration": "calibration",
    "plot_calibration": "calibration", "score_rewards": "reward", "label_texts": "reward",
    "rewrite_pairs": "reward", "analyse_rewards": "reward", "plot_rewards": "reward",
    "collect_headline": "report",
}


def stage_of_rule(rule: str) -> str:
    if rule in RULE_STAGES:
        return RULE_STAGES[rule]
    if "diff" in rule or "crosscoder" in rule:
        return "diffing"
    return "organism" if "organism" in rule else "other"


def dag_jobs(snakefile: Path, configfile: str | None, workdir: Path) -> dict[str, int] | None:
    """Jobs per stage from Snakemake's dry run of everything (-F), or None if it fails."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "-n",
           "-F", "--cores", "1", "--quiet", "rules"]
    if configfile:
        cmd += ["--configfile", configfile]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("snakemake dry run failed: %s", (res.stderr or res.stdout)[-2000:])
        return None
    jobs: dict[str, int] = {}
    text = res.stdout + res.stderr
    # The dry run prints its job table twice (before and after): read the first.
    table = text.split("Job stats:", 1)[-1].split("total", 1)[0]
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "all", "job"):
            stage = stage_of_rule(parts[0])
            jobs[stage] = jobs.get(stage, 0) + int(parts[1])
    return jobs


def format_plan(costs: Mapping[str, StageCost]) -> str:
    rows = [c for c in costs.values() if c.jobs or c.forward_tokens or c.labeller_calls]
    head = ("stage", "jobs", "forward tokens", "generated tokens", "activations",
            "labeller calls", "GPU hours")

    def human(b: int) -> str:
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if b < 1000 or unit == "TB":
                return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
            b /= 1000
        return str(b)

    body = [(c.stage, str(c.jobs), f"{c.forward_tokens:,}", f"{c.generated_tokens:,}",
             human(c.activation_bytes), f"{c.labeller_calls:,}", f"{c.gpu_hours:.2f}")
            for c in rows]
    total = StageCost("total", *(sum(getattr(c, f) for c in rows) for f in
                                 ("jobs", "forward_tokens", "generated_tokens",
                                  "activation_bytes", "labeller_calls", "gpu_hours")))
    body.append((total.stage, str(total.jobs), f"{total.forward_tokens:,}",
                 f"{total.generated_tokens:,}", human(total.activation_bytes),
                 f"{total.labeller_calls:,}", f"{total.gpu_hours:.2f}"))
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(r, widths, strict=True))) for r in [head, *body]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("GPU hours: planning throughputs of rlhf_audit.plan.THROUGHPUT (one "
                 "A100/H100-class GPU, bf16), not measurements; see benchmarks/bench_paper.py.")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", help="config YAML (default: the embedded config.yaml)")
    ap.add_argument("--workdir", default=".", help="the checkout (Snakefile, schema)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--no-dag", action="store_true",
                    help="estimate jobs from the config instead of Snakemake's dry run")
    args = ap.parse_args(argv)
    import yaml

    from rlhf_audit.config import ConfigError, load_schema, validate_config

    root = Path(args.workdir)
    path = Path(args.configfile) if args.configfile else root / "config.yaml"
    try:
        config = validate_config(yaml.safe_load(path.read_text()) or {},
                                 load_schema(root / "workflow/schemas/config.schema.yaml"),
                                 source=str(path))
    except ConfigError as err:
        sys.stderr.write(f"{err}\n")
        return 2
    costs = estimate(config)
    if not args.no_dag:
        jobs = dag_jobs(root / "Snakefile", args.configfile, root)
        if jobs is not None:
            for c in costs.values():
                c.jobs = jobs.pop(c.stage, 0)
            for stage, n in jobs.items():
                costs[stage] = StageCost(stage, jobs=n)
    if args.json:
        sys.stdout.write(json.dumps({k: asdict(v) for k, v in costs.items()}, indent=1) + "\n")
    else:
        sys.stdout.write(f"plan for {path}\n{format_plan(costs)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
