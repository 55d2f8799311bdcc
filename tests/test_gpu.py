"""GPU slots: stages ask for a card wherever the config may use CUDA; the workstation's
one-card limit is lifted on a host without a GPU, so CPU jobs share the cores."""

import subprocess
import sys
import textwrap
import time

import pytest

from rlhf_audit.gpu import cuda_visible, gpu_slots, lift_local_gpu_limit


@pytest.mark.parametrize("device, slots", [("cpu", 0), ("auto", 1), ("cuda", 1)])
def test_gpu_slots(device, slots):
    assert gpu_slots(device) == slots


@pytest.mark.parametrize(
    "device, visible, lifted",
    [("auto", False, True), ("cpu", False, True), ("auto", True, False), ("cuda", False, False)],
)
def test_the_one_card_limit_is_lifted_only_without_a_gpu(device, visible, lifted):
    res = {"gpu": 1}
    assert lift_local_gpu_limit(res, device, visible) is lifted
    assert (res["gpu"] > 1000) is lifted
    assert lift_local_gpu_limit({}, device, visible) is False  # no limit set: nothing to lift


def test_cuda_visible_reads_device_nodes_and_the_mask(tmp_path):
    (tmp_path / "nvidia0").touch()
    (tmp_path / "kfd").touch()
    nvidia, amd = (str(tmp_path / "nvidia[0-9]*"),), (str(tmp_path / "kfd"),)
    assert cuda_visible({}, nvidia) and cuda_visible({}, amd)
    assert cuda_visible({"CUDA_VISIBLE_DEVICES": "0"}, nvidia)
    assert not cuda_visible({"CUDA_VISIBLE_DEVICES": ""}, nvidia)
    assert not cuda_visible({"CUDA_VISIBLE_DEVICES": "-1"}, nvidia)
    assert not cuda_visible({}, (str(tmp_path / "none[0-9]*"),))


@pytest.mark.parametrize("visible, overlap", [(False, True), (True, False)])
def test_snakemake_honours_the_lifted_limit(tmp_path, visible, overlap):
    """Two gpu=1 jobs under --resources gpu=1 (the workstation profile's cap) run side by
    side only where the Snakefile lifted the cap at parse time."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        from rlhf_audit.gpu import lift_local_gpu_limit
        lift_local_gpu_limit(workflow.global_resources, "auto", {visible})
        rule all:
            input: "a.txt", "b.txt"
        rule job:
            output: "{{name}}.txt"
            resources: gpu=1
            shell: "date +%s.%N > {{output}}; sleep 2; date +%s.%N >> {{output}}"
    """))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=1", "-q"]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (a0, a1), (b0, b1) = ([float(x) for x in (tmp_path / f).read_text().split()]
                          for f in ("a.txt", "b.txt"))
    assert (a0 < b1 and b0 < a1) is overlap, (a0, a1, b0, b1, time.time() - t0)
