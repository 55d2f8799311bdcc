"""A diff-SAE: a sae-lens TopK SAE trained on instruct-minus-base activation differences.

The input is ``x_instruct * s_instruct - x_base * s_base`` per paired token, each model
normalised as for the crosscoder (mean norm sqrt(d_model)), so directions compare
with the crosscoder's decoders and scales do not favour either model. Training
streams batches from the paired file's train split (sae-lens ``SAETrainer`` with a data provider,
as :func:`rlhf_audit.sae.train_sae` does for the organism's SAE); one more streaming
pass over the held-out (eval) tokens measures variance explained and per-latent firing
rates.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from rlhf_audit.diffing.paired import (
    iter_paired,
    paired_info,
    train_tokens,
    warn_if_overparameterised,
)
from rlhf_audit.diffing.settings import DiffingSettings, resolve_device
from rlhf_audit.io import write_json

log = logging.getLogger(__name__)


def _scales(info: dict) -> tuple[float, float]:
    d = info["d_model"]
    return math.sqrt(d) / info["mean_norm_base"], math.sqrt(d) / info["mean_norm_instruct"]


def _diff_batches(path, batch: int, scales, seed: int):
    import torch

    epoch = 0
    buf: list[np.ndarray] = []
    n = 0
    while True:
        for _, xb, xi in iter_paired(path, batch, seed=seed * 7919 + epoch, split="train"):
            buf.append(xi * scales[1] - xb * scales[0])
            n += len(xb)
            while n >= batch:
                cat = np.concatenate(buf)
                yield torch.from_numpy(cat[:batch])
                buf, n = [cat[batch:]], len(cat) - batch
        epoch += 1


def train_diff_sae(paired_path: str | os.PathLike, out_dir: str | os.PathLike,
                   settings: DiffingSettings, device: str = "cpu") -> dict:
    """Train, save (sae-lens inference format in ``out_dir``) and summarise the diff-SAE.

    Trains on the paired file's train split. ``out_dir/training_summary.json``: settings,
    scales, steps, seconds, and on the held-out (eval) tokens the FVE of the differences,
    mean L0 and per-latent firing rates (``n_tokens``: eval tokens read).
    """
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    t0 = time.perf_counter()
    device = resolve_device(device)
    info = paired_info(paired_path)
    scales = _scales(info)
    d = info["d_model"]
    n_train = train_tokens(info, paired_path)
    per_latent = warn_if_overparameterised(settings.diff_sae_latents, n_train, "diff-SAE")
    batch = min(settings.batch_size, n_train)
    n_steps = max(1, settings.diff_sae_tokens // batch)
    mean_diff = (np.asarray(info["mean_instruct"]) * scales[1]
                 - np.asarray(info["mean_base"]) * scales[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        cfg = TopKTrainingSAEConfig(
            d_in=d, d_sae=settings.diff_sae_latents, k=settings.diff_sae_k,
            apply_b_dec_to_input=True, normalize_activations="none", device=device,
            metadata=SAEMetadata(model_name=None,
                                 hook_name=f"blocks.{settings.layer}.hook_resid_post",
                                 hook_head_index=None, rlhf_audit_layer=settings.layer,
                                 rlhf_audit_input="instruct*s_instruct - base*s_base",
                                 rlhf_audit_scales=list(scales)))
        sae = TopKTrainingSAE(cfg)
        with torch.no_grad():
            sae.b_dec.data = torch.tensor(mean_diff, dtype=sae.b_dec.dtype)
        trainer = SAETrainer(
            cfg=SAETrainerConfig(
                total_training_samples=n_steps * batch, train_batch_size_samples=batch,
                lr=settings.lr, lr_end=settings.lr, lr_decay_steps=int(0.2 * n_steps),
                device=device, dead_feature_window=50,
                feature_sampling_window=max(n_steps + 1, 2), n_checkpoints=0,
                checkpoint_path=None, save_final_checkpoint=False,
                logger=LoggingConfig(log_to_wandb=False)),
            sae=sae, data_provider=_diff_batches(paired_path, batch, scales, settings.seed))
        trainer.fit()
    out_dir = Path(out_dir)
    sae.save_inference_model(str(out_dir))
    # Variance explained and firing rates on the held-out tokens, streamed, with the saved
    # weights' forward pass.
    sse = sst = 0.0
    fired = np.zeros(settings.diff_sae_latents, np.int64)
    n = 0
    with torch.no_grad():
        mu = torch.tensor(mean_diff, dtype=torch.float32)
        for _, xb, xi in iter_paired(paired_path, 4096, split="eval"):
            x = torch.from_numpy(xi * scales[1] - xb * scales[0])
            f = sae.encode(x.to(device)).cpu()
            xh = sae.decode(f.to(device)).cpu()
            sse += float((x - xh).pow(2).sum())
            sst += float((x - mu).pow(2).sum())
            fired += (f > 0).sum(0).numpy()
            n += len(x)
    summary = {"settings": settings.to_dict(), "scales": list(scales), "steps": n_steps,
               "batch_size": batch, "seconds": time.perf_counter() - t0,
               "fve": 1 - sse / sst if sst > 0 else float("nan"),
               "l0": float(fired.sum() / max(n, 1)), "n_tokens": n, "n_tokens_train": n_train,
               "train_tokens_per_latent": per_latent,
               "firing_rate": (fired / max(n, 1)).tolist()}
    write_json(summary, out_dir / "training_summary.json")
    log.info("diff-SAE: %d steps in %.1f s, held-out FVE %.3f of the differences", n_steps,
             summary["seconds"], summary["fve"])
    return summary


def load_diff_sae_decoder(directory: str | os.PathLike) -> np.ndarray:
    """The diff-SAE's decoder rows [d_sae, d_model] read straight from its safetensors
    (no sae-lens import needed downstream)."""
    from safetensors.numpy import load_file

    path = Path(directory) / "sae_weights.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no sae-lens SAE (sae_weights.safetensors)")
    return load_file(str(path))["W_dec"].astype(np.float32)
