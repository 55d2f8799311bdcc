"""What every workflow script does first: logging into the rule's log, threads,
quiet third-party output, and the provenance record written beside its tables."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

LIBRARIES = ("rlhf-audit", "torch", "transformers", "tokenizers", "trl", "sae-lens", "datasets",
             "polars", "pyarrow", "numpy", "scipy", "statsmodels", "scikit-learn", "snakemake")


def quiet_environment() -> None:
    """Offline-friendly, quiet defaults for HF libraries (set before they are imported)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("WANDB_MODE", "disabled")


def configure_libraries(threads: int = 1) -> None:
    """Torch threads and quiet transformers/datasets, without importing any of them.

    A library the job has imported already is configured directly; one it has not is
    configured through the environment it reads when it is first imported. Importing
    torch, transformers and datasets just to configure them cost every job ~2.5 s of CPU,
    also the plots and tallies that never use them (most of the default run's ~70 jobs).
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` also cap the BLAS of numpy or scipy when they
    are first imported after this call: the job's declared threads hold for them too.
    """
    n = str(max(1, int(threads)))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(n))
    else:  # torch takes its intra-op thread count from these when it starts
        os.environ["OMP_NUM_THREADS"] = n
        os.environ["MKL_NUM_THREADS"] = n
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    datasets = sys.modules.get("datasets")
    if datasets is not None:
        datasets.disable_progress_bars()


def setup(log_path: str | None = None, threads: int = 1) -> logging.Logger:
    """Route logging to the rule's log file (and stderr), set torch threads, quiet libraries."""
    quiet_environment()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, force=True, handlers=handlers,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    previous_hook = sys.excepthook

    def log_uncaught(kind, value, tb):
        # The rule's log must say why the job failed, not only the terminal.
        logging.getLogger("rlhf_audit").critical("job failed", exc_info=(kind, value, tb))
        previous_hook(kind, value, tb)

    sys.excepthook = log_uncaught
    configure_libraries(threads)
    return logging.getLogger("rlhf_audit")


def library_versions() -> dict[str, str]:
    """Versions of Python, of the packages in LIBRARIES ("not installed" when absent, so
    a record says it was looked for) and of the CUDA torch was built with ("none")."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["cuda"] = torch_cuda_version()
    return out


def torch_cuda_version() -> str:
    """The CUDA version torch was built with ("none" for a CPU build), read from
    ``torch/version.py`` without importing torch (~1 s per job) unless it is imported."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.version.cuda or "none"
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "torch not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return "unknown"
    for node in tree.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id == "cuda" and node.value is not None:
            try:
                return ast.literal_eval(node.value) or "none"
            except ValueError:
                return "unknown"
    return "unknown"  # a provenance record should not fail a job


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD commit, with '+dirty' when tracked files differ; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(rule: str, params: dict | None = None, inputs: dict | None = None,
               **extra) -> dict:
    """The record stored beside (or inside) every table: what produced it.

    ``inputs`` maps a name to a file path (hashed here, files over 256 MiB by
    size+mtime only) or to a precomputed record (e.g. a model manifest).
    """
    hashed = {}
    for name, value in (inputs or {}).items():
        if isinstance(value, (str, Path)) and Path(value).is_file():
            p = Path(value)
            size = p.stat().st_size
            hashed[name] = {"path": str(p), "bytes": size,
                            "sha256": file_sha256(p) if size < (256 << 20) else None}
        else:
            hashed[name] = value
    return {"rule": rule, "params": params or {}, "inputs": hashed,
            "libraries": library_versions(), "git_commit": git_commit(), **extra}
