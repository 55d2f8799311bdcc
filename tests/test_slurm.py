"""Cluster execution through profiles/slurm (snakemake-executor-plugin-slurm).

- A real single-node SLURM cluster (Debian's slurm-wlm + munge, tests/slurm_cluster.py)
  runs a small scenario of the workflow (normalise -> extract -> manifest on a tiny model
  built here) through `--profile profiles/slurm`; the jobs must have gone through sbatch
  and the tables must equal those of a local run of the same scenario.
- The paper config's plan under the SLURM profile gives every GPU job `gpu` and the GPU
  stage's memory/runtime, and every other job the profile's defaults (which shows that
  the workflow profile profiles/default, loaded too and winning key by key, does not
  replace the cluster's resource blocks).

Without slurm-wlm installed the cluster test fails (run .ci/run's install step), unless
RLHF_AUDIT_SKIP_SLURM=1 opts out. Snakemake runs under `timeout -s KILL`: a broken
status check makes it hang and ignore SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal
from slurm_cluster import (
    INSTALL_HINT,
    NO_CLUSTER_ENV,
    cluster_env,
    missing_binaries,
    start_cluster,
)

# Minutes of CPU: `make test-fast` leaves this file out; `make test` and CI run it.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm"
DEFAULT_PROFILE = REPO / "profiles" / "default"
SKIP_ENV = "RLHF_AUDIT_SKIP_SLURM"
# Whole-run limit for one snakemake call (s); the cluster scenario takes ~45 s.
SNAKEMAKE_TIMEOUT_S = 300
# Only the first status poll is brought forward (the profile's 10 s suits real queues).
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2"]


def _require_slurm() -> None:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the SLURM cluster test is opted out")
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"SLURM is not installed (missing: {', '.join(missing)}): {INSTALL_HINT}; "
            f"or set {SKIP_ENV}=1 to skip this test",
            pytrace=False,
        )


def _snakemake(workdir: Path, args: list[str], env: dict[str, str], background: bool = False):
    """Run (or start, if BACKGROUND) snakemake on the repo's Snakefile in WORKDIR."""
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(SNAKEMAKE_TIMEOUT_S),
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        *args,
    ]
    log = open(workdir / "snakemake.out", "w")  # noqa: SIM115 (closed by the caller's wait)
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    proc.log_file = log  # type: ignore[attr-defined]
    return proc if background else _finish(proc, workdir)


def _finish(proc, workdir: Path) -> str:
    rc = proc.wait()
    proc.log_file.close()
    out = (workdir / "snakemake.out").read_text()
    assert rc == 0, (
        f"snakemake in {workdir} exited {rc}"
        f"{' (killed by timeout)' if rc in (124, 137) else ''}:\n{out[-6000:]}"
    )
    return out


def _no_cluster_env() -> dict[str, str]:
    return {**os.environ, **NO_CLUSTER_ENV}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster for the session; its daemons are stopped by PID at the
    end, whatever happened."""
    _require_slurm()
    cluster = start_cluster(tmp_path_factory.mktemp("slurm-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The embedded default config with the organism disabled, both models of its first pair
    replaced by one tiny Llama saved here, 12 partisan prompts and one shard. Returns
    (config dict, targets)."""
    import torch
    from tiny import save_tiny_llama

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("slurm-scenario")
    model_dir = save_tiny_llama(root / "tiny_llama", seed=3)
    prompts = root / "partisan.jsonl"
    labels = ["left", "right", "neutral"]
    with open(prompts, "w") as f:
        for i in range(12):
            f.write(
                json.dumps(
                    {
                        "id": f"p{i:02d}",
                        "text": f"we should cut taxes {i} ?",
                        "label": labels[i % 3],
                        "issue": "tax",
                    }
                )
                + "\n"
            )
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    pair = next(iter(cfg["model_pairs"].values()))
    for role in ("base", "instruct"):
        cfg["models"][pair[role]] = {"path": str(model_dir)}
    cfg["device"], cfg["dtype"] = "cpu", "float32"
    cfg["organism"]["enabled"] = False
    ds = cfg["extract"]["dataset"]
    cfg["datasets"][ds]["source"] = {"path": str(prompts)}
    cfg["extract"].update(shards=1, max_length=24, batch_size=4)
    targets = [f"results/activations/{pair['base']}/{ds}/manifest.json"]
    return cfg, targets


