"""A BatchTopK crosscoder on two models' paired activations (torch, compact).

One encoder reads both models' activations at once; each model has its own decoder:

    pre = relu(sum_m x_m W_enc[m] + b_enc)                      [B, n_latents]
    f   = pre where pre * (|d_base| + |d_instruct|) is among the k x B largest of the batch
    x_m_hat = f W_dec[m] + b_dec[m]                              [B, d_model] per model

BatchTopK (Bussmann et al. 2024; for crosscoders Minder et al. 2025) keeps k x B
activations across the whole batch, with no L1 penalty (the L1 crosscoder's penalty
is what invents model-specific latents), so a latent's decoder norms are free to say
which model uses it. The selection weighs activations by the summed decoder norm so
a latent cannot win by shrinking its decoders. At inference a latent fires when that
weighted value exceeds a threshold (the mean over late training batches of the
smallest kept value), which makes encoding per token, independent of the batch.

Each model's activations are scaled to mean L2 norm sqrt(d_model) before training
(the factor is stored and applied by :meth:`BatchTopKCrossCoder.normalise`), so both
models weigh alike in the loss and decoder norms compare across models.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlhf_audit.diffing.paired import (
    iter_paired,
    paired_info,
    train_tokens,
    warn_if_overparameterised,
)
from rlhf_audit.diffing.settings import DiffingSettings, resolve_device
from rlhf_audit.io import write_json

log = logging.getLogger(__name__)

WEIGHTS = "crosscoder.safetensors"
CONFIG = "config.json"
MODELS = ("base", "instruct")


class BatchTopKCrossCoder(nn.Module):
    """Crosscoder over ``n_models`` = 2 models; weights live in normalised units."""

    def __init__(self, d_model: int, n_latents: int, k: int, scale=(1.0, 1.0), seed: int = 0):
        super().__init__()
        self.d_model, self.n_latents, self.k = d_model, n_latents, k
        g = torch.Generator().manual_seed(seed)
        # Independent random decoder directions per model, equal norms per latent: with two
        # identical models only training can make the two decoders agree.
        dec = torch.randn(2, n_latents, d_model, generator=g)
        dec = dec / dec.norm(dim=-1, keepdim=True) * 0.1
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.transpose(1, 2).clone())  # [2, d_model, n_latents]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(2, d_model))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("threshold", torch.tensor(0.0))

    def normalise(self, xb: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Raw activations [B, d_model] x 2 -> normalised stack [B, 2, d_model]."""
        return torch.stack([xb * self.scale[0], xi * self.scale[1]], dim=1)

    def decoder_norms(self) -> torch.Tensor:
        """[2, n_latents]: L2 norm of each latent's decoder row per model."""
        return self.W_dec.norm(dim=-1)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.einsum("bmd,mdl->bl", x, self.W_enc) + self.b_enc)

    def encode(self, x: torch.Tensor, batch_topk: bool = False,
               pre: torch.Tensor | None = None) -> torch.Tensor:
        """Latent activations [B, n_latents] of normalised ``x`` [B, 2, d_model].

        ``batch_topk``: keep the k x B largest weighted values of the batch (training);
        else keep those above the learned threshold (inference, per token). ``pre``: the
        pre-activations of ``x`` when already computed.
        """
        pre = self.pre_acts(x) if pre is None else pre
        value = pre * self.decoder_norms().sum(0)
        if batch_topk:
            n_keep = min(self.k * x.shape[0], value.numel())
            top = value.flatten().topk(n_keep, sorted=False)
            mask = torch.zeros_like(value).flatten()
            mask[top.indices] = 1.0
            return pre * mask.view_as(pre)
        return pre * (value > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[B, n_latents] -> reconstructions [B, 2, d_model] (normalised units)."""
        return torch.einsum("bl,mld->bmd", f, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor, batch_topk: bool = False):
        f = self.encode(x, batch_topk)
        return self.decode(f), f

    def aux_loss(self, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor,
                 dead: torch.Tensor, k_aux: int) -> torch.Tensor:
        """AuxK (Gao et al. 2024; the anchors' BatchTopK trainers): the ``dead`` latents'
        ``k_aux`` largest weighted pre-activations per token, decoded without the bias,
        fitted to the main reconstruction's error (held fixed), divided by that error's
        variance over the batch. Its gradient reaches only the dead latents, and pulls
        them toward what the live ones miss. 0 when no latent is dead."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x.new_zeros(())
        err = (x - recon).detach()
        value = torch.where(dead[None, :], pre * self.decoder_norms().sum(0), -torch.inf)
        idx = value.topk(min(k_aux, n_dead), dim=-1, sorted=False).indices
        f_aux = torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))
        err_hat = torch.einsum("bl,mld->bmd", f_aux, self.W_dec)
        num = (err - err_hat).pow(2).sum((-1, -2)).mean()
        den = (err - err.mean(0, keepdim=True)).pow(2).sum((-1, -2)).mean()
        return torch.nan_to_num(num / den, nan=0.0, posinf=0.0)


