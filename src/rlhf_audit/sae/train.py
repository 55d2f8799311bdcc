"""Training the organism's own TopK SAE with sae-lens (rule train_organism_sae)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_audit.params import settings_from_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAESettings:
    """Training of the organism's own SAE (TopK, sae-lens ``SAETrainer``)."""

    layer: int = 2
    """Residual layer the SAE reads (output of block ``layer``, 0-based); saved as the
    hook name ``blocks.{layer}.hook_resid_post``."""
    d_sae: int = 1024
    """Number of SAE features (dictionary width)."""
    k: int = 16
    """TopK: features kept active per token."""
    training_tokens: int = 500_000
    """Token samples seen in training (epochs over the data when it holds fewer)."""
    batch_size: int = 1024
    """Tokens per training step."""
    lr: float = 3e-3
    """Adam learning rate (activations are scaled to mean norm sqrt(d_model) first)."""
    lr_decay_fraction: float = 0.2
    """Final share of steps over which the learning rate decays linearly to 0."""
    aux_loss_coefficient: float = 1.0
    """Weight of the TopK auxiliary loss that revives dead features."""
    dead_feature_window: int = 50
    """Steps without firing after which a feature counts as dead (for the aux loss)."""
    max_train_tokens: int = 2_000_000
    """Most token vectors held in memory for training; a seeded random subset beyond."""
    seed: int = 0
    """Seed for initialisation, subsetting and batch order."""
    n_threads: int = 1
    """torch CPU threads while training (1 was fastest on a shared CPU)."""
    device: str = "cpu"
    """torch device for training."""
    model_name: str = ""
    """Model the activations came from, recorded in the SAE's metadata."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **extra: Any) -> SAESettings:
        """From rule train_organism_sae's ``params.settings``; ``extra`` sets what the job
        decides (``n_threads``, ``model_name``)."""
        return settings_from_params(cls, params, **extra)



def _collect_training_matrix(activations, max_tokens: int, seed: int):
    """Stack ``activations`` (array, tensor, or iterable of arrays / (meta, X) pairs) into
    one float32 tensor [n_tokens, d_model], a seeded random subset if above ``max_tokens``."""
    import torch

    def as_2d(a, where: str) -> torch.Tensor:
        if isinstance(a, tuple) and len(a) == 2:
            a = a[1]
        t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        if t.ndim != 2:
            raise ValueError(
                f"train_sae: {where} has shape {tuple(t.shape)}, need [n_tokens, d_model]"
            )
        return t.to(torch.float32)

    if isinstance(activations, (np.ndarray, torch.Tensor)):
        parts = [as_2d(activations, "activations")]
    else:
        parts = [as_2d(a, f"activation batch {i}") for i, a in enumerate(activations)]
    if not parts:
        raise ValueError("train_sae: no activations given")
    widths = {p.shape[1] for p in parts}
    if len(widths) != 1:
        raise ValueError(f"train_sae: activation batches differ in width: {sorted(widths)}")
    data = torch.cat(parts) if len(parts) > 1 else parts[0]
    if not torch.isfinite(data).all():
        bad = int((~torch.isfinite(data)).any(dim=1).nonzero()[0])
        raise ValueError(f"train_sae: activation row {bad} is not finite; re-extract activations")
    if data.shape[0] > max_tokens:
        g = torch.Generator().manual_seed(seed)
        data = data[torch.randperm(data.shape[0], generator=g)[:max_tokens]]
        log.info("train_sae: kept a random %d of the token vectors", max_tokens)
    return data.contiguous()


def _shuffled_batches(data, batch_size: int, seed: int) -> Iterator:
    """Endless epochs of shuffled [batch_size, d] batches (the last partial batch dropped)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    n = data.shape[0]
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1, batch_size):
            yield data[perm[start : start + batch_size]]


