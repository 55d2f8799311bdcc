"""GPU slots for the workflow's scheduling (Snakemake's ``resources: gpu``).

Only the Snakefile reads this module: no script imports it, so editing it reruns
nothing. The scripts choose their device themselves (``lm.loader.resolve_device``).

GPU-capable stages declare ``gpu=1`` whenever the config may use CUDA, so that a
cluster executor asks for a card (the Snakefile is parsed before Snakemake knows its
executor, so a rule cannot tell local from cluster runs). The workstation profile
caps them at one card (``resources: gpu=1``, scope local); on a host that shows no
GPU that cap would only run CPU jobs one at a time (on 2 cores it made the default
run's study phase serial), so :func:`lift_local_gpu_limit` removes it there.
"""

from __future__ import annotations

import glob
import os

GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")
"""Device nodes of an NVIDIA card, of WSL2's GPU bridge, and of ROCm (AMD cards that
torch drives as ``cuda``)."""
NO_GPU_SLOTS = 1 << 20
"""The local gpu limit on a host without a GPU: effectively none (cores still limit)."""


def cuda_visible(environ: dict | None = None,
                 nodes: tuple[str, ...] = GPU_DEVICE_NODES) -> bool:
    """Whether this host shows a GPU to its processes, without importing torch: a GPU
    device node exists and ``CUDA_VISIBLE_DEVICES`` does not hide every card."""
    env = os.environ if environ is None else environ
    hidden = env.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return any(glob.glob(pattern) for pattern in nodes)


def gpu_slots(device: str) -> int:
    """GPU slots a GPU-capable stage declares: 0 for ``device: cpu``, else 1."""
    return 0 if device == "cpu" else 1


def lift_local_gpu_limit(global_resources, device: str, visible: bool) -> bool:
    """On a host without a GPU (and unless the config demands ``cuda``), raise the
    scheduler's local ``gpu`` limit so GPU-capable stages, which then run on the CPU,
    share the cores. ``global_resources``: Snakemake's ``workflow.global_resources``.
    Returns whether it lifted the limit. Under a cluster profile the limit is local in
    scope, so the stages' requests for cards are unchanged."""
    if visible or device == "cuda" or "gpu" not in global_resources:
        return False
    global_resources["gpu"] = NO_GPU_SLOTS
    return True
