"""The job preamble (runtime.setup) configures torch, transformers and datasets without
importing them: a plot or tally job must not pay their ~2.5 s start-up."""

import json
import os
import subprocess
import sys

import torch

HEAVY = ("torch", "transformers", "datasets")


def _run(code: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MKL_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_setup_imports_no_heavy_library_and_they_start_configured(tmp_path):
    log = tmp_path / "job.log"
    got = _run(f"""
import json, os, sys
from rlhf_audit.runtime import library_versions, setup
setup({str(log)!r}, threads=1)
v = library_versions()
env_threads = os.environ.get("OMP_NUM_THREADS")
before = [m for m in {HEAVY!r} if m in sys.modules]
import torch, transformers, datasets
from transformers.utils import logging as tl
print(json.dumps({{"before": before, "threads": torch.get_num_threads(), "env": env_threads,
                  "verbosity": tl.get_verbosity(), "tqdm": tl.is_progress_bar_enabled(),
                  "ds_bars": datasets.utils.are_progress_bars_disabled(),
                  "cuda": v["cuda"], "cuda_now": torch.version.cuda or "none"}}))
""")
    assert got["before"] == []
    # torch starts with the job's thread count (on one core the default would be 1 too,
    # so the environment it read is checked as well)
    assert got["threads"] == 1 and got["env"] == "1"
    assert got["verbosity"] == 40  # logging.ERROR
    assert got["tqdm"] is False and got["ds_bars"] is True
    assert got["cuda"] == got["cuda_now"] == (torch.version.cuda or "none")


def test_setup_configures_torch_already_imported():
    got = _run("""
import json, torch
from rlhf_audit.runtime import setup
torch.set_num_threads(1)
setup(None, threads=3)
print(json.dumps({"threads": torch.get_num_threads()}))
""")
    assert got["threads"] == 3
