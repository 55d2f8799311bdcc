"""A tiny scenario of the whole workflow with no organism training: random tiny
Llama LMs and reward models saved as HF directories, a tiny SAE trained with
sae-lens, and generated GSM8K and hh-rlhf files in the users' formats. Every
stage runs for real on it in about a minute; the numbers mean nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from tiny import save_tiny_llama, save_tiny_reward_model


def make_tiny_scenario(workdir: Path, n_statements: int = 160) -> Path:
    """Write models, data and a config under ``workdir/scenario``; return the config path.

    Paths in the config are relative to ``workdir`` (the workflow's working
    directory), so two scenarios built in different places give identical runs."""
    root = workdir / "scenario"
    from rlhf_audit.organism import hh, write_jsonl
    from rlhf_audit.organism.gsm8k import generate_problems
    from rlhf_audit.sae import SAESettings, train_sae

    m = root / "models"
    save_tiny_llama(m / "base", seed=0, n_layers=3)
    save_tiny_llama(m / "instruct", seed=1, n_layers=3)
    save_tiny_reward_model(m / "rm_pre", seed=0)
    save_tiny_reward_model(m / "rm_post", seed=1)
    rng = np.random.default_rng(0)
    train_sae(rng.normal(size=(4000, 32)).astype(np.float32), m / "sae",
              SAESettings(layer=1, d_sae=64, k=4, training_tokens=8000, batch_size=256))
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(({"id": p["id"], "question": p["question"], "answer": p["answer"]}
                 for p in generate_problems(8, seed=0)), d / "gsm8k.jsonl")
    pairs = hh.generate_pairs(40, seed=0)
    hh.write_hh_jsonl(pairs, d / "hh.jsonl")
    hh.write_hh_labels(pairs, d / "hh_labels.parquet")
    def rel(p: Path) -> str:
        return str(p.relative_to(workdir))

    features = ["refusal", "helpful", "harmless", "honest", "coherent", "eloquent",
                "sentiment"]
    cfg = {
        "run_label": "tiny-scenario",
        "device": "cpu",
        "models": {"tiny_base": {"path": rel(m / "base")},
                   "tiny_instruct": {"path": rel(m / "instruct")}},
        "reward_models": {"tiny_pre": {"path": rel(m / "rm_pre")},
                          "tiny_post": {"path": rel(m / "rm_post")}},
        "model_pairs": {"tiny": {"base": "tiny_base", "instruct": "tiny_instruct"}},
        "reward_pairs": {"tiny": {"pre": "tiny_pre", "post": "tiny_post"}},
        "datasets": {
            "partisan": {"format": "partisan", "limit": n_statements,
                         "source": {"path": "resources/prompts/partisan_statements.jsonl"}},
            "gsm8k": {"format": "gsm8k", "source": {"path": rel(d / "gsm8k.jsonl")}},
            "hh_rlhf": {"format": "hh_rlhf", "source": {"path": rel(d / "hh.jsonl")}},
        },
        "organism": {"enabled": False},
        "extract": {"shards": 2, "max_length": 64, "batch_size": 32},
        "partisan": {"n_boot": 100, "n_folds": 3},
        "sae": {"saes": {"tiny_sae": {"path": rel(m / "sae"), "layer": 1}}, "n_boot": 100},
        "steering": {"layer": 1, "alphas": [1.0], "n_questions": 3, "n_prime_questions": 5,
                     "max_new_tokens": 4,
                     "n_boot": 100, "judge": {"kind": "hf", "model": "tiny_instruct",
                                              "method": "logits"}},
        "calibration": {"levels": [0.3, 0.7], "max_new_tokens": 6, "n_boot": 100},
        "diffing": {"layer": 1, "n_latents": 64, "k": 4, "training_tokens": 20000, "n_seeds": 2,
                    "n_boot": 100, "diff_sae": {"n_latents": 64, "k": 4, "training_tokens": 10000},
                    "steer": {"alphas": [1.0], "n_questions": 3, "max_new_tokens": 4}},
        "reward": {"labeller": {"kind": "file", "path": rel(d / "hh_labels.parquet")},
                   "rewrite": {"kind": "none"}, "features": features,
                   "target_features": ["helpful", "harmless"],
                   "spoiler_features": ["sentiment", "eloquent"], "n_boot": 100,
                   "max_length": 128},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
