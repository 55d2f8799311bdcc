"""Residual-stream hooks on a Hugging Face causal LM: find the decoder blocks, steer
their output. Model-level code below every study (imports no study module).

Block ``L``'s output is ``hidden_states[L + 1]`` of ``output_hidden_states`` and
TransformerLens' ``blocks.L.hook_resid_post``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

POSITIONS = ("all", "generated")
"""Where a steering vector is added: every position, or only the generated ones."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks of an HF causal LM (Llama/Mistral/Qwen/Gemma/GPT-2/NeoX)."""
    for path in (
        "model.layers",
        "model.model.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.decoder.layers",
        "layers",
    ):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: expected "
        "model.layers, transformer.h or gpt_neox.layers"
    )


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Add ``alpha * vector`` to the output of block ``layer``."""

    layer: int
    """Block index (0-based); the hook sits on ``model.model.layers[layer]``."""
    vector: np.ndarray | torch.Tensor
    """Direction [d_model], already scaled (see :func:`scaled`)."""
    alpha: float
    """Multiplier (0 leaves the model unchanged)."""
    positions: Literal["all", "generated"] = "all"
    """"all": every position of every forward pass. "generated": only the last position of
    each forward pass, which in :func:`rlhf_audit.lm.generation.generate` (left padding, KV
    cache) is exactly the positions whose output predicts a generated token: the last
    prompt token during prefill, then each newly generated token."""

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        v = self.vector
        if (v.ndim if hasattr(v, "ndim") else np.ndim(v)) != 1:
            raise ValueError(f"steering vector must be 1-D [d_model], got shape {tuple(v.shape)}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha}")


def _hook(sv: SteeringVector):
    cache: dict = {}

    def add(module, args, output):
        hs = output[0] if isinstance(output, tuple) else output
        key = (hs.device, hs.dtype)
        if key not in cache:  # built once per device/dtype, not at every decoding step
            v = sv.vector
            v = v if torch.is_tensor(v) else torch.from_numpy(np.asarray(v, dtype=np.float32))
            cache[key] = (v.to(hs.device, torch.float32) * float(sv.alpha)).to(hs.dtype)
        delta = cache[key]
        if sv.positions == "all":
            new = hs + delta
        else:
            new = hs.clone()
            new[:, -1, :] = new[:, -1, :] + delta
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return add


@contextlib.contextmanager
def steer(model, steering: SteeringVector | Sequence[SteeringVector] | None) -> Iterator[None]:
    """Install the steering hook(s) for the ``with`` block; always removed on exit."""
    if steering is None:
        yield
        return
    vecs = [steering] if isinstance(steering, SteeringVector) else list(steering)
    layers = decoder_layers(model)
    handles = []
    try:
        for sv in vecs:
            if not 0 <= sv.layer < len(layers):
                raise ValueError(
                    f"steering layer {sv.layer} out of range: the model has "
                    f"{len(layers)} blocks (0..{len(layers) - 1})"
                )
            d_model = model.config.hidden_size
            if len(sv.vector) != d_model:
                raise ValueError(
                    f"steering vector has {len(sv.vector)} dims, the model's "
                    f"residual stream {d_model}"
                )
            # prepend: transformers 5 records output_hidden_states with its own forward hooks
            # on the blocks; running first makes them (and any later hook) see the steered output.
            handles.append(layers[sv.layer].register_forward_hook(_hook(sv), prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()
