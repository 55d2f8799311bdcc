"""The benchmarks run in CI at a small size and print what they measured.

No speed is asserted here (the machine is shared and noisy); the benchmark
scripts print tokens/s and the ratios, which land in the CI log."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    print(out.stdout)  # the figures, for the CI log
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_extraction_benchmark_prints_its_ratios():
    text = run("benchmarks/bench_extract.py", "--size", "small", "--no-peer", "--repeats", "1")
    assert "b/a" in text and "b/c" in text


def test_generation_benchmark_prints_batched_vs_single():
    text = run("benchmarks/bench_generation.py", "--small")
    assert "ratio" in text.lower() or "x" in text
