"""SAE feature tallies on base vs instruct activations ("The Neutral Mask", claim 3).

The claim: policy-encoding SAE features that fire sporadically in the base model
are completely inactive in the instruct model. The measurement here:

1. ``load_sae`` / ``train_sae`` give one sparse autoencoder (a pretrained sae-lens
   release for real models, or the organism's own TopK SAE trained on its
   extracted activations); ``check_sae_fits`` refuses an SAE whose width or hook
   layer does not match the model's residual stream.
2. ``scan_features`` streams token-level activations (Parquet "token" rows, as
   ``(meta, X)`` batches) through the SAE once per model. It keeps a sparse
   per-(prompt, feature) table and per-prompt reconstruction sums, never a dense
   ``[all tokens, d_sae]`` matrix. ``FeatureScan.tally()`` turns it into the
   feature x label table; ``FeatureScan.reconstruction()`` gives explained
   variance, MSE and L0.
3. ``select_policy_features`` picks policy features on the base scan (prompt-level
   Fisher exact tests, Benjamini-Hochberg FDR, a minimum firing rate), with a
   stratified prompt bootstrap of the whole selection for its stability.
4. ``compare_firing`` sets base and instruct firing rates side by side (the same
   SAE read on both models: the base-trained-SAE-on-instruct confound is why the
   reconstruction quality is reported beside it); ``headline`` summarises.

A feature *fires* on a token when its SAE activation is > 0 (every sae-lens
architecture used here outputs non-negative activations).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rlhf_audit.progress import progress
from rlhf_audit.stats import Estimate, bootstrap

log = logging.getLogger(__name__)

PARTISAN_LABELS = ("left", "right")
NEUTRAL_LABEL = "neutral"
UNLABELLED = "unlabelled"
"""Label given to token rows whose ``label`` is null (prompts outside the partisan set)."""

HEADLINE_KEYS: dict[str, str] = {
    "n_policy_features": (
        "Number of SAE features selected as policy-encoding on base activations "
        "(prompt-level Fisher exact tests, BH FDR); no interval (a count of discoveries; "
        "per-feature half-sample stability is in the selection table)."
    ),
    "share_inactive_in_instruct": (
        "Share of the policy features that never fire on any instruct token (same SAE, "
        "same prompts); interval: bootstrap over features."
    ),
    "policy_firing_rate_base": (
        "Mean over policy features of the token-level firing rate on base activations "
        "(all labelled prompts); interval: bootstrap over features."
    ),
    "policy_firing_rate_instruct": (
        "Mean over policy features of the token-level firing rate on instruct activations; "
        "interval: bootstrap over features."
    ),
    "fve_base": (
        "Fraction of variance of base residual activations explained by the SAE "
        "reconstruction; interval: bootstrap over prompts."
    ),
    "fve_instruct": (
        "Fraction of variance of instruct residual activations explained by the same SAE; "
        "interval: bootstrap over prompts."
    ),
    "l0_base": (
        "Mean number of SAE features firing per base token; interval: bootstrap over prompts."
    ),
    "l0_instruct": (
        "Mean number of SAE features firing per instruct token; interval: bootstrap over prompts."
    ),
}


# --------------------------------------------------------------------------- settings


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


@dataclass(frozen=True)
class SAEAnalysisSettings:
    """Tallies, policy-feature selection and the headline."""

    encode_batch_size: int = 1024
    """Tokens encoded at once (one dense [batch, d_sae] block in memory at a time)."""
    compact_rows: int = 4_000_000
    """Sparse (prompt, feature) rows buffered before they are merged."""
    q: float = 0.05
    """Benjamini-Hochberg false discovery rate over all tests of all tested features."""
    min_prompts_fired: int = 5
    """Label-blind filter before testing: a feature is tested only if it fires on at
    least this many labelled prompts (independent filtering: it does not look at labels)."""
    min_firing_rate: float = 0.02
    """A selected feature must fire on at least this share of prompts in the group it
    favours (partisan, or the left/right side it leans to)."""
    test_left_vs_right: bool = True
    """Also select features whose prompt firing rate differs between left and right."""
    top_k_prompts: int = 10
    """Prompts listed per policy feature for inspection (highest max activation)."""
    n_boot: int = 2000
    """Bootstrap replicates for intervals over features and prompts."""
    n_stability_subsamples: int = 100
    """Random half-samples of the prompts (per label, without replacement) on which the
    selection is repeated for each feature's selection stability (0 = skip)."""
    seed: int = 0
    """Seed for every bootstrap."""


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- training


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


# --------------------------------------------------------------------------- streaming scan


def encode_features(sae, X, batch_size: int = 1024) -> np.ndarray:
    """SAE activations for ``X`` [n_tokens, d_in] as float32 [n_tokens, d_sae], in chunks.

    Dense: for small inputs and tests; streaming code uses ``scan_features``.
    """
    import torch

    out = []
    for start in range(0, len(X), batch_size):
        x = torch.as_tensor(np.asarray(X[start : start + batch_size])).to(sae.device)
        with torch.no_grad():
            out.append(sae.encode(x).to(torch.float32).cpu().numpy())
    if not out:
        return np.zeros((0, int(sae.cfg.d_sae)), dtype=np.float32)
    return np.concatenate(out)


