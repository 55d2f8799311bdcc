"""How many GPU slots a workflow job declares (Snakemake's ``resources: gpu``).

Only the workflow's scheduling reads this module: no script imports it, so editing it
reruns nothing. The scripts choose their device themselves (``lm.loader.resolve_device``).
"""

from __future__ import annotations

import glob
import os


def cuda_visible(environ: dict | None = None, dev_glob: str = "/dev/nvidia[0-9]*") -> bool:
    """Whether this host shows an NVIDIA GPU to its processes, without importing torch:
    a device node exists and ``CUDA_VISIBLE_DEVICES`` does not hide them all."""
    env = os.environ if environ is None else environ
    hidden = env.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return bool(glob.glob(dev_glob))


def gpu_slots(device: str, *, local_exec: bool, visible: bool) -> int:
    """GPU slots a GPU-capable stage declares.

    - ``device: cpu``: 0; the stage never touches a GPU.
    - ``device: cuda``: 1, so the workstation profile (``resources: gpu=1``) never puts two
      on one card and a cluster executor asks for one.
    - ``device: auto``: 1 under a cluster executor (the compute nodes may have GPUs where
      the submitting host has none) and on a local host that shows a GPU; 0 on a local host
      without one. There the stage runs on the CPU, and a slot would only serialise CPU
      jobs that could share the cores (on 2 cores it made the default run's study phase
      run one job at a time).
    """
    if device == "cpu":
        return 0
    if device == "auto" and local_exec and not visible:
        return 0
    return 1
