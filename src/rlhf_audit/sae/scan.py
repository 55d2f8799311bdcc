"""Streaming an SAE over one model's token activations (rule scan_sae_features).

``scan_features`` reads token-level activations (Parquet "token" rows, as
``(meta, X)`` batches) once per model. It keeps a sparse per-(prompt, feature)
table, per-prompt reconstruction sums and per-prompt mean residual / mean
reconstruction vectors, never a dense ``[all tokens, d_sae]`` matrix.
``spliced_loss`` runs the model itself with the SAE's reconstruction spliced in at
its hook (content tokens only) and returns the per-prompt cross-entropy and KL cost.
Both run in the scan job, the only SAE job that needs a model or a GPU.

A feature *fires* on a token when its SAE activation is > 0 (every sae-lens
architecture used here outputs non-negative activations).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from rlhf_audit.progress import progress

log = logging.getLogger(__name__)

UNLABELLED = "unlabelled"
"""Label given to token rows whose ``label`` is null (prompts outside the partisan set)."""


@dataclass(frozen=True)
class ScanSettings:
    """How the scan streams activations through the SAE and splices it into the model."""

    encode_batch_size: int = 1024
    """Tokens encoded at once (one dense [batch, d_sae] block in memory at a time)."""
    compact_rows: int = 4_000_000
    """Sparse (prompt, feature) rows buffered before they are merged."""
    prompt_means: bool = True
    """Keep each prompt's mean residual and mean reconstruction over its content tokens
    ([n_prompts, d_in] each; what the partisan-component fraction is computed from)."""
    splice_batch_size: int = 16
    """Prompts per forward pass of the spliced-in loss."""


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
    """One row per prompt: prompt_id, label, issue (null when the rows carry none),
    n_tokens, sse (squared reconstruction error, summed over tokens and dims), sst (its
    share of the total sum of squares about the global mean; sums to the exact total, a
    single prompt's value may be negative), l0_sum (firing features summed over its tokens)."""
    prompt_features: pl.DataFrame
    """Sparse: one row per (prompt, feature) that fired at least once: prompt_id, label,
    feature, n_firing_tokens, sum_activation, max_activation, max_token_index (token_index
    of the max, -1 when unknown), max_token_id."""
    d_in: int
    """Width of the activations (d_model)."""
    d_sae: int
    """Number of SAE features."""
    prompt_means: pl.DataFrame | None = None
    """One row per prompt: prompt_id, mean_x and mean_recon (list[float32], length d_in):
    the mean residual and the mean SAE reconstruction over the prompt's content tokens."""
    splice: pl.DataFrame | None = None
    """Per-prompt spliced-in loss (:func:`spliced_loss`), when the scan job computed it."""
    content_tokens: pl.DataFrame | None = None
    """prompt_id, token_index, token_id of every token row scanned (not written to disk:
    the scan job hands it to :func:`spliced_loss` to splice at exactly these positions)."""

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


def write_scan(scan: FeatureScan, out_dir: str | Path, provenance: dict | None = None) -> None:
    """Write a scan in ``out_dir``, atomically, so scanning and selection are separate jobs:
    ``prompts.parquet``, ``prompt_features.parquet``, ``prompt_means.parquet`` and
    ``splice.parquet`` (empty tables when the scan has none) and ``scan.json`` (d_in, d_sae)."""
    from rlhf_audit.io import write_json, write_table

    out_dir = Path(out_dir)
    write_table(scan.prompts, out_dir / "prompts.parquet", provenance)
    write_table(scan.prompt_features, out_dir / "prompt_features.parquet", provenance)
    means = scan.prompt_means if scan.prompt_means is not None else _empty_means()
    write_table(means, out_dir / "prompt_means.parquet", provenance)
    splice = scan.splice if scan.splice is not None else _empty_splice()
    write_table(splice, out_dir / "splice.parquet", provenance)
    write_json({"d_in": scan.d_in, "d_sae": scan.d_sae}, out_dir / "scan.json")


def _empty_means() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "prompt_id": pl.String,
            "mean_x": pl.List(pl.Float32),
            "mean_recon": pl.List(pl.Float32),
        }
    )


SPLICE_SCHEMA = {
    "prompt_id": pl.String,
    "n_ce_tokens": pl.Int64,
    "ce_clean_sum": pl.Float64,
    "ce_spliced_sum": pl.Float64,
    "n_kl_tokens": pl.Int64,
    "kl_sum": pl.Float64,
}
"""Columns of :func:`spliced_loss`'s table."""