@dataclass
class FeatureScan:
    """One streaming pass of an SAE over one model's token activations."""

    prompts: pl.DataFrame
    """One row per prompt: prompt_id, label, n_tokens, sse (squared reconstruction error,
    summed over tokens and dims), sst (its share of the total sum of squares about the
    global mean; sums to the exact total, a single prompt's value may be negative),
    l0_sum (firing features summed over its tokens)."""
    prompt_features: pl.DataFrame
    """Sparse: one row per (prompt, feature) that fired at least once: prompt_id, label,
    feature, n_firing_tokens, sum_activation, max_activation, max_token_index (token_index
    of the max, -1 when unknown), max_token_id."""
    d_in: int
    """Width of the activations (d_model)."""
    d_sae: int
    """Number of SAE features."""

    def tally(self) -> pl.DataFrame:
        """Feature x label tallies; see :func:`tally_from_scan`."""
        return tally_from_scan(self)

    def reconstruction(self) -> pl.DataFrame:
        """One row: n_prompts, n_tokens, fve, mse (per element), l0 (mean per token)."""
        p = self.prompts
        n_tok = int(p["n_tokens"].sum())
        sse, sst = float(p["sse"].sum()), float(p["sst"].sum())
        return pl.DataFrame(
            {
                "n_prompts": [p.height],
                "n_tokens": [n_tok],
                "fve": [1.0 - sse / sst if sst > 0 else float("nan")],
                "mse": [sse / (n_tok * self.d_in) if n_tok else float("nan")],
                "l0": [float(p["l0_sum"].sum()) / n_tok if n_tok else float("nan")],
            }
        )

    def reconstruction_estimates(self, n_boot: int = 2000, seed: int = 0) -> dict[str, Estimate]:
        """FVE, MSE and L0 as Estimates, bootstrapped over prompts.

        Replicates keep the full-sample mean as the centre of the total sum of squares
        (an O(1/n_prompts) difference from re-centring each replicate).
        """
        p = self.prompts
        sse, sst = p["sse"].to_numpy(), p["sst"].to_numpy()
        n_tok, l0 = p["n_tokens"].to_numpy().astype(float), p["l0_sum"].to_numpy().astype(float)
        d = float(self.d_in)
        return {
            "fve": bootstrap(
                lambda a, b: 1.0 - a.sum() / b.sum(),
                sse,
                sst,
                n_boot=n_boot,
                seed=seed,
                unit="fraction",
            ),
            "mse": bootstrap(
                lambda a, n: a.sum() / (n.sum() * d),
                sse,
                n_tok,
                n_boot=n_boot,
                seed=seed,
                unit="squared activation",
            ),
            "l0": bootstrap(
                lambda a, n: a.sum() / n.sum(),
                l0,
                n_tok,
                n_boot=n_boot,
                seed=seed,
                unit="features per token",
            ),
        }


def write_scan(scan: FeatureScan, out_dir: str | Path, provenance: dict | None = None) -> None:
    """Write a scan as ``prompts.parquet``, ``prompt_features.parquet`` and ``scan.json``
    (d_in, d_sae) in ``out_dir``, atomically, so scanning and selection can be separate jobs."""
    from rlhf_audit.io import write_json, write_table

    out_dir = Path(out_dir)
    write_table(scan.prompts, out_dir / "prompts.parquet", provenance)
    write_table(scan.prompt_features, out_dir / "prompt_features.parquet", provenance)
    write_json({"d_in": scan.d_in, "d_sae": scan.d_sae}, out_dir / "scan.json")


def read_scan(out_dir: str | Path) -> FeatureScan:
    """Read a scan written by :func:`write_scan`."""
    import json

    out_dir = Path(out_dir)
    meta_path = out_dir / "scan.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: {out_dir} is not a scan from write_scan")
    dims = json.loads(meta_path.read_text())
    return FeatureScan(
        prompts=pl.read_parquet(out_dir / "prompts.parquet"),
        prompt_features=pl.read_parquet(out_dir / "prompt_features.parquet"),
        d_in=int(dims["d_in"]),
        d_sae=int(dims["d_sae"]),
    )


def _as_batches(batches) -> Iterable:
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], pl.DataFrame):
        return [batches]
    return batches


