"""A run killed with kill -9 mid-job resumes with the README's two commands
(`snakemake --unlock`, then the same command again) and ends with the numbers an
uninterrupted run gives."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml


def partisan_config(code: Path) -> str:
    from scenario import make_tiny_scenario

    full = yaml.safe_load(make_tiny_scenario(code).read_text())
    cfg = {"studies": ["partisan"], "device": "cpu", "models": full["models"],
           "model_pairs": full["model_pairs"], "datasets": {"partisan": full["datasets"]["partisan"]},
           "extract": {"shards": 2, "max_length": 48}, "partisan": {"n_boot": 100, "n_folds": 3}}
    path = code / "partisan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_kill_9_mid_job_then_unlock_and_rerun_gives_the_uninterrupted_numbers(tmp_path):
    from test_workflow import SNAKEMAKE, copy_code, env_for, snakemake

    code = copy_code(tmp_path / "killed")
    cfg = partisan_config(code)
    cmd = [*SNAKEMAKE, "-s", str(code / "Snakefile"), "-d", str(code), "--cores", "2",
           "--configfile", cfg]
    proc = subprocess.Popen(cmd, cwd=code, env=env_for(code), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    incomplete = code / ".snakemake" / "incomplete"
    deadline = time.time() + 120
    try:
        # Kill while an extraction job is running: its shard is marked incomplete.
        while time.time() < deadline and proc.poll() is None:
            marks = list(incomplete.glob("*")) if incomplete.is_dir() else []
            if marks and (code / "results/logs/extract_activations").is_dir():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session: snakemake and its jobs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert list(incomplete.glob("*")), "nothing was marked incomplete: the kill came too late"

    # What a user sees next: the stale lock, named.
    again = snakemake(code, "--cores", "2", "--configfile", cfg, check=False)
    assert again.returncode != 0 and "--unlock" in again.stdout + again.stderr
    # The README's resume commands.
    snakemake(code, "--unlock", "--configfile", cfg)
    snakemake(code, "--cores", "2", "--configfile", cfg)

    clean = copy_code(tmp_path / "clean")
    snakemake(clean, "--cores", "2", "--configfile", partisan_config(clean))
    for rel in ("results/partisan/tiny/headline.json", "results/headline.json"):
        a, b = (code / rel).read_text(), (clean / rel).read_text()
        assert a == b, f"{rel} differs after resuming"
