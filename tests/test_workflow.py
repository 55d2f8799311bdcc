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

# Minutes of CPU: `make test-fast` leaves this file out; `make test` and CI run it.
pytestmark = pytest.mark.slow

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


def override(code: Path, name: str, values: dict) -> str:
    """A config file holding only ``values``, merged over the scenario's config when
    passed after it to --configfile."""
    import yaml

    path = code / f"override_{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def plan(code: Path, *args) -> dict[str, int]:
    """Rule -> number of jobs a dry run plans ({} when nothing is to be done)."""
    out = snakemake(code, "-n", "--cores", "1", *args)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+\d+", text, re.S)
    assert m, text[-3000:]
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).strip().splitlines()}


def run_tiny(code: Path) -> Path:
    """Make the tiny scenario (tests/scenario.py) inside ``code`` and run it there."""
    from scenario import make_tiny_scenario

    cfg = make_tiny_scenario(code)
    snakemake(code, "--cores", "2", "--configfile", str(cfg))
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Every stage but organism training, on tiny random models; yields (code, config)."""
    code = copy_code(tmp_path_factory.mktemp("tiny") / "code")
    return code, run_tiny(code)


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
                 "generate_steering", "generate_primes", "score_steering", "generate_calibration",
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
    assert studies == {"organism", "partisan", "sae", "steering", "calibration", "reward", "diffing"}
    for key, rec in numbers.items():
        assert documented_key(key), f"{key} is not documented in docs/headline.md"
        assert rec["description"], key
        assert {"value", "lo", "hi", "n", "unit"} <= set(rec), key
    # the documentation covers what a default run produces, nothing undocumented
    assert (ROOT / "docs/headline.md").read_text().count("`") > 50


def test_the_diffing_direction_is_the_partisan_studys_where_both_read_the_same_tokens(
        organism_run):
    """Known answer through the rules: the organism's base reads the bare statements in its
    own extraction and in diffing.context raw, so the direction fitted on the paired file
    (the statements' content tokens, pooled) is the partisan study's own, to rounding."""
    summ = json.loads((organism_run / "results/diffing/organism/summary.json").read_text())
    pdir = summ["partisan_direction"]
    assert summ["context"]["context"] == "raw" and pdir["method"] == "diffmean"
    assert pdir["source"] == "paired" and pdir["n_left"] > 0 and pdir["n_right"] > 0
    doc = json.loads((organism_run / "results/headline.json").read_text())["numbers"]
    agree = doc["diffing.organism.partisan_direction_cos_study"]
    assert agree["value"] > 0.9999 and agree["n"] == pdir["n_left"] + pdir["n_right"], agree


def test_claims_table_is_labelled_as_organism_results(organism_run):
    md = (organism_run / "results/claims.md").read_text()
    assert "ORGANISM RESULTS" in md.splitlines()[0]
    claims = pl.read_parquet(organism_run / "results/claims.parquet")
    ran = claims.filter(pl.col("published_in_interval") != "not run")
    # "organism": the planted row on the organism's own checks (the post RM's taste);
    # "diffing": the planted rows on the crosscoder's reconstructions
    assert set(ran["study"]) == {"partisan", "sae", "steering", "calibration", "reward",
                                 "organism", "diffing"}
    # similarity needs an embedding model, which the default config does not name
    not_run = claims.filter(pl.col("published_in_interval") == "not run")["key"].to_list()
    assert "rewrite_similarity" in not_run


def test_editing_the_planted_file_rebuilds_the_claims_table_only(organism_run):
    """The planted values are an input of the claims table: an edit rebuilds it, and nothing
    upstream (the path alone was a parameter, and an edited file went unnoticed)."""
    code = organism_run
    planted = code / "planted_copy.yaml"
    text = (ROOT / "resources/organism/planted.yaml").read_text()
    planted.write_text(text)
    over = override(code, "planted", {"organism": {"planted": str(planted)}})
    try:
        snakemake(code, "--cores", "1", "--configfile", str(SMALL), over)
        assert plan(code, "--configfile", str(SMALL), over) == {}
        assert "> 0.85" in text
        planted.write_text(text.replace("> 0.85", "> 0.9", 1))
        assert plan(code, "--configfile", str(SMALL), over) == {"collect_headline": 1, "all": 1}
    finally:  # back to the shipped file, for the tests that read the run afterwards
        snakemake(code, "--cores", "1", "--configfile", str(SMALL))


def test_editing_probe_params_reruns_probes_and_descendants_not_extraction(tiny_run):
    code, cfg = tiny_run
    jobs = plan(code, "--configfile", str(cfg),
                override(code, "folds", {"partisan": {"n_folds": 2}}))
    assert set(jobs) == {"fit_partisan_probes", "plot_partisan", "build_steering_vectors",
                         "generate_steering", "score_steering", "analyse_steering",
                         # the diffing analysis fits its own direction: only the summary's
                         # comparison with the partisan study's reruns
                         "plot_steering", "summarise_diffing", "collect_headline", "all"}, jobs
    assert jobs["generate_steering"] == 2 and jobs["score_steering"] == 4


def test_changing_steering_alphas_regenerates_only_the_sweep(tiny_run):
    code, cfg = tiny_run
    jobs = plan(code, "--configfile", str(cfg),
                override(code, "alphas", {"steering": {"alphas": [0.5, 1.0]}}))
    # the identity primes read no vector or alpha: generate_primes is not replanned
    assert set(jobs) == {"generate_steering", "score_steering", "analyse_steering",
                         "plot_steering", "collect_headline", "all"}, jobs


def test_primes_read_their_own_questions_and_changing_them_keeps_vectors_and_sweep(tiny_run):
    # tests/scenario.py: the sweep steers on 3 questions (2 issues), the primes read 5
    # (3 issues: one the sweep never asks, which the projection scorer must still score)
    code, cfg = tiny_run
    import polars as pl

    for role in ("base", "instruct"):
        d = code / "results/steering/tiny/" / role
        sweep = pl.read_parquet(d / "sweep.parquet")
        assert sweep["question_id"].n_unique() == 3
        primes = pl.read_parquet(d / "primes.parquet")
        assert primes["question_id"].n_unique() == 5
        assert set(primes["issue"]) > set(sweep["issue"])
        assert set(primes["condition"]) == {"none", "left", "right", "persona"}
        scored = pl.concat([primes, pl.read_parquet(d / "primes_scores_projection.parquet")],
                           how="horizontal")
        unswept = scored.filter(~pl.col("issue").is_in(sweep["issue"].unique().to_list()))
        assert unswept.height and unswept["projection"].is_finite().any()
    jobs = plan(code, "--configfile", str(cfg),
                override(code, "nprime", {"steering": {"n_prime_questions": 2}}))
    # the sweep (161 generations a question, against 4 for the primes) is not replanned
    assert jobs == {"generate_primes": 2, "score_steering": 4, "analyse_steering": 1,
                    "plot_steering": 1, "collect_headline": 1, "all": 1}, jobs


def test_changing_the_judge_rescores_without_regenerating(tiny_run):
    code, cfg = tiny_run
    judge = {"kind": "hf", "model": "tiny_instruct", "method": "generate"}
    jobs = plan(code, "--configfile", str(cfg),
                override(code, "judge", {"steering": {"judge": judge}}))
    assert "generate_steering" not in jobs and "generate_primes" not in jobs
    assert jobs == {"score_steering": 2, "analyse_steering": 1, "plot_steering": 1,
                    "collect_headline": 1, "all": 1}, jobs


def test_editing_one_figure_script_reruns_that_figure_only(tiny_run):
    code, cfg = tiny_run
    script = code / "scripts/plot_partisan.py"
    original = script.read_text()
    try:
        script.write_text(original + "\n_A_REAL_EDIT = 1  # code, not a comment: the code hash ignores comments\n")
        assert plan(code, "--configfile", str(cfg)) == {"plot_partisan": 1, "all": 1}
        script.write_text(original)
        os.utime(script)  # touched but unchanged: nothing reruns
        assert plan(code, "--configfile", str(cfg)) == {}
    finally:
        script.write_text(original)


def test_editing_a_library_module_reruns_the_rules_that_import_it(tiny_run):
    code, cfg = tiny_run
    module = code / "src/rlhf_audit/partisan.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n_A_REAL_EDIT = 1  # code, not a comment: the code hash ignores comments\n")
        jobs = plan(code, "--configfile", str(cfg))
        assert "fit_partisan_probes" in jobs and "plot_partisan" in jobs
        assert not {"extract_activations", "score_rewards", "generate_calibration",
                    "scan_sae_features"} & set(jobs), jobs
    finally:
        module.write_text(original)


@pytest.mark.parametrize("module,expected", [
    # a steering figure: the figure only
    ("src/rlhf_audit/steering/figures.py", {"plot_steering"}),
    # the steering analysis: reanalysis, never regeneration or rescoring
    ("src/rlhf_audit/steering/analysis.py",
     {"analyse_steering", "plot_steering", "collect_headline"}),
    # the judge's settings: rescoring by the judge, never regeneration
    ("src/rlhf_audit/steering/judging.py",
     {"score_steering", "analyse_steering", "plot_steering", "collect_headline"}),
    # a claim's wording: the claims table only
    ("src/rlhf_audit/claims.py", {"collect_headline"}),
    # the confidence parser: rescoring, never regeneration
    ("src/rlhf_audit/calibration/confidence.py",
     {"score_calibration", "plot_calibration", "collect_headline"}),
    # the reward analysis: refit, never rescoring or relabelling
    ("src/rlhf_audit/reward/analysis.py",
     {"analyse_rewards", "plot_rewards", "collect_headline"}),
])
def test_a_library_edit_plans_exactly_its_jobs(tiny_run, module, expected):
    code, cfg = tiny_run
    path = code / module
    original = path.read_text()
    try:
        path.write_text(original + "\n_A_REAL_EDIT = 1  # code, not a comment: the code hash ignores comments\n")
        assert set(plan(code, "--configfile", str(cfg))) == expected | {"all"}
    finally:
        path.write_text(original)


def test_changing_n_boot_reruns_analyses_not_generation(tiny_run):
    code, cfg = tiny_run
    jobs = plan(code, "--configfile", str(cfg),
                override(code, "nboot", {"steering": {"n_boot": 200},
                                         "calibration": {"n_boot": 200}}))
    assert set(jobs) == {"analyse_steering", "plot_steering", "score_calibration",
                         "plot_calibration", "collect_headline", "all"}, jobs


def test_report_builds(tiny_run):
    code, cfg = tiny_run
    out = code / "report.html"
    snakemake(code, "--cores", "1", "--configfile", str(cfg), "--report", str(out))
    text = out.read_text()
    assert out.stat().st_size > 50_000 and "The Neutral Mask" in text


def test_every_table_carries_provenance(tiny_run):
    from rlhf_audit.io import read_provenance

    code, _ = tiny_run
    tables = [p for p in (code / "results").rglob("*.parquet")]
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


def test_two_runs_from_scratch_are_identical_bit_for_bit(tiny_run, tmp_path):
    code1, _ = tiny_run
    code2 = copy_code(tmp_path / "code")
    run_tiny(code2)  # same scenario, rebuilt from scratch in another place

    def tables(code):
        return {p.relative_to(code): p for p in (code / "results").rglob("*.parquet")}

    first, second = tables(code1), tables(code2)
    assert set(first) == set(second) and len(first) > 20
    differ = [str(k) for k in first if first[k].read_bytes() != second[k].read_bytes()]
    assert not differ, f"tables differ between two runs: {differ}"
    h1 = json.loads((code1 / "results/headline.json").read_text())["numbers"]
    h2 = json.loads((code2 / "results/headline.json").read_text())["numbers"]
    assert h1 == h2


def test_a_base_without_a_template_is_diffed_inside_the_instruct_template(tiny_run):
    """diffing.context chat through the rules: a base checkpoint whose tokenizer ships no
    chat template borrows the instruct model's (rule extract_diffing_context), and the
    pairing confirms that both models read identical token sequences. Without the borrow
    the extraction fails ("no chat template"), so the run passing is the check."""
    from rlhf_audit.diffing.paired import paired_info

    code, cfg = tiny_run
    src, bare = code / "scenario/models/base", code / "scenario/models/bare"
    shutil.copytree(src, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    ov = override(code, "bare", {
        "models": {"tiny_bare": {"path": "scenario/models/bare"}},
        "model_pairs": {"bare": {"base": "tiny_bare", "instruct": "tiny_instruct"}},
        "diffing": {"context": "chat", "pairs": ["bare"]}})
    target = "results/diffing/bare/paired.parquet"
    assert plan(code, "--configfile", str(cfg), ov, "--", target) == {
        "extract_diffing_context": 2, "pair_diffing_activations": 1}
    snakemake(code, "--cores", "2", "--configfile", str(cfg), ov, "--", target)
    info = paired_info(code / target)
    assert info["context"] == "chat" and info["identical_input_share"] == 1.0
    assert (code / "results/diffing/activations/tiny_bare/chat_of_tiny_instruct").is_dir()


def test_editing_a_chat_template_reruns_the_extractions_that_read_it(tiny_run):
    """A local model's tokenizer files are inputs of the jobs that read through them: an
    edited chat template re-extracts the instruct model (its own shards and, in the default
    diffing.context raw, nothing else of base's). The file is put back with its old time
    stamp, so the shared run is left as it was."""
    code, cfg = tiny_run
    inst = code / "scenario/models/instruct"
    path = next(p for p in (inst / "chat_template.jinja", inst / "tokenizer_config.json")
                if p.exists() and "assistant" in p.read_text())
    text, st = path.read_text(), path.stat()
    try:
        path.write_text(text.replace("assistant", "assistant ", 1))
        got = plan(code, "--configfile", str(cfg))
    finally:
        path.write_text(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert got.get("extract_activations") == 2, got  # instruct's two shards, not base's
    assert got.get("extract_diffing_context") == 2, got  # instruct read bare for diffing
    assert plan(code, "--configfile", str(cfg)) == {}


def test_switching_a_value_back_restores_gpu_stages_from_the_cache(tiny_run):
    """A -> B -> A: on the way back, generation is restored by content, not recomputed."""
    code, cfg = tiny_run
    b = override(code, "switch", {"steering": {"alphas": [0.5, 1.0]}})
    snakemake(code, "--cores", "2", "--configfile", str(cfg), b)
    t = time.perf_counter()
    snakemake(code, "--cores", "2", "--configfile", str(cfg))  # back to A
    took = time.perf_counter() - t
    for role in ("base", "instruct"):
        log = (code / f"results/logs/generate_steering/tiny/{role}.log").read_text()
        assert "restored" in log and "from the cache" in log, log[-2000:]
    (code / "switch_back_seconds.txt").write_text(f"{took:.1f}\n")
    assert plan(code, "--configfile", str(cfg)) == {}
