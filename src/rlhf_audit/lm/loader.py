"""One loader for every model the studies use.

A model is named by a spec: ``{hf: ID, revision: REV}`` (a Hugging Face hub id,
resolved through the local cache when offline) or ``{path: DIR}`` (an ordinary
Hugging Face directory, such as the organism the default workflow trains).
Both go through the same ``from_pretrained`` call. Weights are read from
safetensors only and ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where a model is resolved or loaded, not at module level: the rules
# that only read a spec, a tokenizer or weight hashes (the activation manifest, scoring
# stored generations) would otherwise pay its import, about 2.5 s of CPU a job.

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from."""

    hf: str | None = None
    """Hugging Face hub id (e.g. ``meta-llama/Llama-3.1-8B``)."""
    revision: str | None = None
    """Hub revision: a branch, tag or commit sha (``main`` when unset)."""
    path: str | None = None
    """A local Hugging Face directory (config.json + *.safetensors + tokenizer files)."""

    @classmethod
    def from_config(cls, spec: Mapping, key: str = "model") -> ModelSpec:
        """Build a spec from a config mapping; ``key`` names it in error messages."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"{key}: a model spec must be a mapping {{hf: ID}} or {{path: DIR}}, "
                             f"got {spec!r}")
        # n_layers is the config's early layer check (rlhf_audit.config), not the loader's.
        unknown = set(spec) - {"hf", "revision", "path", "n_layers"}
        if unknown:
            raise ValueError(f"{key}: unknown model-spec key(s) {sorted(unknown)}; "
                             "use hf (+ revision) or path")
        hf, path = spec.get("hf"), spec.get("path")
        if bool(hf) == bool(path):
            raise ValueError(f"{key}: give exactly one of 'hf' (hub id) or 'path' "
                             "(local directory)")
        if path and spec.get("revision"):
            raise ValueError(f"{key}: 'revision' only applies to 'hf' specs")
        return cls(hf=hf, revision=spec.get("revision"), path=str(path) if path else None)

    @property
    def source(self) -> str:
        """What ``from_pretrained`` receives."""
        return self.path if self.path else self.hf  # type: ignore[return-value]

    @property
    def label(self) -> str:
        """Human-readable id for manifests and reports."""
        if self.path:
            return f"path:{self.path}"
        return f"hf:{self.hf}@{self.revision or 'main'}"

    def to_dict(self) -> dict:
        return {k: v for k, v in (("hf", self.hf), ("revision", self.revision),
                                  ("path", self.path)) if v}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device: cuda was asked for but no CUDA GPU is visible; "
                             "use device: auto or cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (where supported) and float32 on CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def _check_local_dir(spec: ModelSpec, need_weights: bool = True) -> None:
    d = Path(spec.path)  # type: ignore[arg-type]
    if not d.is_dir():
        raise ModelLoadError(f"model path {d} does not exist or is not a directory. For the "
                             "organism, run the workflow (snakemake --cores all) which builds it; "
                             "otherwise point 'path:' at a Hugging Face model directory.")
    if not (d / "config.json").exists():
        raise ModelLoadError(f"{d} has no config.json: not a Hugging Face model directory "
                             "(save it with model.save_pretrained(DIR)).")
    if need_weights and not any(d.glob("*.safetensors")):
        hint = " It has pickle weights (.bin/.pt), which this tool refuses to load." if any(
            d.glob("*.bin")) or any(d.glob("*.pt")) else ""
        raise ModelLoadError(f"{d} holds no *.safetensors weights.{hint} Convert with "
                             "model.save_pretrained(DIR, safe_serialization=True).")


def _offline_help(spec: ModelSpec, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelLoadError(
        f"could not load {spec.label} ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
        f"{'HF_HUB_OFFLINE=1 is set, so only the local cache is read. ' if offline else ''}"
        "What to do: (1) on a machine with internet, `huggingface-cli download "
        f"{spec.hf}{' --revision ' + spec.revision if spec.revision else ''}` into the cache that "
        "HF_HOME points at, and set HF_HOME to it here; (2) for gated models (e.g. meta-llama) run "
        "`huggingface-cli login` and accept the licence on the model page first; (3) or download "
        "the model once and name it with a {path: DIR} spec instead of {hf: ID}."
    )


def _pretrained_kwargs(spec: ModelSpec) -> dict:
    kw: dict = {"trust_remote_code": False}
    if spec.hf and spec.revision:
        kw["revision"] = spec.revision
    return kw


def load_tokenizer(spec: ModelSpec, padding_side: str = "right"):
    """The tokenizer of a model spec, with a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    if spec.path:
        _check_local_dir(spec, need_weights=False)
    try:
        tok = AutoTokenizer.from_pretrained(spec.source, **_pretrained_kwargs(spec))
    except (OSError, ValueError) as err:
        if spec.path:
            raise ModelLoadError(f"could not load a tokenizer from {spec.path}: {err}") from err
        raise _offline_help(spec, err) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def borrow_chat_template(tokenizer, donor: ModelSpec | Mapping):
    """Give ``tokenizer`` the chat template of the model ``donor`` (its tokenizer only is
    loaded) and return it: the base of a diffed pair reads the statements inside the
    instruct model's template, so both read identical tokens (rlhf_audit.diffing.context).
    Raises ModelLoadError when the donor has no chat template."""
    donor = donor if isinstance(donor, ModelSpec) else ModelSpec.from_config(donor)
    template = getattr(load_tokenizer(donor), "chat_template", None)
    if not template:
        raise ModelLoadError(
            f"{donor.label} has no chat template to lend: diffing.context 'chat' wraps both "
            "models' statements in the instruct model's template; add one to its "
            "tokenizer_config.json, or set diffing.context: raw")
    tokenizer.chat_template = template
    return tokenizer


