"""Block-``layer`` outputs read off a model, the forward pass stopped after that block:
pooled per text (the projection scorer) or per content token (the dose unit of the
steering vectors)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from rlhf_audit.lm.generation import _device, _length_batches, padding_side
from rlhf_audit.lm.hooks import decoder_layers


class _Stop(Exception):
    """Raised from a hook once the wanted layer has run: the rest of the forward is skipped."""


def _captured_layer(model, tokenizer, texts, layer, batch_size):
    """Yield (text indices, block-``layer`` output [b, width, d] float, content mask [b, width])
    for texts tokenised alone with special tokens, left-padded; BOS is not content. Texts
    without a content token are skipped. The forward pass stops after block ``layer``."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range 0..{len(layers) - 1}")
    enc = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    bos = tokenizer.bos_token_id
    keep = []
    for e in enc:
        k = np.ones(len(e), dtype=bool)
        if len(e) and bos is not None and e[0] == bos:
            k[0] = False  # BOS is the same for every text: it carries no content
        keep.append(k)
    todo = [i for i in range(len(texts)) if keep[i].any()]
    captured: dict = {}

    def grab(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    dev = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    handle = layers[layer].register_forward_hook(grab)
    try:
        for batch in _length_batches([len(enc[i]) for i in todo], batch_size):
            rows = [todo[b] for b in batch]
            width = max(len(enc[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            sel = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, i in enumerate(rows):
                off = width - len(enc[i])
                ids[r, off:] = torch.tensor(enc[i])
                mask[r, off:] = 1
                sel[r, off:] = torch.from_numpy(keep[i])
            ids, mask = ids.to(dev), mask.to(dev)
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            with contextlib.suppress(_Stop):
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            yield rows, captured.pop("h").float().cpu(), sel
    finally:
        handle.remove()


@torch.inference_mode()
def layer_activations(
    model,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    pooling: Literal["mean", "last"] = "mean",
    batch_size: int = 16,
) -> np.ndarray:
    """Block-``layer`` output pooled over each text's tokens: [n, d_model] float32.

    Each text is tokenised on its own with special tokens (BOS). "mean" averages the
    non-BOS tokens; "last" takes the last token. A text with no non-BOS token gives NaN.
    The forward pass stops after block ``layer``.
    """
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    texts = list(texts)
    out = np.full((len(texts), model.config.hidden_size), np.nan, dtype=np.float32)
    with padding_side(tokenizer, "left"):
        for rows, h, sel in _captured_layer(model, tokenizer, texts, layer, batch_size):
            if pooling == "mean":
                w = sel.float()
                pooled = (h * w[..., None]).sum(1) / w.sum(1, keepdim=True)
            else:
                pooled = h[:, -1]
            out[rows] = pooled.numpy()
    return out


def _token_norms(model, tokenizer, texts, layer, batch_size) -> np.ndarray:
    parts = []
    with padding_side(tokenizer, "left"):
        for _, h, sel in _captured_layer(model, tokenizer, texts, layer, batch_size):
            parts.append(h.norm(dim=-1)[sel].numpy())
    return np.concatenate(parts) if parts else np.zeros(0)