class _PromptRegistry:
    """Stable integer codes for prompt ids, with one label per prompt enforced."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.ids: list[str] = []
        self.labels: list[str] = []

    def codes(self, meta: pl.DataFrame, batch_no: int) -> np.ndarray:
        pairs = meta.select("prompt_id", "label").unique(maintain_order=True)
        for pid, lab in pairs.iter_rows():
            c = self.code.get(pid)
            if c is None:
                self.code[pid] = len(self.ids)
                self.ids.append(pid)
                self.labels.append(lab)
            elif self.labels[c] != lab:
                raise ValueError(
                    f"prompt_id {pid!r} has label {self.labels[c]!r} earlier and {lab!r} in "
                    f"batch {batch_no}: one prompt must have one label; fix the prompt file"
                )
        mapping = {pid: self.code[pid] for pid in pairs["prompt_id"].to_list()}
        return meta["prompt_id"].replace_strict(mapping, return_dtype=pl.Int64).to_numpy()


_MERGE_AGG = (
    pl.col("n").sum().alias("n"),
    pl.col("s").sum().alias("s"),
    pl.col("t").get(pl.col("m").arg_max()).alias("t"),
    pl.col("tid").get(pl.col("m").arg_max()).alias("tid"),
    pl.col("m").max().alias("m"),
)


def scan_features(
    sae, batches, settings: SAEAnalysisSettings = SAEAnalysisSettings()
) -> FeatureScan:
    """Stream token-level activations through ``sae``; return the sparse :class:`FeatureScan`.

    ``batches``: an iterable of ``(meta, X)`` pairs (or one pair), ``meta`` a polars
    DataFrame with ``prompt_id`` and ``label`` (nullable -> "unlabelled"; optional
    ``token_index``, ``token_id``), ``X`` [n_rows, d_in] activations, one row per token.
    A prompt's tokens may be split across batches. Memory: one dense
    [encode_batch_size, d_sae] block at a time plus the sparse (prompt, feature) table.
    """
    import torch

    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    reg = _PromptRegistry()
    pf_parts: list[pl.DataFrame] = []
    pf_rows = 0
    pf_limit = settings.compact_rows  # grows so that merging stays linear overall
    pr_parts: list[pl.DataFrame] = []
    ref = None  # centre for the sums of squares; corrected to the global mean at the end
    sum_x = torch.zeros(d_in, dtype=torch.float64)
    n_total = 0

    def merge(parts: list[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat(parts).group_by("p", "f").agg(*_MERGE_AGG)

    for b, item in enumerate(progress(_as_batches(batches), desc="SAE scan", unit="batch")):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"batch {b}: expected a (meta DataFrame, X array) pair")
        meta, X = item
        for col in ("prompt_id", "label"):
            if col not in meta.columns:
                raise ValueError(f"batch {b}: meta lacks column {col!r} (have {meta.columns})")
        X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
        if X.ndim != 2 or X.shape[0] != meta.height:
            raise ValueError(
                f"batch {b}: X has shape {tuple(X.shape)} but meta has "
                f"{meta.height} rows; need [n_rows, d_in]"
            )
        if X.shape[1] != d_in:
            raise ValueError(
                f"batch {b}: activations are {X.shape[1]} wide but the SAE reads "
                f"d_in={d_in}; check the SAE spec against the model (check_sae_fits)"
            )
        if meta.height == 0:
            continue
        finite = torch.isfinite(X).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise ValueError(
                f"batch {b}: activation row {bad} (prompt_id "
                f"{meta['prompt_id'][bad]!r}) is not finite; re-extract it"
            )
        meta = meta.with_columns(pl.col("label").fill_null(UNLABELLED))
        codes = reg.codes(meta, b)
        tok_idx = (
            meta["token_index"].cast(pl.Int32).to_numpy()
            if "token_index" in meta.columns
            else np.full(meta.height, -1, np.int32)
        )
        tok_id = (
            meta["token_id"].cast(pl.Int32).to_numpy()
            if "token_id" in meta.columns
            else np.full(meta.height, -1, np.int32)
        )
        for start in range(0, meta.height, settings.encode_batch_size):
            stop = min(start + settings.encode_batch_size, meta.height)
            x = X[start:stop].to(sae.device)
            with torch.no_grad():
                acts = sae.encode(x)
                recon = sae.decode(acts)
            acts = acts.to(torch.float32)
            x64 = x.to(torch.float64)
            if ref is None:
                ref = x64.mean(0)
            fired = acts > 0
            rows, feats = fired.nonzero(as_tuple=True)
            vals = acts[rows, feats].cpu().numpy()
            rows, feats = rows.cpu().numpy(), feats.cpu().numpy()
            sse = ((recon.to(torch.float64) - x64) ** 2).sum(-1).cpu().numpy()
            sst = ((x64 - ref) ** 2).sum(-1).cpu().numpy()
            l0 = fired.sum(-1).cpu().numpy()
            sum_x += x64.sum(0).cpu()
            n_total += stop - start
            c = codes[start:stop]
            pr_parts.append(
                pl.DataFrame({"p": c, "sse": sse, "sst": sst, "l0": l0.astype(np.int64)})
                .group_by("p")
                .agg(
                    pl.len().alias("n"),
                    pl.col("sse").sum(),
                    pl.col("sst").sum(),
                    pl.col("l0").sum(),
                )
            )
            if len(rows):
                chunk = pl.DataFrame(
                    {
                        "p": c[rows],
                        "f": feats.astype(np.int32),
                        "a": vals.astype(np.float64),
                        "t": tok_idx[start:stop][rows],
                        "tid": tok_id[start:stop][rows],
                    }
                )
                pf_parts.append(
                    chunk.group_by("p", "f").agg(
                        pl.len().alias("n"),
                        pl.col("a").sum().alias("s"),
                        pl.col("t").get(pl.col("a").arg_max()).alias("t"),
                        pl.col("tid").get(pl.col("a").arg_max()).alias("tid"),
                        pl.col("a").max().alias("m"),
                    )
                )
                pf_rows += pf_parts[-1].height
                if pf_rows > pf_limit and len(pf_parts) > 1:
                    pf_parts = [merge(pf_parts)]
                    pf_rows = pf_parts[0].height
                    pf_limit = max(settings.compact_rows, 2 * pf_rows)
    if not reg.ids:
        raise ValueError("scan_features: no token rows in the batches")

    prompt_tbl = pl.DataFrame(
        {"p": np.arange(len(reg.ids)), "prompt_id": reg.ids, "label": reg.labels}
    )
    pr = (
        pl.concat(pr_parts)
        .group_by("p")
        .agg(pl.col("n").sum(), pl.col("sse").sum(), pl.col("sst").sum(), pl.col("l0").sum())
    )
    # Re-centre the sums of squares on the global mean: sum ||x - mu||^2 =
    # sum ||x - ref||^2 - n ||mu - ref||^2, shared out per token.
    mu = sum_x / n_total
    shift = float(((mu - ref.cpu()) ** 2).sum())
    prompts = (
        prompt_tbl.join(pr, on="p", how="left")
        .sort("p")
        .select(
            "prompt_id",
            "label",
            pl.col("n").alias("n_tokens"),
            pl.col("sse"),
            (pl.col("sst") - pl.col("n") * shift).alias("sst"),
            pl.col("l0").alias("l0_sum"),
        )
    )
    pf = (
        merge(pf_parts)
        if pf_parts
        else pl.DataFrame(
            schema={
                "p": pl.Int64,
                "f": pl.Int32,
                "n": pl.UInt32,
                "s": pl.Float64,
                "t": pl.Int32,
                "tid": pl.Int32,
                "m": pl.Float64,
            }
        )
    )
    pf = (
        pf.join(prompt_tbl, on="p", how="left")
        .sort("p", "f")
        .select(
            "prompt_id",
            "label",
            pl.col("f").cast(pl.Int32).alias("feature"),
            pl.col("n").cast(pl.Int64).alias("n_firing_tokens"),
            pl.col("s").alias("sum_activation"),
            pl.col("m").alias("max_activation"),
            pl.col("t").cast(pl.Int32).alias("max_token_index"),
            pl.col("tid").cast(pl.Int32).alias("max_token_id"),
        )
    )
    log.info(
        "scan_features: %d prompts, %d tokens, %d (prompt, feature) firing pairs",
        prompts.height,
        n_total,
        pf.height,
    )
    return FeatureScan(prompts=prompts, prompt_features=pf, d_in=d_in, d_sae=d_sae)


def tally_from_scan(scan: FeatureScan) -> pl.DataFrame:
    """Feature x label tallies, sparse long format.

    Columns: feature (Int32; null on the per-label totals rows), label, n_tokens and
    n_prompts (label totals, on every row), n_firing_tokens, n_firing_prompts,
    firing_rate (n_firing_tokens / n_tokens), prompt_firing_rate (n_firing_prompts /
    n_prompts), sum_activation, mean_activation (over firing tokens), max_activation.
    Feature rows exist only where the feature fired on that label; a missing
    (feature, label) row means zero firing out of the totals row's tokens and prompts.
    """
    totals = scan.prompts.group_by("label").agg(
        pl.col("n_tokens").sum().cast(pl.Int64), pl.len().cast(pl.Int64).alias("n_prompts")
    )
    per = scan.prompt_features.group_by("feature", "label").agg(
        pl.col("n_firing_tokens").sum().cast(pl.Int64),
        pl.len().cast(pl.Int64).alias("n_firing_prompts"),
        pl.col("sum_activation").sum(),
        pl.col("max_activation").max(),
    )
    feat_rows = per.join(totals, on="label", how="left").with_columns(
        (pl.col("n_firing_tokens") / pl.col("n_tokens")).alias("firing_rate"),
        (pl.col("n_firing_prompts") / pl.col("n_prompts")).alias("prompt_firing_rate"),
        (pl.col("sum_activation") / pl.col("n_firing_tokens")).alias("mean_activation"),
    )
    total_rows = totals.with_columns(
        pl.lit(None, pl.Int32).alias("feature"),
        pl.lit(0, pl.Int64).alias("n_firing_tokens"),
        pl.lit(0, pl.Int64).alias("n_firing_prompts"),
        pl.lit(None, pl.Float64).alias("sum_activation"),
        pl.lit(None, pl.Float64).alias("max_activation"),
        pl.lit(None, pl.Float64).alias("firing_rate"),
        pl.lit(None, pl.Float64).alias("prompt_firing_rate"),
        pl.lit(None, pl.Float64).alias("mean_activation"),
    )
    cols = [
        "feature",
        "label",
        "n_tokens",
        "n_prompts",
        "n_firing_tokens",
        "n_firing_prompts",
        "firing_rate",
        "prompt_firing_rate",
        "sum_activation",
        "mean_activation",
        "max_activation",
    ]
    return pl.concat([total_rows.select(cols), feat_rows.select(cols)]).sort(
        "feature", "label", nulls_last=False
    )


def tally_features(
    sae, batches, settings: SAEAnalysisSettings = SAEAnalysisSettings()
) -> pl.DataFrame:
    """Stream ``(meta, X)`` token batches through ``sae``; feature x label tallies.

    See :func:`scan_features` for the input and :func:`tally_from_scan` for the columns.
    """
    return scan_features(sae, batches, settings).tally()


# --------------------------------------------------------------------------- statistics


def fisher_exact_2x2(a, b, c, d, alternative: str = "two-sided") -> np.ndarray:
    """Vectorised Fisher exact test on tables ``[[a, b], [c, d]]`` (the p-values of
    ``scipy.stats.fisher_exact``; 'greater' = odds ratio > 1, i.e. row 1 fires more).

    Two-sided: the sum of the probabilities of all tables with the same margins that
    are no more likely than the observed one (relative tolerance 1e-7, as in R).
    """
    from scipy.special import gammaln
    from scipy.stats import hypergeom

    a, b, c, d = (np.asarray(v, dtype=np.int64) for v in (a, b, c, d))
    a, b, c, d = np.broadcast_arrays(a, b, c, d)
    if np.any((a < 0) | (b < 0) | (c < 0) | (d < 0)):
        raise ValueError("fisher_exact_2x2: counts must be non-negative")
    n1, n2, n = a + b, c + d, a + c  # row 1 size, row 2 size, first-column total
    total = n1 + n2
    p = np.ones(a.shape, dtype=float)
    ok = ~((n1 == 0) | (n2 == 0) | (n == 0) | (n == total))  # degenerate margins: p = 1
    if alternative == "greater":
        p[ok] = hypergeom.sf(a[ok] - 1, total[ok], n1[ok], n[ok])
    elif alternative == "less":
        p[ok] = hypergeom.cdf(a[ok], total[ok], n1[ok], n[ok])
    elif alternative == "two-sided":
        idx = np.flatnonzero(ok.ravel())
        if len(idx):
            af, n1f, nf, tf = (v.ravel()[idx] for v in (a, n1, n, total))
            # log-factorials looked up from one table: much faster than hypergeom.logpmf
            lf = gammaln(np.arange(int(tf.max()) + 2, dtype=float) + 1.0)

            def logpmf(x, t, r, m):  # x of m draws are row-1 items, row 1 holds r of t
                return (
                    lf[r]
                    - lf[x]
                    - lf[r - x]
                    + lf[t - r]
                    - lf[m - x]
                    - lf[t - r - m + x]
                    - lf[t]
                    + lf[m]
                    + lf[t - m]
                )

            lo = np.maximum(0, nf - (tf - n1f))
            hi = np.minimum(nf, n1f)
            width = int((hi - lo).max()) + 1
            out = np.ones(len(idx))
            step = max(1, 2_000_000 // width)
            for s in range(0, len(idx), step):
                sl = slice(s, s + step)
                x = lo[sl, None] + np.arange(width)[None, :]
                valid = x <= hi[sl, None]
                x = np.where(valid, x, lo[sl, None])
                lp = logpmf(x, tf[sl, None], n1f[sl, None], nf[sl, None])
                lp_obs = logpmf(af[sl], tf[sl], n1f[sl], nf[sl])
                keep = valid & (lp <= lp_obs[:, None] + math.log1p(1e-7))
                out[sl] = np.where(keep, np.exp(lp), 0.0).sum(1)
            flat = p.ravel()
            flat[idx] = out
            p = flat.reshape(a.shape)
    else:
        raise ValueError(
            f"alternative must be 'two-sided', 'less' or 'greater', not {alternative!r}"
        )
    return np.clip(p, 0.0, 1.0)


def _bh(p: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg: (reject, adjusted p) via statsmodels."""
    from statsmodels.stats.multitest import multipletests

    if p.size == 0:
        return np.zeros(0, bool), np.zeros(0)
    reject, padj, _, _ = multipletests(p, alpha=q, method="fdr_bh")
    return reject, padj