def _load(auto_cls, spec: ModelSpec, device: str, dtype: str, **extra):
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if spec.path:
        _check_local_dir(spec)
    try:
        model = auto_cls.from_pretrained(
            spec.source, dtype=torch_dtype, use_safetensors=True, **_pretrained_kwargs(spec),
            **extra,
        )
    except (OSError, ValueError) as err:
        if spec.path:
            raise ModelLoadError(f"could not load the model in {spec.path}: {err}") from err
        raise _offline_help(spec, err) from err
    model.to(dev)
    model.eval()
    log.info("loaded %s as %s on %s (%s)", spec.label, type(model).__name__, dev, torch_dtype)
    return model


def load_causal_lm(spec: ModelSpec | Mapping, device: str = "auto", dtype: str = "auto"):
    """(AutoModelForCausalLM, tokenizer) for a spec, in eval mode on the resolved device."""
    from transformers import AutoModelForCausalLM

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_config(spec)
    resolve_device(device)  # fail on a bad device before touching files
    if spec.path:
        _check_local_dir(spec)  # weights first: the clearer error
    tok = load_tokenizer(spec)
    model = _load(AutoModelForCausalLM, spec, device, dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_reward_model(spec: ModelSpec | Mapping, device: str = "auto", dtype: str = "auto"):
    """(AutoModelForSequenceClassification with one logit, tokenizer) for a reward-model spec."""
    from transformers import AutoModelForSequenceClassification

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_config(spec)
    resolve_device(device)
    if spec.path:
        _check_local_dir(spec)
    tok = load_tokenizer(spec)
    model = _load(AutoModelForSequenceClassification, spec, device, dtype)
    if model.config.num_labels != 1:
        raise ModelLoadError(f"{spec.label} has num_labels={model.config.num_labels}; a reward "
                             "model must output a single logit (num_labels=1)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The safetensors weight files and config.json of a local model folder: what decides
    the model's outputs (the tokenizer is hashed apart)."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {d}")
    cfg = d / "config.json"
    return files + ([cfg] if cfg.exists() else [])


def weights_hash(spec: ModelSpec | Mapping) -> str:
    """sha256 over a model's :func:`weight_files` (names, sizes and contents), streamed.

    For hub specs the resolved snapshot in the local cache is hashed the same way,
    so the manifest pins the exact bytes that were used.
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_config(spec)
    if spec.path:
        folder = Path(spec.path)
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(spec.hf, revision=spec.revision,
                                        allow_patterns=["*.safetensors", "*.json"],
                                        local_files_only=True))
    return hash_files(weight_files(folder), root=folder)


def _named_files(paths, root: Path | None) -> list[tuple[str, Path]]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[tuple[str, Path]] = []
    for p in map(Path, items):
        if p.is_dir():
            out.extend((f.relative_to(p).as_posix(), f) for f in sorted(p.rglob("*"))
                       if f.is_file())
        elif p.is_file():
            out.append((p.relative_to(root).as_posix() if root else p.name, p))
        else:
            raise FileNotFoundError(f"hash_files: {p} does not exist")
    return sorted(out, key=lambda x: x[0])


def hash_files(paths: str | os.PathLike | Sequence[str | os.PathLike],
               root: Path | None = None, chunk: int = 1 << 22) -> str:
    """sha256 over files (folders expand recursively), streamed in 4 MiB chunks.

    Files are taken in order of their name (relative to a given folder, to ``root``, or
    the bare file name), and each name and size is hashed, delimited, with the content,
    so the hash follows content and layout but not where the files live.
    """
    h = hashlib.sha256()
    for name, path in _named_files(paths, root):
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()