@dataclass(frozen=True)
class TrainResult:
    model: BatchTopKCrossCoder
    summary: dict


def _fixed_batches(path, batch_size: int, seed: int):
    """Endless fixed-size batches of paired raw activations, reshuffled every epoch."""
    epoch = 0
    buf_b: list[np.ndarray] = []
    buf_i: list[np.ndarray] = []
    n = 0
    while True:
        for _, xb, xi in iter_paired(path, batch_size, seed=seed * 100_003 + epoch,
                                     split="train"):
            buf_b.append(xb)
            buf_i.append(xi)
            n += len(xb)
            while n >= batch_size:
                cb, ci = np.concatenate(buf_b), np.concatenate(buf_i)
                yield cb[:batch_size], ci[:batch_size]
                buf_b, buf_i, n = [cb[batch_size:]], [ci[batch_size:]], len(cb) - batch_size
        epoch += 1


def train_crosscoder(paired_path: str | os.PathLike, settings: DiffingSettings,
                     seed: int | None = None, device: str = "cpu") -> TrainResult:
    """Train one BatchTopK crosscoder on the paired file (streamed; see module docstring)."""
    seed = settings.seed if seed is None else seed
    info = paired_info(paired_path)
    d = info["d_model"]
    if min(info["mean_norm_base"], info["mean_norm_instruct"]) <= 0:
        raise ValueError(f"{paired_path}: a model's paired activations are all zero")
    scale = (math.sqrt(d) / info["mean_norm_base"], math.sqrt(d) / info["mean_norm_instruct"])
    n_train = train_tokens(info, paired_path)
    per_latent = warn_if_overparameterised(settings.n_latents, n_train, f"crosscoder seed {seed}")
    batch = min(settings.batch_size, n_train)
    n_steps = max(1, settings.training_tokens // batch)
    torch.manual_seed(seed)
    cc = BatchTopKCrossCoder(d, settings.n_latents, settings.k, scale, seed).to(device)
    with torch.no_grad():
        mu = torch.tensor([info["mean_base"], info["mean_instruct"]], dtype=torch.float32)
        cc.b_dec.copy_(mu.to(device) * cc.scale[:, None])
    opt = torch.optim.Adam(cc.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    decay_from = int(0.8 * n_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (n_steps - s) / (n_steps - decay_from)))
    last_fired = torch.zeros(settings.n_latents, dtype=torch.long, device=device)
    dead_steps = max(1, math.ceil(settings.dead_tokens / batch))
    k_aux = max(1, d // 2)
    n_dead_seen: list[int] = []
    thr_sum, thr_n = 0.0, 0
    t0 = time.perf_counter()
    data = _fixed_batches(paired_path, batch, seed)
    loss_v = float("nan")
    for step in range(n_steps):
        xb, xi = next(data)
        x = cc.normalise(torch.from_numpy(xb).to(device), torch.from_numpy(xi).to(device))
        pre = cc.pre_acts(x)
        f = cc.encode(x, batch_topk=True, pre=pre)
        recon = cc.decode(f)
        loss = (recon - x).pow(2).sum(-1).sum(-1).mean()
        if settings.auxk_alpha > 0:
            dead = (step - last_fired) >= dead_steps
            n_dead_seen.append(int(dead.sum()))
            loss = loss + settings.auxk_alpha * cc.aux_loss(x, recon, pre, dead, k_aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            fired = (f > 0).any(0)
            last_fired[fired] = step
            if step >= n_steps // 2:  # threshold from the second half of training
                v = f * cc.decoder_norms().sum(0)
                thr_sum += float(v[v > 0].min()) if (v > 0).any() else 0.0
                thr_n += 1
        loss_v = float(loss.detach())
    with torch.no_grad():
        cc.threshold.fill_(thr_sum / max(thr_n, 1))
    summary = {"seed": seed, "steps": n_steps, "batch_size": batch, "n_tokens_train": n_train,
               "train_tokens_per_latent": per_latent, "seconds":
               time.perf_counter() - t0, "final_loss": loss_v, "threshold": float(cc.threshold),
               "latents_unfired_last_quarter": int((last_fired < n_steps * 3 // 4).sum()),
               "auxk_alpha": settings.auxk_alpha, "dead_steps": dead_steps,
               "dead_at_end": n_dead_seen[-1] if n_dead_seen else None}
    log.info("crosscoder seed %d: %d steps of %d tokens in %.1f s, loss %.3f", seed, n_steps,
             batch, summary["seconds"], loss_v)
    return TrainResult(cc.cpu(), summary)


def save_crosscoder(cc: BatchTopKCrossCoder, out_dir: str | os.PathLike, config: dict) -> None:
    """``out_dir/crosscoder.safetensors`` (weights, scale, threshold) + ``config.json``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in cc.state_dict().items()}
    tmp = out_dir / f".{WEIGHTS}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out_dir / WEIGHTS)
    write_json({"d_model": cc.d_model, "n_latents": cc.n_latents, "k": cc.k,
                "models": list(MODELS), "units": "activations x scale (mean norm sqrt(d_model))",
                **config}, out_dir / CONFIG)


def load_crosscoder(directory: str | os.PathLike) -> BatchTopKCrossCoder:
    """A crosscoder saved by :func:`save_crosscoder`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG).exists() or not (directory / WEIGHTS).exists():
        raise FileNotFoundError(f"{directory} holds no crosscoder ({CONFIG} + {WEIGHTS})")
    cfg = json.loads((directory / CONFIG).read_text())
    cc = BatchTopKCrossCoder(cfg["d_model"], cfg["n_latents"], cfg["k"])
    cc.load_state_dict(load_file(str(directory / WEIGHTS)))
    return cc.eval()


def train_crosscoders(paired_path: str | os.PathLike, out_dir: str | os.PathLike,
                      settings: DiffingSettings, device: str = "cpu") -> dict:
    """Train ``settings.n_seeds`` crosscoders into ``out_dir/seed-{s}/``; ``out_dir/index.json``
    lists them (the first is the one analysed latent by latent)."""
    out_dir = Path(out_dir)
    device = resolve_device(device)
    seeds = [settings.seed + i for i in range(settings.n_seeds)]
    runs = []
    for s in seeds:
        res = train_crosscoder(paired_path, settings, seed=s, device=device)
        save_crosscoder(res.model, out_dir / f"seed-{s}", {
            "layer": settings.layer, "settings": settings.to_dict(), "training": res.summary})
        runs.append({"seed": s, "dir": f"seed-{s}", **res.summary})
    index = {"seeds": seeds, "primary": f"seed-{seeds[0]}", "runs": runs}
    write_json(index, out_dir / "index.json")
    return index