def train_sae(activations, out_dir: str | Path, settings: SAESettings = SAESettings()):
    """Train a TopK SAE on residual activations and save it to ``out_dir`` (sae-lens format).

    ``activations``: ``[n_tokens, d_model]`` array/tensor, or an iterable of such arrays
    or of ``(meta, X)`` batches (e.g. from ``extract.read_vectors`` on "token" rows).
    Activations are scaled to mean norm sqrt(d_model) during training and the scale is
    folded into the saved weights, so the saved SAE reads raw activations. Nothing is
    written outside ``out_dir``; no wandb. Returns the inference SAE loaded back from disk.
    Also writes ``out_dir/training_summary.json`` (settings, timings, final metrics).
    """
    import torch
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from rlhf_audit.io import write_json

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    data = _collect_training_matrix(activations, settings.max_train_tokens, settings.seed)
    n_tokens, d_in = data.shape
    if settings.k >= settings.d_sae:
        raise ValueError(f"train_sae: k={settings.k} must be smaller than d_sae={settings.d_sae}")
    batch_size = min(settings.batch_size, n_tokens)
    if n_tokens < settings.batch_size:
        log.warning(
            "train_sae: only %d tokens; batch size lowered from %d", n_tokens, settings.batch_size
        )
    n_steps = max(1, settings.training_tokens // batch_size)

    # Our own scaling (the same rule as sae-lens' expected_average_only_in) so that b_dec
    # can start at the scaled data mean; folded into the weights after training.
    mean_norm = float(data.norm(dim=-1).mean())
    if not mean_norm > 0:
        raise ValueError("train_sae: activations are all zero")
    scale = math.sqrt(d_in) / mean_norm
    data = data * scale

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, settings.n_threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            cfg = TopKTrainingSAEConfig(
                d_in=d_in,
                d_sae=settings.d_sae,
                k=settings.k,
                aux_loss_coefficient=settings.aux_loss_coefficient,
                apply_b_dec_to_input=True,
                normalize_activations="none",
                device=settings.device,
                metadata=SAEMetadata(
                    model_name=settings.model_name or None,
                    hook_name=f"blocks.{settings.layer}.hook_resid_post",
                    hook_head_index=None,
                    rlhf_audit_layer=settings.layer,
                    rlhf_audit_training_tokens=n_steps * batch_size,
                    rlhf_audit_distinct_tokens=int(n_tokens),
                ),
            )
            sae = TopKTrainingSAE(cfg)
            with torch.no_grad():
                sae.b_dec.data = data.mean(0).to(sae.b_dec.dtype).to(sae.b_dec.device)
            trainer_cfg = SAETrainerConfig(
                total_training_samples=n_steps * batch_size,
                train_batch_size_samples=batch_size,
                lr=settings.lr,
                lr_end=settings.lr,
                lr_decay_steps=int(settings.lr_decay_fraction * n_steps),
                device=settings.device,
                dead_feature_window=settings.dead_feature_window,
                feature_sampling_window=max(n_steps + 1, 2),
                n_checkpoints=0,
                checkpoint_path=None,
                save_final_checkpoint=False,
                logger=LoggingConfig(log_to_wandb=False),
            )
            trainer = SAETrainer(
                cfg=trainer_cfg,
                sae=sae,
                data_provider=_shuffled_batches(data, batch_size, settings.seed),
            )
            trainer.fit()
            sae.fold_activation_norm_scaling_factor(scale)
    finally:
        torch.set_num_threads(prev_threads)
    sae.save_inference_model(str(out_dir))
    train_s = time.perf_counter() - t0
    loaded = SAE.load_from_disk(str(out_dir), device=settings.device)
    raw = data[: min(n_tokens, 20_000)] / scale
    q = reconstruction_quality_dense(loaded, raw)
    summary = {
        "settings": asdict(settings),
        "d_in": int(d_in),
        "distinct_tokens": int(n_tokens),
        "training_samples": int(n_steps * batch_size),
        "steps": int(n_steps),
        "activation_scale": scale,
        "seconds": train_s,
        "dead_features_at_end": int(trainer.dead_neurons.sum()),
        "train_fve": q["fve"],
        "train_l0": q["l0"],
        "train_mse": q["mse"],
    }
    write_json(summary, out_dir / "training_summary.json")
    log.info(
        "train_sae: %d steps in %.1f s; FVE %.3f, L0 %.1f on training tokens",
        n_steps,
        train_s,
        q["fve"],
        q["l0"],
    )
    return loaded


def reconstruction_quality_dense(sae, X) -> dict[str, float]:
    """FVE, per-element MSE and mean L0 of ``sae`` on ``X`` [n_tokens, d_in] (held in memory)."""
    import torch

    x = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    x = x.to(torch.float32).to(sae.device)
    with torch.no_grad():
        acts = sae.encode(x)
        recon = sae.decode(acts).to(torch.float64)
    x64 = x.to(torch.float64)
    sse = float(((recon - x64) ** 2).sum())
    sst = float(((x64 - x64.mean(0)) ** 2).sum())
    return {
        "fve": 1.0 - sse / sst if sst > 0 else float("nan"),
        "mse": sse / x.numel(),
        "l0": float((acts > 0).sum(-1).double().mean()),
    }

