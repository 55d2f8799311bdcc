"""`make plan`: the cost of a config before it runs, and the extraction disk check."""

from __future__ import annotations

import copy
import json
from collections import namedtuple
from pathlib import Path

import polars as pl
import pytest
import yaml

from rlhf_audit import plan
from rlhf_audit.config import load_schema, validate_config
from rlhf_audit.extract import ExtractSettings, disk

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")


def lm_config(tmp_path, n_rows=50, chars=40, **extra):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": i, "text": "x" * chars, "label": "left"}) + "\n"
                         for i in range(n_rows)))
    cfg = {"studies": ["partisan"],
           "models": {"b": {"hf": "org/Base-8B"}, "i": {"hf": "org/Instruct-8B"}},
           "model_pairs": {"p": {"base": "b", "instruct": "i"}},
           "datasets": {"partisan": {"format": "partisan", "source": {"path": str(f)}}},
           "extract": {"dtype": "float16", "max_length": 512}}
    cfg.update(extra)
    return validate_config(copy.deepcopy(cfg), SCHEMA)


def test_extraction_bytes_and_tokens_follow_the_config(tmp_path):
    cfg = lm_config(tmp_path)
    costs = plan.estimate(cfg)
    tok = 40 / plan.CHARS_PER_TOKEN + plan.CHAT_OVERHEAD_TOKENS  # 22 tokens a prompt
    assert costs["extract"].forward_tokens == pytest.approx(2 * 50 * tok, abs=2)
    # An 8B model by name: 32 layers x 4096; 2 positions; float16; no SAE layers chosen.
    assert costs["extract"].activation_bytes == 2 * int(50 * 32 * 2 * 4096 * 2 * 1.05)
    assert costs["steering"].forward_tokens == 0 and costs["reward"].labeller_calls == 0
    assert costs["extract"].gpu_hours == pytest.approx(2 * 50 * tok / 7000 / 3600, rel=1e-6)


def test_layers_and_shapes_from_a_local_model(tmp_path):
    from tiny import save_tiny_llama

    d = save_tiny_llama(tmp_path / "m", n_layers=3, hidden=32)
    cfg = lm_config(tmp_path, models={"b": {"path": str(d)}, "i": {"path": str(d)}},
                    extract={"dtype": "float32", "layers": [0, 2], "positions": ["last"]})
    assert plan.estimate(cfg)["extract"].activation_bytes == 2 * int(50 * 2 * 1 * 32 * 4 * 1.05)


def test_reward_plan_counts_labeller_calls_for_every_text():
    cfg = validate_config({
        "studies": ["reward"],
        "reward_models": {"a": {"hf": "x/a"}, "b": {"hf": "x/b"}},
        "reward_pairs": {"r": {"pre": "a", "post": "b"}},
        "datasets": {"hh_rlhf": {"format": "hh_rlhf", "source": {"hf": "Anthropic/hh-rlhf"},
                                 "limit": 1000}},
        "reward": {"labeller": {"kind": "lm", "lm": {"kind": "openai", "model": "m",
                                                     "base_url": "http://h/v1"}},
                   "rewrite": {"kind": "lm", "share": 0.1,
                               "lm": {"kind": "openai", "model": "m", "base_url": "http://h/v1"}}},
    }, SCHEMA)
    c = plan.estimate(cfg)["reward"]
    # 1000 pairs + 100 rewritten, two sides each, labelled once; 100 pairs x 2 rewritten.
    assert c.labeller_calls == 2 * 1100 + 2 * 100
    assert c.forward_tokens == 2 * 2 * 1100 * 230


def test_paper_plan_prints_every_stage():
    cfg = validate_config(yaml.safe_load((ROOT / "configs/paper.yaml").read_text()), SCHEMA)
    text = plan.format_plan(plan.estimate(cfg))
    for stage in ("extract", "steering", "calibration", "reward", "total", "GPU hours"):
        assert stage in text


Config = namedtuple("Config", "num_hidden_layers hidden_size")


def test_extraction_fails_early_with_the_numbers_when_the_disk_is_short(tmp_path, monkeypatch):
    prompts = pl.DataFrame({"text": ["a few words here"] * 100})
    settings = ExtractSettings(layers="all", positions=("last", "mean"), dtype="float16",
                               max_length=64)
    need = plan.check_extraction_disk(tmp_path / "s.parquet", prompts, settings,
                                      Config(32, 4096), reserve_bytes=0)
    assert need == int(100 * 32 * 2 * 4096 * 2 * 1.05)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: Usage(10**9, 0, need - 1))
    with pytest.raises(plan.DiskSpaceError, match=r"s.parquet: this shard needs about 0.06 GB "
                                                  r"\(100 prompts x 32 layers.*GB free"):
        plan.check_extraction_disk(tmp_path / "s.parquet", prompts, settings, Config(32, 4096),
                                   reserve_bytes=0)


def test_cli_counts_jobs_from_the_dag(tmp_path, capsys):
    cfg = {"studies": ["partisan"],
           "models": {"b": {"hf": "org/Base-8B"}, "i": {"hf": "org/Instruct-8B"}},
           "model_pairs": {"p": {"base": "b", "instruct": "i"}},
           "datasets": {"partisan": {"format": "partisan",
                                     "source": {"path": "resources/prompts/partisan_statements.jsonl"}}},
           "extract": {"shards": 3}}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert plan.main(["--configfile", str(f), "--workdir", str(ROOT), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["extract"]["jobs"] == 2 * 3 + 2  # shards and a manifest per model
    assert out["partisan"]["jobs"] == 2 and out["reward"]["jobs"] == 0


def test_paper_benchmark_small_size_prints_rates_and_the_paper_estimate():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "benchmarks/bench_paper.py", "--size", "small",
                          "--batches", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    print(out.stdout)  # the figures, for the CI log
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for stage in ("extract_8b", "generate_8b", "sae_scan_8b", "generate_3b", "reward_deberta"):
        assert stage in out.stdout
    assert "estimate of a full configs/paper.yaml run" in out.stdout