def _workdir(root: Path, cfg: dict) -> Path:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


# --------------------------------------------------------------------------- cluster run


def _read_tables(workdir: Path, manifest_rel: str):
    manifest_path = workdir / manifest_rel
    manifest = json.loads(manifest_path.read_text())
    shards = {
        s["file"]: pl.read_parquet(manifest_path.parent / s["file"]) for s in manifest["shards"]
    }
    # Shard files' bytes carry provenance (host, time): compare their tables, not hashes.
    for s in manifest["shards"]:
        s.pop("sha256", None)
        s.pop("bytes", None)
    data = {
        p.name: pl.read_parquet(p) for p in sorted((workdir / "results/data").glob("*.parquet"))
    }
    return manifest, shards, data


@pytest.mark.slurm
def test_scenario_runs_through_sbatch_and_matches_local_run(slurm_cluster, scenario, tmp_path):
    cfg, targets = scenario
    local = _workdir(tmp_path / "local", cfg)
    remote = _workdir(tmp_path / "slurm", cfg)
    # The local run goes alongside: the cluster run mostly waits on status polls.
    local_proc = _snakemake(local, ["--cores", "2", *targets], _no_cluster_env(), background=True)
    try:
        out = _snakemake(
            remote, ["--profile", str(SLURM_PROFILE), *FAST_POLL, *targets], cluster_env()
        )
    finally:
        local_out = _finish(local_proc, local)
    assert "Nothing to be done" not in local_out

    run_id = re.search(r"SLURM run ID: (\S+)", out)
    assert run_id, f"no SLURM run ID in the snakemake output:\n{out[-3000:]}"
    jobs = [j for j in slurm_cluster.squeue("%i|%j|%k|%T") if j[1] == run_id.group(1)]
    submitted = {re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", j[2]) for j in jobs}
    # Every job Snakemake did not run locally (`localrule`) went through sbatch.
    planned_remote = set(re.findall(r"^rule (\w+):", out, re.M))
    assert "extract_activations" in planned_remote, out[-3000:]
    assert submitted == planned_remote, (
        f"sbatch saw {sorted(submitted)}, snakemake planned {sorted(planned_remote)} "
        f"remotely\n{slurm_cluster.log_tail()}"
    )
    assert {j[3] for j in jobs} == {"COMPLETED"}, jobs

    for target in targets:
        m_local, shards_local, data_local = _read_tables(local, target)
        m_remote, shards_remote, data_remote = _read_tables(remote, target)
        assert m_remote == m_local
        assert shards_remote.keys() == shards_local.keys() and shards_local
        for name, table in shards_local.items():
            assert table.height > 0
            assert_frame_equal(shards_remote[name], table)
        assert data_remote.keys() == data_local.keys() and data_local
        for name, table in data_local.items():
            assert_frame_equal(data_remote[name], table)


# --------------------------------------------------------------------------- plans


def _parse_plan(text: str) -> list[dict]:
    """Jobs of a `snakemake -n` printout: rule name, local flag and resources."""
    jobs = []
    for m in re.finditer(r"^(local)?rule (\w+):\n(.*?)(?=^\S|\Z)", text, re.M | re.S):
        res = re.search(r"^\s+resources: (.*)$", m.group(3), re.M)
        resources = {}
        if res:
            for item in res.group(1).split(", "):
                key, _, value = item.partition("=")
                resources[key] = int(value) if value.isdigit() else value
        jobs.append({"rule": m.group(2), "local": bool(m.group(1)), "resources": resources})
    return jobs


def _paper_plan(tmp_path: Path) -> str:
    # As a user runs it from a checkout (config.yaml, configs/, resources/ in the working
    # directory), but with results and .snakemake landing in tmp_path.
    for name in ("config.yaml", "resources", "configs"):
        (tmp_path / name).symlink_to(REPO / name)
    proc = subprocess.run(
        [
            "timeout",
            "-s",
            "KILL",
            "120",
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--profile",
            str(SLURM_PROFILE),
            "--configfile",
            "configs/paper.yaml",
        ],
        cwd=tmp_path,
        env=_no_cluster_env(),
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def test_paper_plan_under_slurm_profile_requests_gpus(tmp_path):
    out = _paper_plan(tmp_path)
    jobs = _parse_plan(out)
    assert jobs, out[-3000:]
    profile = yaml.safe_load(SLURM_PROFILE.joinpath("config.yaml").read_text())
    per_rule = profile["set-resources"]
    defaults = profile["default-resources"]

    gpu_jobs = [j for j in jobs if j["resources"].get("gpu", 0) >= 1]
    assert any(j["rule"] == "extract_activations" for j in gpu_jobs)
    uncovered = sorted({j["rule"] for j in gpu_jobs} - set(per_rule))
    assert not uncovered, (
        f"GPU rules without an entry under set-resources in "
        f"profiles/slurm/config.yaml: {uncovered} (add `RULE: *gpu_stage`)"
    )
    for j in jobs:
        r = j["resources"]
        if j["rule"] in per_rule:
            # Hub models: no weight files among the inputs, so the hub branch's memory.
            assert r["mem_mb"] == 32000, j
            assert r["runtime"] == eval(str(per_rule[j["rule"]]["runtime"]), {"attempt": 1}), j
        elif not j["local"] and j["rule"] != "all":
            assert r["mem_mb"] == eval(str(defaults["mem_mb"]), {"attempt": 1}), j
            assert r["runtime"] == eval(str(defaults["runtime"]), {"attempt": 1}), j

    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], re.M))
    n_shards = yaml.safe_load((REPO / "configs/paper.yaml").read_text())["extract"]["shards"]
    assert int(stats["extract_activations"]) == n_shards * int(stats["write_activation_manifest"])


