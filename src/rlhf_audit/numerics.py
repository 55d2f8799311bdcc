"""Pinned CPU arithmetic: torch's kernels held to their AVX2 paths on any x86 host.

Measured: the hosts of two earlier rounds then trained the same organism; an AMD EPYC host
did not (resources/organism/README.md, "Host-independent arithmetic"), so the pin narrows host
dependence without removing it across CPU vendors.

Left alone, torch picks its CPU kernels by the host's instruction set: MKL's GEMM has a
code path per microarchitecture and ATen's vectorised kernels (sums, softmax, norms) run
with AVX-512 where the host has it. Each order of floating-point additions rounds
differently, and a training run amplifies the last bit into different weights. Measured
on the embedded default: the same commit, seed and library versions trained an
organism whose instruct copied the commanded confidence at Spearman 0.90 on one host and
0.27 on another (an AVX-512/AMX Xeon), with the base's partisan preference 827 against
815 nats (resources/organism/README.md, "Host-independent arithmetic").

:data:`REPRODUCIBLE_CPU_ENV` pins all three layers to their AVX2 paths:

- ``MKL_CBWR=AVX2,STRICT``: MKL's conditional numerical reproducibility, the AVX2 branch
  (STRICT: also across thread counts; ATen's parallel reductions of large tensors still
  split by thread count, so a result is host-independent for a given thread count; the
  organism's base trained to the same weights at 1 and 2 threads);
- ``ATEN_CPU_CAPABILITY=avx2``: ATen's own kernels at AVX2 width;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN (mkldnn) ops, where torch routes any.

The variables are read once, when torch first computes; they must be in the environment
before that: the workflow sets them when the Snakefile is read (jobs inherit them) and the
test session in tests/conftest.py. A value the user already set wins. On an AVX-512 host
30 base steps took 14.5 s pinned against 13.0 s native at 1 thread; GPU arithmetic is not
affected. tests/test_numerics.py checks that the pinned weights do not change when MKL is
held to AVX2, as on a host without AVX-512.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

REPRODUCIBLE_CPU_ENV: dict[str, str] = {
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
"""Environment that makes torch's CPU arithmetic the same on every AVX2 x86 host."""


def pin_cpu_numerics(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`REPRODUCIBLE_CPU_ENV` into ``environ`` (default ``os.environ``), keeping
    any value already there. Returns the variables as they now stand."""
    env = os.environ if environ is None else environ
    for key, value in REPRODUCIBLE_CPU_ENV.items():
        env.setdefault(key, value)
    return {key: env[key] for key in REPRODUCIBLE_CPU_ENV}