def _select_from_counts(fl, fr, fn, nl, nr, nn, s: SAEAnalysisSettings) -> dict[str, np.ndarray]:
    """Tests and selection for features with prompt firing counts (fl, fr, fn) out of
    (nl, nr, nn) left/right/neutral prompts. Vectorised over features."""
    fp, np_ = fl + fr, nl + nr
    tested = (fp + fn) >= s.min_prompts_fired
    rate_p, rate_n = fp / np_, fn / nn
    rate_l, rate_r = fl / nl, fr / nr
    p_pn = np.ones(fl.shape)
    p_lr = np.ones(fl.shape)
    t = np.flatnonzero(tested)
    p_pn[t] = fisher_exact_2x2(fp[t], np_ - fp[t], fn[t], nn - fn[t], "greater")
    pvals = [p_pn[t]]
    if s.test_left_vs_right:
        p_lr[t] = fisher_exact_2x2(fl[t], nl - fl[t], fr[t], nr - fr[t], "two-sided")
        pvals.append(p_lr[t])
    # One BH family over every test of every tested feature.
    _, padj = _bh(np.concatenate(pvals), s.q)
    q_pn = np.full(fl.shape, np.nan)
    q_lr = np.full(fl.shape, np.nan)
    q_pn[t] = padj[: len(t)]
    if s.test_left_vs_right:
        q_lr[t] = padj[len(t) :]
    sel_pn = tested & (q_pn <= s.q) & (rate_p >= s.min_firing_rate)
    sel_lr = (
        tested & (q_lr <= s.q) & (np.maximum(rate_l, rate_r) >= s.min_firing_rate)
        if s.test_left_vs_right
        else np.zeros(fl.shape, bool)
    )
    return {
        "tested": tested,
        "p_pn": p_pn,
        "p_lr": p_lr,
        "q_pn": q_pn,
        "q_lr": q_lr,
        "sel_pn": sel_pn,
        "sel_lr": sel_lr,
        "rate_p": rate_p,
        "rate_n": rate_n,
        "rate_l": rate_l,
        "rate_r": rate_r,
    }


