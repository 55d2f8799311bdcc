"""Settings of the diffing study (config key ``diffing``); no heavy imports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

CLASSES = ("base_only", "shared", "instruct_only", "dead")
"""Latent classes: by relative decoder norm, or dead (never fires on the paired tokens)."""


@dataclass(frozen=True)
class DiffingSettings:
    """How the crosscoder and the diff-SAE are trained and their latents classed."""

    layer: int = 2
    """Block whose output (residual stream, shared layer numbering) is diffed."""
    n_latents: int = 512
    """Crosscoder dictionary size."""
    k: int = 8
    """Mean active latents per token (BatchTopK keeps k x batch activations per batch)."""
    training_tokens: int = 1_000_000
    """Paired tokens seen in training per seed (the paired set is cycled through)."""
    batch_size: int = 512
    """Paired tokens per optimiser step."""
    lr: float = 1e-3
    """Adam learning rate (constant, linear decay over the last 20% of steps)."""
    auxk_alpha: float = 1 / 32
    """Weight of the crosscoder's AuxK loss (dead latents fitted to the reconstruction's
    error; 0 = none), as in the anchors' BatchTopK trainers."""
    dead_tokens: int = 10_000_000
    """Training tokens without firing after which a crosscoder latent counts as dead for
    AuxK (the anchors' 10M; the organism's config sets a smaller one)."""
    n_seeds: int = 2
    """Crosscoders trained with seeds seed..seed+n_seeds-1; the first is the one analysed
    latent by latent, all give the class counts' range (min-max, not a confidence interval)."""
    seed: int = 0
    """Seed of initialisation and batch order."""
    base_only_max: float = 0.2
    """A latent with relative norm <= this is base_only."""
    instruct_only_min: float = 0.8
    """A latent with relative norm >= this is instruct_only (0.2/0.8: one decoder norm at
    most a quarter of the other; Minder et al.'s cut, one at most a fifth, is 1/6 and 5/6
    in this parameterisation: looser here, so more latents count as model-specific)."""
    max_scaling_ratio: float = 0.5
    """Latent Scaling: a model-specific latent stays so only if the other model's beta is
    below this fraction of its own model's, for both the error and the reconstruction."""
    diff_sae_latents: int = 256
    """Dictionary size of the diff-SAE."""
    diff_sae_k: int = 8
    """Active latents per token of the diff-SAE (TopK)."""
    diff_sae_tokens: int = 500_000
    """Tokens seen by the diff-SAE in training."""
    top_statements: int = 5
    """Top-activating statements listed per latent."""
    partisan_latents: int = 2
    """Live latents most aligned with the base partisan direction whose mean relative norm
    the headline reads (``partisan_relative_norm``, descriptive)."""
    n_boot: int = 1000
    """Bootstrap replicates (issues, latents or questions resampled)."""

    def __post_init__(self) -> None:
        for name in ("n_latents", "k", "training_tokens", "batch_size", "n_seeds",
                     "diff_sae_latents", "diff_sae_k", "diff_sae_tokens", "top_statements",
                     "partisan_latents", "dead_tokens"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"diffing settings: {name} must be a positive int, got {v!r}")
        if self.k >= self.n_latents:
            raise ValueError(f"diffing settings: k={self.k} must be < n_latents={self.n_latents}")
        if self.diff_sae_k >= self.diff_sae_latents:
            raise ValueError("diffing settings: diff_sae_k must be < diff_sae_latents")
        if not 0 <= self.base_only_max < 0.5 < self.instruct_only_min <= 1:
            raise ValueError(
                "diffing settings: need 0 <= base_only_max < 0.5 < instruct_only_min <= 1, got "
                f"{self.base_only_max}, {self.instruct_only_min}")
        if not self.lr > 0 or not 0 < self.max_scaling_ratio <= 1:
            raise ValueError("diffing settings: lr must be > 0 and max_scaling_ratio in (0, 1]")
        if not self.auxk_alpha >= 0:
            raise ValueError(f"diffing settings: auxk_alpha={self.auxk_alpha} must be >= 0")

    @classmethod
    def from_params(cls, params: dict) -> DiffingSettings:
        """From a rule's ``params.settings`` (unknown keys are an error naming them)."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(params) - names)
        if bad:
            raise KeyError(f"diffing settings: unknown key(s) {bad}; known: {sorted(names)}")
        return cls(**params)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when visible, else "cpu"; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
