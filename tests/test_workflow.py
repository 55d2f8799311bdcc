"""The workflow end to end: a real (small) organism run, then what reruns after edits.

The run happens once per session in a temporary copy of the code (Snakefile,
workflow/, scripts/, src/), so tests can edit code and configs without touching
the checkout; jobs import the copied library (PYTHONPATH), and the code hash
the rules carry is computed from the copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SMALL = ROOT / "tests/configs/organism_small.yaml"


def copy_code(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for d in ("workflow", "scripts", "src", "profiles"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "resources").symlink_to(ROOT / "resources")
    shutil.copy(ROOT / "config.yaml", dest / "config.yaml")
    return dest


def env_for(code: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code / "src")
    env.setdefault("SLURM_CONF", os.devnull)
    return env


def snakemake(code: Path, *args, check=True, timeout=1500) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-s", str(code / "Snakefile"), "-d", str(code), *args]
    out = subprocess.run(cmd, cwd=code, env=env_for(code), capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}")
    return out


def plan(code: Path, *args) -> dict[str, int]:
    """Rule -> number of jobs a dry run plans ({} when nothing is to be done)."""
    out = snakemake(code, "-n", "--cores", "1", *args)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", text, re.S)
    assert m, text[-3000:]
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).strip().splitlines()}


@pytest.fixture(scope="session")
def organism_run(tmp_path_factory):
    """The small organism scenario, run once to completion; yields the code copy."""
    code = copy_code(tmp_path_factory.mktemp("run") / "code")
    t = time.perf_counter()
    snakemake(code, "--cores", "2", "--configfile", str(SMALL))
    (code / "run_seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
    return code


def test_default_config_plans_every_stage(tmp_path):
    code = copy_code(tmp_path / "code")
    jobs = plan(code)
    for rule in ("train_organism_base", "train_organism_instruct", "extract_activations",
                 "fit_partisan_probes", "train_organism_sae", "select_policy_features",
                 "generate_steering", "score_steering", "generate_calibration",
                 "score_rewards", "analyse_rewards", "collect_headline"):
        assert jobs.get(rule), f"{rule} missing from the default plan: {jobs}"
    assert jobs["train_organism_reward_model"] == 2


def test_paper_config_dry_runs_with_real_model_dag(tmp_path):
    code = copy_code(tmp_path / "code")
    jobs = plan(code, "--configfile", str(ROOT / "configs/paper.yaml"))
    assert "train_organism_base" not in jobs  # real models: nothing to train
    assert jobs["extract_activations"] == 2 * 8  # Llama-3.1-8B pair x 8 shards
    assert jobs["scan_sae_features"] == 2 * 2  # two SAEs x base/instruct
    assert jobs["generate_calibration"] == 2
    assert jobs["score_rewards"] == 2 * 2  # pre/post x original/rewritten


def test_run_completes_and_a_rerun_does_nothing(organism_run):
    code = organism_run
    t = time.perf_counter()
    out = snakemake(code, "--cores", "1", "--configfile", str(SMALL))
    took = time.perf_counter() - t
    assert "Nothing to be done" in out.stdout + out.stderr
    assert took < 30, f"a no-op rerun took {took:.1f} s"


def test_headline_keys_are_present_documented_and_carry_intervals(organism_run):
    from rlhf_audit.report import documented_key

    doc = json.loads((organism_run / "results/headline.json").read_text())
    numbers = doc["numbers"]
    studies = {k.split(".")[0] for k in numbers}
    assert studies == {"organism", "partisan", "sae", "steering", "calibration", "reward"}
    for key, rec in numbers.items():
        assert documented_key(key), f"{key} is not documented in docs/headline.md"
        assert rec["description"], key
        assert {"value", "lo", "hi", "n", "unit"} <= set(rec), key
    # the documentation covers what a default run produces, nothing undocumented
    assert (ROOT / "docs/headline.md").read_text().count("`") > 50


def test_claims_table_is_labelled_as_organism_results(organism_run):
    md = (organism_run / "results/claims.md").read_text()
    assert "ORGANISM RESULTS" in md.splitlines()[0]
    claims = pl.read_parquet(organism_run / "results/claims.parquet")
    assert (claims["published_in_interval"] != "not run").all()


def test_editing_probe_params_reruns_probes_and_descendants_not_extraction(organism_run):
    jobs = plan(organism_run, "--configfile", str(SMALL), "--config", "partisan={'n_folds': 4}")
    assert set(jobs) == {"fit_partisan_probes", "plot_partisan", "generate_steering",
                         "score_steering", "analyse_steering", "plot_steering",
                         "collect_headline", "all"}, jobs
    assert jobs["generate_steering"] == 2 and jobs["score_steering"] == 4


def test_changing_steering_alphas_regenerates_only_steering(organism_run):
    jobs = plan(organism_run, "--configfile", str(SMALL), "--config",
                "steering={'alphas': [0.5, 1.0, 2.0]}")
    assert set(jobs) == {"generate_steering", "score_steering", "analyse_steering",
                         "plot_steering", "collect_headline", "all"}, jobs


def test_changing_the_judge_rescores_without_regenerating(organism_run):
    jobs = plan(organism_run, "--configfile", str(SMALL), "--config",
                "steering={'judge': {'kind': 'hf', 'model': 'organism_instruct', "
                "'method': 'generate'}}")
    assert "generate_steering" not in jobs
    assert jobs == {"score_steering": 2, "analyse_steering": 1, "plot_steering": 1,
                    "collect_headline": 1, "all": 1}, jobs


def test_editing_one_figure_script_reruns_that_figure_only(organism_run):
    script = organism_run / "scripts/plot_partisan.py"
    original = script.read_text()
    try:
        script.write_text(original + "\n# a real edit\n")
        assert plan(organism_run, "--configfile", str(SMALL)) == {"plot_partisan": 1, "all": 1}
        script.write_text(original)
        os.utime(script)  # touched but unchanged: nothing reruns
        assert plan(organism_run, "--configfile", str(SMALL)) == {}
    finally:
        script.write_text(original)


def test_editing_a_library_module_reruns_the_rules_that_import_it(organism_run):
    module = organism_run / "src/rlhf_audit/partisan.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# a real edit\n")
        jobs = plan(organism_run, "--configfile", str(SMALL))
        assert "fit_partisan_probes" in jobs and "plot_partisan" in jobs
        assert not {"extract_activations", "train_organism_base", "score_rewards",
                    "generate_calibration"} & set(jobs), jobs
    finally:
        module.write_text(original)


def test_report_builds(organism_run):
    out = organism_run / "report.html"
    snakemake(organism_run, "--cores", "1", "--configfile", str(SMALL), "--report", str(out))
    text = out.read_text()
    assert out.stat().st_size > 50_000 and "The Neutral Mask" in text


def test_every_table_carries_provenance(organism_run):
    from rlhf_audit.io import read_provenance

    tables = [p for p in (organism_run / "results").rglob("*.parquet")
              if "activations" not in p.parts]
    assert len(tables) > 20
    for p in tables:
        prov = read_provenance(p)
        if "organism" in p.parts and "data" in p.parts:
            continue  # generator outputs record their generator only
        assert prov.get("git_commit") and prov.get("libraries"), p


def test_headline_doc_is_in_sync_with_the_study_modules():
    from rlhf_audit.report import headline_doc

    assert (ROOT / "docs/headline.md").read_text() == headline_doc(), (
        "docs/headline.md is stale: run `python -m rlhf_audit.report`")
