"""GPU slots a stage declares: a slot only where a GPU may be used."""

import pytest

from rlhf_audit.gpu import cuda_visible, gpu_slots


@pytest.mark.parametrize(
    "device, local_exec, visible, slots",
    [
        ("cpu", True, True, 0),
        ("cpu", False, True, 0),
        ("cuda", True, False, 1),
        ("cuda", False, False, 1),
        ("auto", True, True, 1),
        ("auto", True, False, 0),  # a CPU-only workstation: no serialising slot
        ("auto", False, False, 1),  # a cluster: the nodes may have GPUs the host lacks
    ],
)
def test_gpu_slots(device, local_exec, visible, slots):
    assert gpu_slots(device, local_exec=local_exec, visible=visible) == slots


def test_cuda_visible_reads_device_nodes_and_the_mask(tmp_path):
    (tmp_path / "nvidia0").touch()
    nodes = str(tmp_path / "nvidia[0-9]*")
    assert cuda_visible({}, nodes)
    assert cuda_visible({"CUDA_VISIBLE_DEVICES": "0"}, nodes)
    assert not cuda_visible({"CUDA_VISIBLE_DEVICES": ""}, nodes)
    assert not cuda_visible({"CUDA_VISIBLE_DEVICES": "-1"}, nodes)
    assert not cuda_visible({}, str(tmp_path / "none[0-9]*"))