@dataclass
class PolicySelection:
    """Policy features chosen on the base scan."""

    features: pl.DataFrame
    """One row per feature that fired on a labelled base prompt: feature, n_firing_prompts_
    {left,right,neutral}, prompt_rate_{left,right,neutral,partisan}, tested, p/q values of
    both tests (p_partisan_vs_neutral one-sided, p_left_vs_right two-sided), selected_by
    ("partisan_vs_neutral", "left_vs_right", "both" or null), leaning ("left"/"right"),
    selected, selection_stability (share of random half-samples of the prompts on which
    the same rule selects it)."""
    n_selected: Estimate
    """Number of selected features (no interval: see :func:`select_policy_features`)."""
    criterion: str = ""
    """The selection rule in words, with its settings."""
    n_prompts: dict[str, int] = field(default_factory=dict)
    """Base prompts per label used in the tests."""

    @property
    def selected(self) -> pl.DataFrame:
        return self.features.filter(pl.col("selected"))


def select_policy_features(
    base: FeatureScan, settings: SAEAnalysisSettings = SAEAnalysisSettings()
) -> PolicySelection:
    """Select policy-encoding features on the base model's scan.

    Criterion (prompt level: a feature "fires on a prompt" if it fires on any of its
    tokens): among features firing on >= ``min_prompts_fired`` labelled prompts (a
    label-blind filter), test (1) partisan (left + right) vs neutral prompts, one-sided
    Fisher exact (fires more on partisan), and (2) left vs right, two-sided Fisher
    exact; Benjamini-Hochberg over all tests at ``q``. A feature is selected when a
    test rejects and its prompt firing rate in the favoured group (partisan, or the
    side it leans to) is >= ``min_firing_rate``.

    Stability (``selection_stability``): the share of ``n_stability_subsamples`` random
    half-samples of the prompts (without replacement, within each label) on which the
    same procedure selects the feature (Meinshausen & Buehlmann's stability selection).
    ``n_selected`` has no interval: resampling prompts *with* replacement duplicates
    them, which inflates Fisher/BH discoveries (on null data the bootstrap range need
    not even contain the observed count), and the count of discoveries is not a smooth
    statistic a bootstrap is valid for.
    """
    import scipy.sparse as sp

    s = settings
    prompts = base.prompts
    n_by = dict(prompts.group_by("label").len().iter_rows())
    need = [PARTISAN_LABELS[0], PARTISAN_LABELS[1], NEUTRAL_LABEL]
    missing = [lab for lab in need if n_by.get(lab, 0) == 0]
    if missing:
        raise ValueError(
            f"select_policy_features: the base scan has no prompts labelled {missing} "
            f"(labels present: {sorted(n_by)}); the partisan prompt set needs left, right "
            "and neutral prompts"
        )
    n_l, n_r, n_n = (int(n_by[lab]) for lab in need)

    pf = base.prompt_features.filter(pl.col("label").is_in(need))
    feats = np.unique(pf["feature"].to_numpy()).astype(np.int64)
    # Prompt x feature firing indicator (sparse), and each prompt's label group.
    rows = (
        pf.select("prompt_id")
        .join(
            prompts.select("prompt_id").with_row_index("row"),
            on="prompt_id",
            how="left",
            maintain_order="left",
        )["row"]
        .to_numpy()
        .astype(np.int64)
    )
    cols = np.searchsorted(feats, pf["feature"].to_numpy())
    fire = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(prompts.height, len(feats)))
    lab = prompts["label"].to_numpy()
    groups = [np.flatnonzero(lab == g) for g in need]

    def counts(rows_by_group: list[np.ndarray]) -> list[np.ndarray]:
        """Firing-prompt counts per feature for each label, over the given prompt rows."""
        out = []
        for rows_g in rows_by_group:
            w = np.zeros(prompts.height)
            w[rows_g] = 1.0
            out.append(np.asarray(fire.T @ w).ravel())
        return out

    fl, fr, fn = counts(groups)
    res = _select_from_counts(fl, fr, fn, n_l, n_r, n_n, s)
    selected = res["sel_pn"] | res["sel_lr"]

    rng = np.random.default_rng(s.seed)
    picked = np.zeros(len(feats))
    half = [len(g) // 2 for g in groups]
    for _ in range(s.n_stability_subsamples):
        sub = [rng.choice(g, size=h, replace=False) for g, h in zip(groups, half, strict=True)]
        r = _select_from_counts(*counts(sub), *half, s)
        picked += r["sel_pn"] | r["sel_lr"]
    n_est = Estimate(
        float(selected.sum()),
        math.nan,
        math.nan,
        n_l + n_r + n_n,
        unit="features",
        method="count of BH discoveries; no interval (see select_policy_features)",
    )

    selected_by = np.where(
        res["sel_pn"] & res["sel_lr"],
        "both",
        np.where(
            res["sel_pn"], "partisan_vs_neutral", np.where(res["sel_lr"], "left_vs_right", None)
        ),
    )
    table = pl.DataFrame(
        {
            "feature": feats.astype(np.int32),
            "n_firing_prompts_left": fl.astype(np.int64),
            "n_firing_prompts_right": fr.astype(np.int64),
            "n_firing_prompts_neutral": fn.astype(np.int64),
            "prompt_rate_left": res["rate_l"],
            "prompt_rate_right": res["rate_r"],
            "prompt_rate_neutral": res["rate_n"],
            "prompt_rate_partisan": res["rate_p"],
            "tested": res["tested"],
            "p_partisan_vs_neutral": np.where(res["tested"], res["p_pn"], np.nan),
            "q_partisan_vs_neutral": res["q_pn"],
            "p_left_vs_right": np.where(res["tested"] & s.test_left_vs_right, res["p_lr"], np.nan),
            "q_left_vs_right": res["q_lr"],
            "selected_by": pl.Series(selected_by.tolist(), dtype=pl.String),
            "leaning": np.where(res["rate_l"] >= res["rate_r"], "left", "right"),
            "selected": selected,
            "selection_stability": (
                picked / s.n_stability_subsamples
                if s.n_stability_subsamples
                else np.full(len(feats), np.nan)
            ),
        }
    ).with_columns(
        pl.col("p_partisan_vs_neutral").fill_nan(None),
        pl.col("q_partisan_vs_neutral").fill_nan(None),
        pl.col("p_left_vs_right").fill_nan(None),
        pl.col("q_left_vs_right").fill_nan(None),
    )
    criterion = (
        f"prompt-level Fisher exact tests (partisan vs neutral one-sided; "
        f"{'left vs right two-sided; ' if s.test_left_vs_right else ''}"
        f"features firing on >= {s.min_prompts_fired} labelled prompts), Benjamini-Hochberg "
        f"q <= {s.q} over all tests, favoured-group prompt firing rate >= {s.min_firing_rate}"
    )
    log.info(
        "select_policy_features: %d of %d tested features selected (%s)",
        int(selected.sum()),
        int(res["tested"].sum()),
        criterion,
    )
    return PolicySelection(
        features=table,
        n_selected=n_est,
        criterion=criterion,
        n_prompts={"left": n_l, "right": n_r, "neutral": n_n},
    )


def _pooled_rates(tally: pl.DataFrame, labels: Iterable[str]) -> tuple[pl.DataFrame, int, int]:
    """Per-feature firing over the given labels pooled: (table, n_tokens, n_prompts)."""
    t = tally.filter(pl.col("label").is_in(list(labels)))
    tot = t.filter(pl.col("feature").is_null())
    n_tok, n_pr = int(tot["n_tokens"].sum()), int(tot["n_prompts"].sum())
    per = (
        t.filter(pl.col("feature").is_not_null())
        .group_by("feature")
        .agg(
            pl.col("n_firing_tokens").sum(),
            pl.col("n_firing_prompts").sum(),
            pl.col("max_activation").max(),
        )
    )
    return per, n_tok, n_pr


def compare_firing(
    base_tally: pl.DataFrame,
    instruct_tally: pl.DataFrame,
    selection: PolicySelection,
    labels: Iterable[str] = (*PARTISAN_LABELS, NEUTRAL_LABEL),
) -> pl.DataFrame:
    """Base vs instruct firing of every feature that fired on either model (same SAE).

    Rates pool the ``labels`` (default: all partisan-set prompts). Columns: feature,
    policy (selected on base), selected_by, n_firing_tokens_{base,instruct},
    firing_rate_{base,instruct} (per token), prompt_firing_rate_{base,instruct},
    max_activation_{base,instruct}, inactive_in_instruct (no instruct token fires).
    """
    labels = list(labels)
    b, nb_tok, nb_pr = _pooled_rates(base_tally, labels)
    i, ni_tok, ni_pr = _pooled_rates(instruct_tally, labels)
    if nb_tok == 0 or ni_tok == 0:
        raise ValueError(
            f"compare_firing: no tokens labelled {labels} in the "
            f"{'base' if nb_tok == 0 else 'instruct'} tally"
        )
    sel = selection.features.filter(pl.col("selected")).select("feature", "selected_by")
    out = (
        b.join(i, on="feature", how="full", coalesce=True, suffix="_instruct")
        .rename(
            {
                "n_firing_tokens": "n_firing_tokens_base",
                "n_firing_prompts": "n_firing_prompts_base",
                "max_activation": "max_activation_base",
            }
        )
        .join(sel, on="feature", how="left")
        .with_columns(
            pl.col("n_firing_tokens_base").fill_null(0),
            pl.col("n_firing_tokens_instruct").fill_null(0),
            pl.col("n_firing_prompts_base").fill_null(0),
            pl.col("n_firing_prompts_instruct").fill_null(0),
        )
    )
    # Policy features that never fired on instruct must still appear (they are the claim).
    missing = sel.join(out.select("feature"), on="feature", how="anti")
    if missing.height:
        raise ValueError(
            "compare_firing: the selection was not made on this base tally (selected features "
            f"absent from it: {missing['feature'].to_list()[:5]})"
        )
    return (
        out.with_columns(
            pl.col("selected_by").is_not_null().alias("policy"),
            (pl.col("n_firing_tokens_base") / nb_tok).alias("firing_rate_base"),
            (pl.col("n_firing_tokens_instruct") / ni_tok).alias("firing_rate_instruct"),
            (pl.col("n_firing_prompts_base") / nb_pr).alias("prompt_firing_rate_base"),
            (pl.col("n_firing_prompts_instruct") / ni_pr).alias("prompt_firing_rate_instruct"),
            (pl.col("n_firing_tokens_instruct") == 0).alias("inactive_in_instruct"),
        )
        .select(
            "feature",
            "policy",
            "selected_by",
            "n_firing_tokens_base",
            "n_firing_tokens_instruct",
            "firing_rate_base",
            "firing_rate_instruct",
            "prompt_firing_rate_base",
            "prompt_firing_rate_instruct",
            "max_activation_base",
            "max_activation_instruct",
            "inactive_in_instruct",
        )
        .sort("feature")
    )


def top_prompts(
    prompt_features: pl.DataFrame, features: Iterable[int], k: int = 10
) -> pl.DataFrame:
    """The ``k`` prompts with the highest max activation for each of ``features``.

    Columns: feature, rank (1 = highest), prompt_id, label, max_activation,
    n_firing_tokens, max_token_index, max_token_id.
    """
    feats = pl.Series("feature", list(features), dtype=pl.Int32)
    return (
        prompt_features.filter(pl.col("feature").is_in(feats.implode()))
        .sort(["feature", "max_activation", "prompt_id"], descending=[False, True, False])
        .group_by("feature", maintain_order=True)
        .head(k)
        .with_columns((pl.int_range(pl.len()).over("feature") + 1).alias("rank"))
        .select(
            "feature",
            "rank",
            "prompt_id",
            "label",
            "max_activation",
            "n_firing_tokens",
            "max_token_index",
            "max_token_id",
        )
    )


def headline(
    selection: PolicySelection,
    comparison: pl.DataFrame,
    base: FeatureScan,
    instruct: FeatureScan,
    settings: SAEAnalysisSettings = SAEAnalysisSettings(),
) -> dict[str, Estimate]:
    """Headline numbers (keys and meanings in :data:`HEADLINE_KEYS`)."""
    pol = comparison.filter(pl.col("policy"))
    inactive = pol["inactive_in_instruct"].to_numpy().astype(float)
    rb = pol["firing_rate_base"].to_numpy()
    ri = pol["firing_rate_instruct"].to_numpy()
    kw = {"n_boot": settings.n_boot, "seed": settings.seed}
    rec_b = base.reconstruction_estimates(**kw)
    rec_i = instruct.reconstruction_estimates(**kw)
    out = {
        "n_policy_features": selection.n_selected,
        "share_inactive_in_instruct": bootstrap(np.mean, inactive, unit="share of features", **kw),
        "policy_firing_rate_base": bootstrap(np.mean, rb, unit="firing tokens per token", **kw),
        "policy_firing_rate_instruct": bootstrap(np.mean, ri, unit="firing tokens per token", **kw),
        "fve_base": rec_b["fve"],
        "fve_instruct": rec_i["fve"],
        "l0_base": rec_b["l0"],
        "l0_instruct": rec_i["l0"],
    }
    assert set(out) == set(HEADLINE_KEYS)
    return out


def reconstruction_table(scans: Mapping[str, FeatureScan]) -> pl.DataFrame:
    """Reconstruction quality per model (``scans``: model role -> scan): one row each with
    model, n_prompts, n_tokens, fve, mse, l0."""
    return pl.concat(
        [s.reconstruction().select(pl.lit(m).alias("model"), pl.all()) for m, s in scans.items()]
    )


# --------------------------------------------------------------------------- figure


def plot_policy_firing(comparison: pl.DataFrame, png_path, *, title: str = "") -> None:
    """Log-log scatter of token firing rates, base (x) vs instruct (y), one point per
    feature; policy features highlighted, features silent in instruct drawn on a floor
    line below the smallest observed rate (likewise features silent in base). Writes PNG + PDF."""
    from rlhf_audit.plotting import new_figure, save_figure

    fig, axes = new_figure()
    ax = axes[0][0]
    rates = pl.concat([comparison["firing_rate_base"], comparison["firing_rate_instruct"]])
    pos = rates.filter(rates > 0)
    floor = float(pos.min()) / 3 if len(pos) else 1e-6
    top = float(pos.max()) * 1.5 if len(pos) else 1.0

    def xy(df: pl.DataFrame):
        x = np.maximum(df["firing_rate_base"].to_numpy(), floor)
        y = np.maximum(df["firing_rate_instruct"].to_numpy(), floor)
        return x, y

    other = comparison.filter(~pl.col("policy"))
    pol = comparison.filter(pl.col("policy"))
    if other.height:
        ax.scatter(
            *xy(other), s=9, c="0.55", lw=0, zorder=2, label=f"other features (n={other.height})"
        )
    if pol.height:
        silent = pol.filter(pl.col("inactive_in_instruct"))
        active = pol.filter(~pl.col("inactive_in_instruct"))
        if active.height:
            ax.scatter(
                *xy(active),
                s=14,
                c="tab:blue",
                lw=0,
                zorder=3,
                label=f"policy, active in instruct (n={active.height})",
            )
        if silent.height:
            ax.scatter(
                *xy(silent),
                s=14,
                c="tab:red",
                marker="v",
                lw=0,
                zorder=3,
                label=f"policy, silent in instruct (n={silent.height})",
            )
    ax.plot([floor, top], [floor, top], c="0.8", lw=0.7, ls="--", zorder=1)
    ax.axhline(floor, c="tab:red", lw=0.5, ls=":", zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 1.5, top)
    ax.set_ylim(floor / 1.5, top)
    ax.set_xlabel("firing rate on base (share of tokens)")
    ax.set_ylabel("firing rate on instruct (share of tokens)")
    ax.text(top, floor, "never fires ", ha="right", va="bottom", fontsize=7, color="tab:red")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    save_figure(fig, png_path)
