"""Loading sae-lens SAEs and checking that one fits the model's residual stream."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def load_sae(spec: Mapping[str, Any], device: str = "cpu", dtype: str = "float32"):
    """Load an sae-lens SAE from ``{release: R, id: I}`` or ``{path: DIR}``.

    Returns the inference SAE (``sae_lens.SAE`` subclass) on ``device``. Offline
    failures of a release say how to provide it (HF cache or a path spec).
    """
    from sae_lens import SAE

    if not isinstance(spec, Mapping):
        raise TypeError(f"SAE spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    keys = set(spec)
    if keys == {"path"}:
        path = Path(spec["path"])
        if not (path / "cfg.json").is_file():
            raise FileNotFoundError(
                f"SAE spec {{path: {path}}}: no sae-lens SAE there ({path / 'cfg.json'} is "
                "missing). Point 'path' at a folder written by train_sae / save_inference_model."
            )
        return SAE.load_from_disk(str(path), device=device, dtype=dtype)
    if keys == {"release", "id"}:
        release, sae_id = str(spec["release"]), str(spec["id"])
        try:
            return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
        except ValueError as e:
            raise ValueError(
                f"SAE spec {{release: {release}, id: {sae_id}}} is not a known sae-lens "
                f"pretrained SAE: {e}"
            ) from e
        except OSError as e:  # huggingface_hub's LocalEntryNotFoundError is a FileNotFoundError
            raise FileNotFoundError(
                f"SAE release {release!r} id {sae_id!r} could not be loaded (offline or "
                f"unreachable hub: {type(e).__name__}: {e}). Either download it once where "
                "the hub is reachable into the HF cache this job sees (HF_HOME, e.g. "
                f"`python -c \"from sae_lens import SAE; SAE.from_pretrained('{release}', "
                f"'{sae_id}')\"`), or save it to a folder and use the spec {{path: DIR}}."
            ) from e
    raise ValueError(
        f"SAE spec {dict(spec)!r} must have exactly the keys {{release, id}} (sae-lens "
        "pretrained) or {path} (a local sae-lens folder)."
    )


_HOOK_PATTERNS = (
    # (regex, offset): layer = captured index + offset, in our numbering (output of block L)
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), -1),
    (re.compile(r"^(?:model\.)?layers\.(\d+)$"), 0),
)


def sae_layer(hook_name: str | None) -> int:
    """Residual layer (output of block L, 0-based) an SAE reads, from its hook name.

    ``blocks.L.hook_resid_post`` and ``model.layers.L`` -> L;
    ``blocks.L.hook_resid_pre`` -> L - 1 (the stream entering block L).
    """
    if not hook_name:
        raise ValueError(
            "the SAE has no hook_name in cfg.metadata; set metadata.hook_name in its cfg.json "
            "to 'blocks.L.hook_resid_post' for the layer it was trained on"
        )
    for pattern, offset in _HOOK_PATTERNS:
        m = pattern.match(hook_name)
        if m:
            layer = int(m.group(1)) + offset
            if layer < 0:
                break
            return layer
    raise ValueError(
        f"SAE hook_name {hook_name!r} is not a residual-stream output this pipeline reads "
        "(expected 'blocks.L.hook_resid_post', 'blocks.L.hook_resid_pre' with L >= 1, or "
        "'model.layers.L')"
    )


def check_sae_fits(sae, d_model: int, layer: int, *, config_key: str = "sae") -> None:
    """Raise ValueError unless ``sae`` reads ``d_model``-wide activations at ``layer``.

    ``layer`` follows the project's numbering (output of block L, 0-based);
    ``config_key`` names the config entry to fix in the message.
    """
    d_in = int(sae.cfg.d_in)
    if d_in != int(d_model):
        raise ValueError(
            f"SAE width mismatch for config key {config_key!r}: the SAE reads d_in={d_in} but "
            f"the model's residual stream has d_model={d_model}. Use an SAE trained on this "
            "model (or this model's family)."
        )
    hook = sae.cfg.metadata.hook_name
    try:
        sae_l = sae_layer(hook)
    except ValueError as e:
        raise ValueError(f"config key {config_key!r}: {e}") from e
    if sae_l != int(layer):
        raise ValueError(
            f"SAE layer mismatch for config key {config_key!r}: the SAE was trained on layer "
            f"{sae_l} (hook {hook!r}) but the analysis reads layer {layer}. Set the layer to "
            f"{sae_l} or pick the SAE id for layer {layer}."
        )