def _empty_splice() -> pl.DataFrame:
    return pl.DataFrame(schema=SPLICE_SCHEMA)


def read_scan(out_dir: str | Path) -> FeatureScan:
    """Read a scan written by :func:`write_scan` (empty means / splice tables -> None)."""
    import json

    out_dir = Path(out_dir)
    meta_path = out_dir / "scan.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: {out_dir} is not a scan from write_scan")
    dims = json.loads(meta_path.read_text())

    def optional(name: str) -> pl.DataFrame | None:
        p = out_dir / name
        if not p.is_file():
            return None
        df = pl.read_parquet(p)
        return df if df.height else None

    return FeatureScan(
        prompts=pl.read_parquet(out_dir / "prompts.parquet"),
        prompt_features=pl.read_parquet(out_dir / "prompt_features.parquet"),
        d_in=int(dims["d_in"]),
        d_sae=int(dims["d_sae"]),
        prompt_means=optional("prompt_means.parquet"),
        splice=optional("splice.parquet"),
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
        self.issues: list[str | None] = []

    def codes(self, meta: pl.DataFrame, batch_no: int) -> np.ndarray:
        issue = pl.col("issue") if "issue" in meta.columns else pl.lit(None, pl.String)
        pairs = meta.select("prompt_id", "label", issue.cast(pl.String).alias("issue")).unique(
            subset=["prompt_id", "label"], maintain_order=True
        )
        for pid, lab, iss in pairs.iter_rows():
            c = self.code.get(pid)
            if c is None:
                self.code[pid] = len(self.ids)
                self.ids.append(pid)
                self.labels.append(lab)
                self.issues.append(iss)
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
    sae, batches, settings: ScanSettings = ScanSettings()
) -> FeatureScan:
    """Stream token-level activations through ``sae``; return the sparse :class:`FeatureScan`.

    ``batches``: an iterable of ``(meta, X)`` pairs (or one pair), ``meta`` a polars
    DataFrame with ``prompt_id`` and ``label`` (nullable -> "unlabelled"; optional
    ``issue``, ``token_index``, ``token_id``), ``X`` [n_rows, d_in] activations, one row per token.
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
    # Per-prompt sums of the residual and of its reconstruction (rows = prompt codes).
    psum_x = torch.zeros((0, d_in), dtype=torch.float64, device=sae.device)
    psum_r = torch.zeros((0, d_in), dtype=torch.float64, device=sae.device)
    tok_parts: list[pl.DataFrame] = []

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
        if settings.prompt_means and len(reg.ids) > psum_x.shape[0]:
            grow = max(len(reg.ids), 2 * psum_x.shape[0]) - psum_x.shape[0]
            pad = torch.zeros((grow, d_in), dtype=torch.float64, device=sae.device)
            psum_x, psum_r = torch.cat([psum_x, pad]), torch.cat([psum_r, pad.clone()])
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
        tok_parts.append(pl.DataFrame({"p": codes, "token_index": tok_idx, "token_id": tok_id}))
        codes_dev = torch.as_tensor(np.array(codes, dtype=np.int64), device=sae.device)
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
            if settings.prompt_means:
                psum_x.index_add_(0, codes_dev[start:stop], x64)
                psum_r.index_add_(0, codes_dev[start:stop], recon.to(torch.float64))
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
        {
            "p": np.arange(len(reg.ids)),
            "prompt_id": reg.ids,
            "label": reg.labels,
            "issue": pl.Series(reg.issues, dtype=pl.String),
        }
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
            "issue",
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
    means = None
    if settings.prompt_means:
        n_tok = torch.as_tensor(prompts["n_tokens"].to_numpy().astype(np.float64))[:, None]
        k = len(reg.ids)
        means = pl.DataFrame(
            {
                "prompt_id": reg.ids,
                "mean_x": (psum_x[:k].cpu() / n_tok).to(torch.float32).numpy(),
                "mean_recon": (psum_r[:k].cpu() / n_tok).to(torch.float32).numpy(),
            }
        ).with_columns(pl.col("mean_x").arr.to_list(), pl.col("mean_recon").arr.to_list())
    content = (
        pl.concat(tok_parts)
        .join(prompt_tbl.select("p", "prompt_id"), on="p", how="left")
        .select("prompt_id", "token_index", "token_id")
    )
    return FeatureScan(
        prompts=prompts,
        prompt_features=pf,
        d_in=d_in,
        d_sae=d_sae,
        prompt_means=means,
        content_tokens=content,
    )


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
    sae, batches, settings: ScanSettings = ScanSettings()
) -> pl.DataFrame:
    """Stream ``(meta, X)`` token batches through ``sae``; feature x label tallies.

    See :func:`scan_features` for the input and :func:`tally_from_scan` for the columns.
    """
    return scan_features(sae, batches, settings).tally()



# --------------------------------------------------------------------------- spliced-in loss


def spliced_loss(
    model,
    tokenizer,
    sae,
    prompts: pl.DataFrame,
    content_tokens: pl.DataFrame,
    layer: int,
    *,
    chat_template: bool,
    max_length: int = 1024,
    truncate: bool = False,
    batch_size: int = 16,
) -> pl.DataFrame:
    """Cost of replacing the residual at the SAE's hook by its reconstruction, per prompt.

    ``prompts``: columns id, text (the prompts the activations were extracted from);
    ``content_tokens``: prompt_id, token_index (position in the unpadded sequence),
    token_id of the token rows the scan read, i.e. the content tokens the extraction
    kept. Each prompt is tokenised as extraction did (``chat_template``, ``max_length``,
    ``truncate``), checked against ``content_tokens``, and run twice: clean, and with
    the output of block ``layer`` replaced by ``sae.decode(sae.encode(h))`` at the
    content positions only (template tokens are never spliced). At content positions:
    ``kl_sum`` sums KL(clean || spliced) of the next-token distributions, and
    ``ce_clean_sum`` / ``ce_spliced_sum`` the cross-entropy (nats) of the next token when
    that token is itself a content token. Columns: :data:`SPLICE_SCHEMA`.
    """
    import torch
    import torch.nn.functional as F

    from rlhf_audit.extract.settings import ExtractSettings
    from rlhf_audit.extract.write import tokenize_prompts
    from rlhf_audit.lm.hooks import decoder_layers

    for col in ("id", "text"):
        if col not in prompts.columns:
            raise ValueError(f"spliced_loss: prompts lack column {col!r} (have {prompts.columns})")
    by_prompt = {
        pid: (g["token_index"].to_numpy().astype(np.int64), g["token_id"].to_numpy())
        for (pid,), g in content_tokens.group_by("prompt_id")
    }
    rows = prompts.filter(pl.col("id").is_in(list(by_prompt)))
    missing = sorted(set(by_prompt) - set(rows["id"].to_list()))
    if missing:
        raise ValueError(
            f"spliced_loss: {len(missing)} scanned prompt(s) are not in the prompts table "
            f"(e.g. {missing[:5]}); pass the dataset the activations were extracted from"
        )
    ids = rows["id"].to_list()
    settings = ExtractSettings(
        chat_template=chat_template, max_length=max_length, truncate=truncate, positions=("token",)
    )
    tokens = tokenize_prompts(tokenizer, rows["text"].to_list(), settings, ids)
    positions = []
    for pid, tok in zip(ids, tokens, strict=True):
        pos, tid = by_prompt[pid]
        if pos.min() < 0 or pos.max() >= len(tok) or not np.array_equal(tok[pos], tid):
            raise ValueError(
                f"spliced_loss: prompt {pid!r}: the tokens at the scanned positions differ "
                "from this tokenisation; the activations were extracted with another "
                "tokenizer or chat-template setting. Re-extract, or pass the same settings."
            )
        positions.append(np.sort(pos))
    block = decoder_layers(model)[layer]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    state: dict = {"mask": None}

    def splice(module, args, output):
        if state["mask"] is None:
            return None
        h = output[0] if isinstance(output, tuple | list) else output
        m = state["mask"]
        x = h[m]
        with torch.no_grad():
            r = sae.decode(sae.encode(x.to(sae.W_enc.dtype)))
        h = h.clone()
        h[m] = r.to(h.dtype)
        if isinstance(output, tuple | list):
            return (h, *output[1:])
        return h

    handle = block.register_forward_hook(splice)
    out = []
    order = np.argsort([-len(t) for t in tokens], kind="stable")
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            T = max(len(tokens[i]) for i in idx)
            ids_t = torch.full((len(idx), T), pad_id, dtype=torch.long)
            attn = torch.zeros((len(idx), T), dtype=torch.long)
            content = torch.zeros((len(idx), T), dtype=torch.bool)
            for j, i in enumerate(idx):
                ids_t[j, : len(tokens[i])] = torch.as_tensor(tokens[i].astype(np.int64))
                attn[j, : len(tokens[i])] = 1
                content[j, torch.as_tensor(positions[i])] = True
            ids_t, attn, content = ids_t.to(device), attn.to(device), content.to(device)
            # Next-token CE counts a content position whose next token is content too.
            ce_mask = content.clone()
            ce_mask[:, :-1] &= content[:, 1:]
            ce_mask[:, -1] = False
            logp = []
            with torch.inference_mode():
                for spliced in (False, True):
                    state["mask"] = content if spliced else None
                    logits = model(input_ids=ids_t, attention_mask=attn, use_cache=False).logits
                    logp.append(F.log_softmax(logits[content].float(), dim=-1))
            state["mask"] = None
            clean, spl = logp
            kl = (clean.exp() * (clean - spl)).sum(-1)  # [n_content]
            nxt = torch.zeros_like(ids_t)
            nxt[:, :-1] = ids_t[:, 1:]
            target = nxt[content]
            ce_sel = ce_mask[content]
            ce_c = -clean.gather(1, target[:, None])[:, 0]
            ce_s = -spl.gather(1, target[:, None])[:, 0]
            row_of = torch.nonzero(content)[:, 0]
            for j, i in enumerate(idx):
                on = row_of == j
                ce_on = on & ce_sel
                out.append(
                    {
                        "prompt_id": ids[i],
                        "n_ce_tokens": int(ce_on.sum()),
                        "ce_clean_sum": float(ce_c[ce_on].double().sum()),
                        "ce_spliced_sum": float(ce_s[ce_on].double().sum()),
                        "n_kl_tokens": int(on.sum()),
                        "kl_sum": float(kl[on].double().sum()),
                    }
                )
    finally:
        handle.remove()
    table = pl.DataFrame(out, schema=SPLICE_SCHEMA)
    n_ce = int(table["n_ce_tokens"].sum())
    log.info(
        "spliced_loss at layer %d: %d prompts; CE %.4f -> %.4f nats over %d tokens; KL %.4f",
        layer,
        table.height,
        float(table["ce_clean_sum"].sum()) / max(n_ce, 1),
        float(table["ce_spliced_sum"].sum()) / max(n_ce, 1),
        n_ce,
        float(table["kl_sum"].sum()) / max(int(table["n_kl_tokens"].sum()), 1),
    )
    return table.sort("prompt_id")


def run_scan(
    sae_spec: Mapping,
    layer: int,
    shards: Sequence[str],
    settings: ScanSettings = ScanSettings(),
    *,
    device: str = "auto",
    config_key: str = "sae",
    model_spec: Mapping | None = None,
    dtype: str = "auto",
    prompts_path: str | None = None,
    chat_template: bool = False,
    max_length: int = 1024,
) -> FeatureScan:
    """The scan job: load the SAE on the resolved ``device`` (``auto``: CUDA when visible),
    check it fits the shards, stream the token rows of ``layer`` through it, and, when
    ``model_spec`` is given, load that model and add its spliced-in loss on the prompts
    of ``prompts_path`` (the normalised dataset the shards were extracted from)."""
    from rlhf_audit.extract.read import iter_token_batches, shard_info
    from rlhf_audit.lm.loader import resolve_device
    from rlhf_audit.sae.load import check_sae_fits, load_sae

    dev = str(resolve_device(device))
    sae = load_sae(sae_spec, device=dev)
    d_model = shard_info(shards[0])["d_model"]
    check_sae_fits(sae, d_model, layer, config_key=config_key)
    scan = scan_features(sae, iter_token_batches(list(shards), layer, 4096), settings)
    if model_spec is not None:
        from rlhf_audit.lm.loader import load_causal_lm

        if prompts_path is None:
            raise ValueError("run_scan: the spliced-in loss needs prompts_path")
        model, tok = load_causal_lm(model_spec, device=device, dtype=dtype)
        scan.splice = spliced_loss(
            model, tok, sae, pl.read_parquet(prompts_path), scan.content_tokens, layer,
            chat_template=chat_template, max_length=max_length,
            batch_size=settings.splice_batch_size,
        )
    return scan
