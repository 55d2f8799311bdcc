"""Latent Scaling (Minder et al. 2025): is a "model-specific" latent really absent elsewhere?

For latent j with decoder row ``u = d_j^own`` of the model it seems specific to (the
one with the larger decoder norm) and activations ``f_j``, the closed-form least-
squares scale of ``f_j u`` against a target ``y`` over the paired tokens is

    beta = <u, sum_t f_j(t) y_t> / (|u|^2 sum_t f_j(t)^2)

with targets per model m, as the anchor's code computes them
(science-of-finetuning/sparsity-artifacts-crosscoders, ``compute_scalers.py``): the
full reconstruction ``xhat_m`` (latent j's own small decoder in the other model
included: a latent whose other-model decoder is a quarter of its own already puts a
quarter of it there) and the error with latent j put back (``x_m - xhat_m + f_j
d_j^m``). A truly instruct-only latent explains the instruct error/reconstruction (beta
~ 1) and not the base model's (beta ~ 0). The ratios ``nu = beta_other / beta_own`` for
error and reconstruction say how much the other model holds the same thing: a high
error ratio means the other model has the direction but the dictionary failed to
reconstruct it there (complete shrinkage); a high reconstruction ratio means other
latents already rebuild it there (latent decoupling). Either flags the latent as not
model-specific. A latent whose own-model beta is not positive does not explain its own
model at all: its ratio is +inf (flagged), not a sign-flipped number that passes.
"""

from __future__ import annotations

import numpy as np
import torch

TARGETS = ("error", "recon")


class ScalingSums:
    """Streaming sums for the betas of latents ``latents`` (own model index ``own``, 0/1)."""

    def __init__(self, W_dec: torch.Tensor, latents: np.ndarray, own: np.ndarray):
        dev = W_dec.device
        self.idx = torch.as_tensor(np.asarray(latents, np.int64), device=dev)
        own_t = torch.as_tensor(np.asarray(own, np.int64), device=dev)
        self.own = own_t
        self.U = W_dec[own_t, self.idx].detach()  # [c, d]
        # s[m, j] = <d_j^m, u_j>: latent j's own contribution in model m, along u_j
        self.s = (W_dec[:, self.idx].detach() * self.U[None]).sum(-1)  # [2, c]
        c = len(self.idx)
        self.num = {t: torch.zeros(2, c, dtype=torch.float64, device=dev) for t in TARGETS}
        self.den = torch.zeros(c, dtype=torch.float64, device=dev)
        self.count = torch.zeros(c, dtype=torch.long, device=dev)

    @torch.no_grad()
    def add(self, x: torch.Tensor, recon: torch.Tensor, f: torch.Tensor) -> None:
        """One batch: normalised activations and reconstructions [B, 2, d], latents [B, L]."""
        F = f[:, self.idx]  # [B, c]
        for m in range(2):
            xu = x[:, m] @ self.U.T
            ru = recon[:, m] @ self.U.T
            own_part = F * self.s[m]
            err = xu - ru + own_part
            rec = ru
            self.num["error"][m] += (F * err).sum(0).double()
            self.num["recon"][m] += (F * rec).sum(0).double()
        self.den += (F * F).sum(0).double()
        self.count += (F > 0).sum(0)

    def table(self) -> dict[str, np.ndarray]:
        """Per latent: beta_{target}_{base,instruct} and nu_{target} (other/own); NaN if the
        latent never fired."""
        u2 = (self.U.double() ** 2).sum(-1).cpu()
        den_raw = self.den.cpu()
        den = den_raw * u2
        out: dict[str, np.ndarray] = {"latent": self.idx.cpu().numpy()}
        own = self.own.cpu().numpy()
        for t in TARGETS:
            beta = (self.num[t].cpu() / den).numpy()
            beta[:, den_raw.numpy() == 0] = np.nan
            out[f"beta_{t}_base"], out[f"beta_{t}_instruct"] = beta[0], beta[1]
            b_own = beta[own, np.arange(len(own))]
            b_other = beta[1 - own, np.arange(len(own))]
            with np.errstate(all="ignore"):
                out[f"nu_{t}"] = np.where(b_own > 0, b_other / b_own,
                                          np.where(np.isnan(b_own), np.nan, np.inf))
        return out


def scaling_flag(nu_error: np.ndarray, nu_recon: np.ndarray, max_ratio: float) -> np.ndarray:
    """True where the other model explains the latent (either ratio >= max_ratio); a latent
    never active (NaN ratios) is not flagged (False) but has no evidence either way."""
    e, r = np.asarray(nu_error, float), np.asarray(nu_recon, float)
    return (np.nan_to_num(e, nan=-np.inf) >= max_ratio) | (
        np.nan_to_num(r, nan=-np.inf) >= max_ratio)