def test_profiles_compose_as_documented():
    """`--profile profiles/slurm` also loads profiles/default, which wins key by key: the
    keys that must come from the cluster profile are absent there, and the GPU pool is
    local-scoped so it does not throttle jobs spread over a cluster."""
    default = yaml.safe_load(DEFAULT_PROFILE.joinpath("config.yaml").read_text())
    slurm = yaml.safe_load(SLURM_PROFILE.joinpath("config.yaml").read_text())
    assert not {"default-resources", "set-resources", "executor", "jobs"} & set(default)
    assert "gpu=1" in default["resources"] and default["set-resource-scopes"] == {"gpu": "local"}
    # One retry count, in the profile that wins (a copy in the cluster profile would be
    # silently overridden).
    assert not {"retries", "restart-times"} & set(slurm) and default["retries"] >= 1
    probe = (
        "from snakemake.cli import parse_args\n"
        f"p, a = parse_args(['-n', '--profile', {str(SLURM_PROFILE)!r}])\n"
        "print(a.executor, sorted(a.default_resources), sorted(a.set_resources),"
        " a.set_resource_scopes, a.retries, a.rerun_incomplete)\n"
    )
    proc = subprocess.run(
        ["timeout", "-s", "KILL", "120", sys.executable, "-c", probe],
        cwd=REPO,
        env=_no_cluster_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("slurm ")
    assert "'mem_mb'" in line and "'runtime'" in line and "'extract_activations'" in line
    assert "{'gpu': 'local'}" in line and f" {default['retries']} True" in line
