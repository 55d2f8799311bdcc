"""Paired per-token activations of identical text in two models, streamed to one file.

The extraction shards hold "token" rows per model (layout in :mod:`rlhf_audit.extract`).
The same statement is tokenised alike in both models, but the instruct model may see
it inside a chat template (extra tokens before and after) and the base model after
BOS. Per statement the two token-id sequences are aligned on their longest common
contiguous block: those tokens are the statement's content as both models saw it, and
only they are paired (template tokens never enter). If extraction already keeps only
content tokens, the block is the whole sequence.

The paired file (Parquet) has one row per paired token: ``prompt_id``, ``label``,
``issue``, ``token_id``, ``token_index_base``, ``token_index_instruct``, ``split`` and the
two vectors ``base`` and ``instruct`` (fixed_size_list<float32>[d_model]).

``split`` holds statements out: every statement's cluster (its issue, as for the probes'
bootstrap; a statement without an issue is its own cluster, :func:`cluster_of`) is
``train`` or ``eval`` (:func:`assign_split`). The crosscoder and the diff-SAE train on the
``train`` tokens, and every number read off them (variance explained, firing, Latent
Scaling, top statements) comes from the ``eval`` tokens: a dictionary with as many
latents as training tokens reconstructs its own training tokens almost perfectly and
says nothing about new text. The normalising means and norms are the train tokens'. Rows are in a
seeded random order (statements shuffled, then tokens within a chunk), in row groups
of at most ``row_group_rows``, so a reader that takes row groups in random order sees
mixed statements. Memory while pairing stays at about ``max_rows`` paired tokens plus
one Parquet row group of a shard, whatever the number of statements.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rlhf_audit.diffing.context import check_context, same_position_share
from rlhf_audit.io import PROVENANCE_KEY, atomic_path

log = logging.getLogger(__name__)

PAIRED_META_KEY = b"rlhf_audit.diffing.paired"
"""Schema-metadata key of the paired file: layer, d_model, counts, mean norms, means."""
META = ["prompt_id", "label", "issue", "token_index", "token_id"]
SPLITS = ("train", "eval")
"""Values of the paired file's ``split`` column."""
MIN_EVAL_CLUSTERS = 10
"""Held-out clusters below which pairing warns: a percentile bootstrap over G clusters
covered 95% intervals 52% of the time at G = 2, 84% at 5, 88% at 10 (simulated by this
round's review: per-issue FVE sd 0.03)."""


def cluster_of(prompt_id: str, issue: str | None) -> str:
    """The unit a paired statement is held out and resampled by: its issue, as for the
    partisan probes (the shipped statements' framings share an issue and most of their
    tokens); a prompt without an issue is its own cluster, as there."""
    return f"issue:{issue}" if issue else f"prompt:{prompt_id}"


def assign_split(clusters: Sequence[str], eval_share: float, seed: int) -> dict[str, str]:
    """Each distinct cluster to ``"train"`` or ``"eval"``: a seeded permutation of the sorted
    clusters, the first ``round(eval_share * n)`` held out (at least one in each split)."""
    if not 0 < eval_share < 1:
        raise ValueError(f"eval_share={eval_share}: the share of clusters held out for "
                         "evaluation must lie strictly between 0 and 1")
    uniq = sorted(set(clusters))
    if len(uniq) < 2:
        raise ValueError(
            f"held-out evaluation needs at least two clusters (issues, or statements without "
            f"an issue), got {uniq}: give the diffing dataset statements of several issues")
    n_eval = min(len(uniq) - 1, max(1, round(eval_share * len(uniq))))
    held = set(np.random.default_rng(seed).permutation(len(uniq))[:n_eval].tolist())
    return {c: "eval" if i in held else "train" for i, c in enumerate(uniq)}


def _with_split(frame: pl.DataFrame, eval_share: float, seed: int) -> tuple[pl.DataFrame, dict]:
    """``frame`` (prompt_id, issue columns) with its ``split`` column, and split counts."""
    cl = [cluster_of(p, i) for p, i in zip(frame["prompt_id"].to_list(),
                                            frame["issue"].to_list(), strict=True)]
    which = assign_split(cl, eval_share, seed)
    n_eval = sum(v == "eval" for v in which.values())
    if n_eval < MIN_EVAL_CLUSTERS:
        log.warning("only %d held-out clusters (issues): the held-out numbers' issue "
                    "bootstraps under-cover with fewer than %d (about 84%% at 5, 52%% at 2); "
                    "give the diffing dataset more issues or raise diffing.eval_share",
                    n_eval, MIN_EVAL_CLUSTERS)
    split = pl.Series("split", [which[c] for c in cl], dtype=pl.String)
    stats = {"eval_share": float(eval_share), "split_seed": int(seed),
             **{f"n_clusters_{k}": sum(v == k for v in which.values()) for k in SPLITS},
             **{f"n_tokens_{k}": int((split == k).sum()) for k in SPLITS}}
    return frame.with_columns(split), stats


def align_tokens(ids_base: Sequence[int], ids_instruct: Sequence[int]) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Positions (into each sequence) of their longest common contiguous block of token ids.

    Returns two int arrays of equal length (empty if no token is shared).
    """
    a, b = list(map(int, ids_base)), list(map(int, ids_instruct))
    m = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(
        0, len(a), 0, len(b))
    return np.arange(m.a, m.a + m.size), np.arange(m.b, m.b + m.size)


def _files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[str] = []
    for p in map(Path, items):
        if p.is_dir():
            out += sorted(str(f) for f in p.glob("shard-*.parquet"))
        elif p.exists():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"activation shard {p} does not exist")
    if not out:
        raise ValueError("no activation shards given")
    return out


def _token_filter(layer: int, prompt_ids: list[str] | None = None) -> pc.Expression:
    f = (pc.field("layer") == layer) & (pc.field("position") == "token")
    if prompt_ids is not None:
        f = f & pc.field("prompt_id").isin(prompt_ids)
    return f


def _token_meta(files: list[str], layer: int, role: str) -> pl.DataFrame:
    """Token-row metadata (no vectors) of every shard, with the shard index ``file``."""
    frames = []
    for i, f in enumerate(files):
        ds = pads.dataset(f, format="parquet")
        cols = META + [c for c in ("sequence_hash",) if c in ds.schema.names]
        frame = pl.from_arrow(ds.to_table(columns=cols, filter=_token_filter(layer)))
        if "sequence_hash" not in frame.columns:  # a shard from before the hash column
            frame = frame.with_columns(pl.lit(None, pl.Int64).alias("sequence_hash"))
        frames.append(frame.with_columns(pl.lit(i, pl.Int32).alias("file")))
    meta = pl.concat(frames)
    if meta.height == 0:
        raise ValueError(
            f"{role} shards (e.g. {files[0]}) hold no 'token' rows at layer {layer}: extract "
            f"token rows at the diffing layer (diffing.layer is added to the extraction's "
            f"token layers when the diffing study runs)")
    twice = meta.group_by("prompt_id").agg(pl.col("file").n_unique().alias("n")).filter(
        pl.col("n") > 1)
    if twice.height:
        raise ValueError(f"{role} shards: statements {twice['prompt_id'].head(5).to_list()} "
                         "appear in more than one shard")
    return meta


def identical_inputs(mb: pl.DataFrame, mi: pl.DataFrame) -> dict:
    """Which statements the two models read as identical token sequences (template and BOS
    included), from the shards' ``sequence_hash``: ``{"n", "share", "differ"}`` (share None
    when either side's shards predate the hash column)."""
    hb = mb.group_by("prompt_id").agg(pl.col("sequence_hash").first().alias("hb"))
    hi = mi.group_by("prompt_id").agg(pl.col("sequence_hash").first().alias("hi"))
    j = hb.join(hi, on="prompt_id").sort("prompt_id")
    if j.height == 0 or j["hb"].null_count() or j["hi"].null_count():
        return {"n": j.height, "share": None, "differ": []}
    differ = j.filter(pl.col("hb") != pl.col("hi"))["prompt_id"].to_list()
    return {"n": j.height, "share": 1 - len(differ) / j.height, "differ": differ}


def _pair_meta(mb: pl.DataFrame, mi: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """One row per paired token: prompt_id, label, issue, token_id, the two token indices
    and the two shard indices."""
    gb = mb.sort("token_index").group_by("prompt_id", maintain_order=True).agg(
        "label", "issue", "token_index", "token_id", pl.col("file").first())
    gi = mi.sort("token_index").group_by("prompt_id", maintain_order=True).agg(
        "token_index", "token_id", pl.col("file").first())
    only_b = set(gb["prompt_id"]) - set(gi["prompt_id"])
    only_i = set(gi["prompt_id"]) - set(gb["prompt_id"])
    if only_b or only_i:
        raise ValueError(
            f"base and instruct shards hold different statements (only base: "
            f"{sorted(only_b)[:5]}, only instruct: {sorted(only_i)[:5]}); extract the same "
            "dataset for both models")
    j = gb.join(gi, on="prompt_id", suffix="_i").sort("prompt_id")
    cols = {k: [] for k in ("prompt_id", "label", "issue", "token_id", "token_index_base",
                            "token_index_instruct", "file_base", "file_instruct")}
    n_b = n_i = n_short = 0
    for r in j.iter_rows(named=True):
        pb, pi = align_tokens(r["token_id"], r["token_id_i"])
        n_b += len(r["token_id"])
        n_i += len(r["token_id_i"])
        if len(pb) < 0.5 * min(len(r["token_id"]), len(r["token_id_i"])):
            n_short += 1
        ids = np.asarray(r["token_id"])[pb]
        n = len(pb)
        cols["prompt_id"] += [r["prompt_id"]] * n
        cols["label"] += [r["label"][0]] * n
        cols["issue"] += [r["issue"][0]] * n
        cols["token_id"] += ids.tolist()
        cols["token_index_base"] += np.asarray(r["token_index"])[pb].tolist()
        cols["token_index_instruct"] += np.asarray(r["token_index_i"])[pi].tolist()
        cols["file_base"] += [r["file"]] * n
        cols["file_instruct"] += [r["file_i"]] * n
    pairs = pl.DataFrame(cols, schema={"prompt_id": pl.String, "label": pl.String,
                                       "issue": pl.String, "token_id": pl.Int32,
                                       "token_index_base": pl.Int32,
                                       "token_index_instruct": pl.Int32,
                                       "file_base": pl.Int32, "file_instruct": pl.Int32})
    if n_short:
        log.warning("%d statement(s) share less than half their tokens between the models",
                    n_short)
    stats = {"n_statements": j.height, "token_rows_base": n_b, "token_rows_instruct": n_i,
             "statements_mostly_unpaired": n_short}
    return pairs, stats


def _vectors(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    width = col.type.list_size
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, width) for c in chunks]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(
        (0, width), np.float32)


def _read_rows(file: str, layer: int, prompt_ids: list[str], keys: pl.DataFrame,
               index_col: str) -> np.ndarray:
    """Vectors of ``keys`` (prompt_id, index_col) rows of one shard, in the keys' order."""
    t = pads.dataset(file, format="parquet").to_table(
        columns=["prompt_id", "token_index", "vector"], filter=_token_filter(layer, prompt_ids))
    X = _vectors(t.column("vector"))
    have = pl.from_arrow(t.select(["prompt_id", "token_index"])).with_row_index("row")
    got = keys.select("prompt_id", pl.col(index_col).alias("token_index")).join(
        have, on=["prompt_id", "token_index"], how="left", maintain_order="left")
    if got["row"].null_count():
        raise ValueError(f"{file}: token rows vanished between reads")
    return X[got["row"].to_numpy()]


def _schema(d_model: int, metadata: dict[bytes, bytes]) -> pa.Schema:
    vec = pa.list_(pa.float32(), d_model)
    return pa.schema([("prompt_id", pa.string()), ("label", pa.string()), ("issue", pa.string()),
                      ("token_id", pa.int32()), ("token_index_base", pa.int32()),
                      ("token_index_instruct", pa.int32()), ("split", pa.string()),
                      ("base", vec), ("instruct", vec)],
                     metadata=metadata)


def _fsl(X: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(X).ravel()),
                                             X.shape[1])


def pair_token_rows(
    base_shards: str | os.PathLike | Sequence[str | os.PathLike],
    instruct_shards: str | os.PathLike | Sequence[str | os.PathLike],
    layer: int,
    out_path: str | os.PathLike,
    *,
    seed: int = 0,
    eval_share: float = 0.5,
    context: str = "native",
    max_rows: int = 65536,
    row_group_rows: int = 8192,
    provenance: dict | None = None,
) -> dict:
    """Pair the two models' token rows at ``layer`` and write the paired file atomically.

    ``eval_share`` of the clusters (issues) are held out as the ``eval`` split (module
    docstring). ``context`` is the ``diffing.context`` the shards were extracted in
    (:mod:`rlhf_audit.diffing.context`): in ``chat`` and ``raw`` both models must have read
    identical token sequences, template and BOS included (the shards' ``sequence_hash``;
    :func:`identical_inputs`), and a statement read differently is an error naming it.
    Returns (and stores in the file's metadata) the counts, the context, the shares of
    paired tokens at the same position and of statements read identically, the mean L2
    norm of each model's train tokens and each model's mean train vector (the
    normalisation, and the centre of variance explained).
    """
    check_context(context)
    fb, fi = _files(base_shards), _files(instruct_shards)
    mb, mi = _token_meta(fb, layer, "base"), _token_meta(fi, layer, "instruct")
    pairs, stats = _pair_meta(mb, mi)
    if pairs.height == 0:
        raise ValueError("no token is shared between the base and instruct statements: "
                         "are the two models' tokenizers the same?")
    share = same_position_share(pairs["token_index_base"], pairs["token_index_instruct"])
    same = identical_inputs(mb, mi)
    stats |= {"context": context, "same_position_share": share,
              "identical_input_share": same["share"]}
    if context != "native":
        if same["share"] is None:
            log.warning("diffing.context %s: shards from before the sequence_hash column; "
                        "only token positions can be compared (re-extract to check the whole "
                        "inputs)", context)
        if share < 1 or (same["share"] is not None and same["share"] < 1):
            which = (f"{len(same['differ'])} of {same['n']} statements differ, e.g. "
                     f"{same['differ'][:5]}; " if same["share"] is not None else "")
            raise ValueError(
                f"diffing.context {context}: the two models did not read identical token "
                f"sequences ({which}{100 * share:.1f}% of the paired tokens at the same "
                "position), so the crosscoder would diff the inputs as well as the weights. "
                "The templates or tokenizers of the two models differ (a base that reads its "
                "own chat template, a date-stamped template rendered on another day, a moved "
                "hub revision): re-extract both, pin the revisions, or set diffing.context "
                "raw")
    pairs, split_stats = _with_split(pairs, eval_share, seed)
    stats |= split_stats
    rng = np.random.default_rng(seed)
    stmts = pairs.group_by("prompt_id", maintain_order=True).agg(
        pl.col("file_base").first(), pl.col("file_instruct").first(), pl.len().alias("n"))
    stmts = stmts[rng.permutation(stmts.height)]
    # Chunks of statements that live in one (base shard, instruct shard) and fit max_rows.
    chunks: list[list[str]] = []
    for _, grp in stmts.group_by(["file_base", "file_instruct"], maintain_order=True):
        cur, rows = [], 0
        for pid, n in zip(grp["prompt_id"], grp["n"], strict=True):
            if cur and rows + n > max_rows:
                chunks.append(cur)
                cur, rows = [], 0
            cur.append(pid)
            rows += n
        if cur:
            chunks.append(cur)
    d_model = None
    norm_sum = np.zeros(2)
    vec_sum: np.ndarray | None = None
    n_rows = 0
    writer = None
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        try:
            for ids in chunks:
                keys = pairs.filter(pl.col("prompt_id").is_in(ids))
                keys = keys[rng.permutation(keys.height)]
                Xb = _read_rows(fb[keys["file_base"][0]], layer, ids, keys, "token_index_base")
                Xi = _read_rows(fi[keys["file_instruct"][0]], layer, ids, keys,
                                "token_index_instruct")
                if d_model is None:
                    d_model = Xb.shape[1]
                    vec_sum = np.zeros((2, d_model))
                    writer = pq.ParquetWriter(tmp, _schema(d_model, {}))
                if Xb.shape[1] != d_model or Xi.shape[1] != d_model:
                    raise ValueError(f"the two models' residual widths differ ({Xb.shape[1]} vs "
                                     f"{Xi.shape[1]}): a crosscoder needs one d_model")
                tr = (keys["split"] == "train").to_numpy()
                norm_sum += [np.linalg.norm(Xb[tr], axis=1).sum(),
                             np.linalg.norm(Xi[tr], axis=1).sum()]
                vec_sum += np.stack([Xb[tr].sum(0, dtype=np.float64),
                                     Xi[tr].sum(0, dtype=np.float64)])
                n_rows += len(Xb)
                for s in range(0, keys.height, row_group_rows):
                    k = keys.slice(s, row_group_rows)
                    arrays = [pa.array(k[c].to_list(), t) for c, t in (
                        ("prompt_id", pa.string()), ("label", pa.string()),
                        ("issue", pa.string()), ("token_id", pa.int32()),
                        ("token_index_base", pa.int32()), ("token_index_instruct", pa.int32()),
                        ("split", pa.string()))]
                    arrays += [_fsl(Xb[s:s + row_group_rows]), _fsl(Xi[s:s + row_group_rows])]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=writer.schema))
        finally:
            if writer is not None:
                writer.close()
        n_train = stats["n_tokens_train"]
        info = {"layer": int(layer), "d_model": int(d_model), "n_tokens": int(n_rows),
                "mean_norm_base": float(norm_sum[0] / n_train),
                "mean_norm_instruct": float(norm_sum[1] / n_train),
                "mean_base": (vec_sum[0] / n_train).tolist(),
                "mean_instruct": (vec_sum[1] / n_train).tolist(), **stats}
        # Rewrite the footer metadata: ParquetWriter fixes it at open, so copy once.
        meta = {PAIRED_META_KEY: json.dumps(info).encode()}
        if provenance is not None:
            meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str).encode()
        _set_metadata(tmp, meta)
    log.info("paired %d tokens of %d statements at layer %d (train %d tokens of %d clusters, "
             "eval %d of %d)", n_rows, stats["n_statements"], layer, stats["n_tokens_train"],
             stats["n_clusters_train"], stats["n_tokens_eval"], stats["n_clusters_eval"])
    return {k: v for k, v in info.items() if not k.startswith("mean_") or "norm" in k}


def _set_metadata(path: Path, meta: dict[bytes, bytes]) -> None:
    """Re-write ``path`` row group by row group with ``meta`` in its schema (streamed)."""
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow.with_metadata(meta)
    tmp = path.with_suffix(".meta.tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        for i in range(pf.num_row_groups):
            w.write_table(pf.read_row_group(i).replace_schema_metadata(meta))
    os.replace(tmp, path)


def paired_info(path: str | os.PathLike) -> dict:
    """The paired file's description (layer, d_model, n_tokens, mean norms and vectors)."""
    meta = pq.read_schema(path).metadata or {}
    if PAIRED_META_KEY not in meta:
        raise ValueError(f"{path} is not a paired-activation file (no {PAIRED_META_KEY!r} "
                         "metadata); make it with rlhf_audit.diffing.paired.pair_token_rows")
    return json.loads(meta[PAIRED_META_KEY])


def train_tokens(info: dict, path: str | os.PathLike) -> int:
    """Tokens of the paired file's train split (what the dictionaries are trained on)."""
    if "n_tokens_train" not in info:
        raise ValueError(f"{path} has no train/eval split (written before held-out "
                         "evaluation): re-run pair_diffing_activations")
    return int(info["n_tokens_train"])


def warn_if_overparameterised(n_latents: int, n_train: int, what: str) -> float:
    """Training tokens per latent; logs a warning below 1 (more latents than tokens: the
    dictionary can memorise its training tokens, which only the held-out numbers show)."""
    ratio = n_train / max(n_latents, 1)
    if ratio < 1:
        log.warning("%s: %d latents for %d training tokens (%.2f tokens a latent): it can "
                    "memorise them; read its held-out numbers, and give it more statements",
                    what, n_latents, n_train, ratio)
    return ratio


def iter_paired(
    path: str | os.PathLike,
    batch_rows: int,
    *,
    seed: int | None = None,
    meta: bool = False,
    split: str | None = None,
) -> Iterator[tuple[pl.DataFrame | None, np.ndarray, np.ndarray]]:
    """Stream ``(meta, X_base, X_instruct)`` batches ([batch_rows, d_model] float32 each).

    ``seed`` given: row groups in a seeded random order and rows shuffled within each
    (one pass = one epoch); None: file order. ``meta`` adds the prompt_id/label/issue/token
    columns (else None). ``split`` ("train" or "eval"): only that split's rows; None: all.
    Memory: one row group plus one batch.
    """
    pf = pq.ParquetFile(path)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {SPLITS} or None")
        if "split" not in pf.schema_arrow.names:
            raise ValueError(f"{path} has no 'split' column (written before held-out "
                             "evaluation): re-run pair_diffing_activations")
    order = np.arange(pf.num_row_groups)
    rng = np.random.default_rng(seed) if seed is not None else None
    if rng is not None:
        order = rng.permutation(order)
    cols = ["base", "instruct"] + (["prompt_id", "label", "issue", "token_id"] if meta else [])
    for g in order:
        t = pf.read_row_group(int(g), columns=cols + (["split"] if split else []))
        if split is not None:
            t = t.filter(pc.equal(t.column("split"), split)).drop_columns(["split"])
            if t.num_rows == 0:
                continue
        if rng is not None:
            t = t.take(pa.array(rng.permutation(t.num_rows)))
        Xb, Xi = _vectors(t.column("base")), _vectors(t.column("instruct"))
        m = pl.from_arrow(t.select(cols[2:])) if meta else None
        for s in range(0, t.num_rows, batch_rows):
            yield (m.slice(s, batch_rows) if meta else None, Xb[s:s + batch_rows],
                   Xi[s:s + batch_rows])


def write_paired(
    X_base: np.ndarray,
    X_instruct: np.ndarray,
    prompt_ids: Sequence[str],
    out_path: str | os.PathLike,
    *,
    layer: int = 0,
    labels: Sequence[str | None] | None = None,
    issues: Sequence[str | None] | None = None,
    eval_share: float = 0.5,
    seed: int = 0,
    row_group_rows: int = 8192,
) -> dict:
    """Write already-paired arrays [n, d_model] x 2 as a paired file (tests, synthetic
    data), split as :func:`pair_token_rows` splits (by ``issues`` when given, else each
    prompt id its own cluster)."""
    Xb, Xi = np.asarray(X_base, np.float32), np.asarray(X_instruct, np.float32)
    if Xb.shape != Xi.shape or Xb.ndim != 2:
        raise ValueError(f"paired arrays must share a [n, d_model] shape: {Xb.shape} {Xi.shape}")
    n, d = Xb.shape
    issues = list(issues) if issues is not None else [None] * n
    keys, split_stats = _with_split(
        pl.DataFrame({"prompt_id": list(prompt_ids), "issue": issues},
                     schema={"prompt_id": pl.String, "issue": pl.String}), eval_share, seed)
    tr = (keys["split"] == "train").to_numpy()
    stats = {"n_statements": len(set(prompt_ids)), "token_rows_base": n,
             "token_rows_instruct": n, "statements_mostly_unpaired": 0,
             "context": "synthetic", "same_position_share": 1.0,
             "identical_input_share": None, **split_stats}
    info = {"layer": int(layer), "d_model": int(d), "n_tokens": int(n),
            "mean_norm_base": float(np.linalg.norm(Xb[tr], axis=1).mean()),
            "mean_norm_instruct": float(np.linalg.norm(Xi[tr], axis=1).mean()),
            "mean_base": Xb[tr].mean(0, dtype=np.float64).tolist(),
            "mean_instruct": Xi[tr].mean(0, dtype=np.float64).tolist(), **stats}
    schema = _schema(d, {PAIRED_META_KEY: json.dumps(info).encode()})
    labels = list(labels) if labels is not None else [None] * n
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for s in range(0, n, row_group_rows):
            e = min(n, s + row_group_rows)
            arrays = [pa.array(list(prompt_ids[s:e]), pa.string()),
                      pa.array(labels[s:e], pa.string()), pa.array(issues[s:e], pa.string()),
                      pa.array(np.zeros(e - s, np.int32)),
                      pa.array(np.arange(s, e, dtype=np.int32)),
                      pa.array(np.arange(s, e, dtype=np.int32)),
                      pa.array(keys["split"][s:e].to_list(), pa.string()),
                      _fsl(Xb[s:e]), _fsl(Xi[s:e])]
            w.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return info


def _group_sums(groups: np.ndarray, n_groups: int, X: np.ndarray) -> np.ndarray:
    """Row sums of ``X`` [n, d] per group (``groups`` [n] in 0..n_groups-1), float64: one
    sparse product (np.add.at took ~0.7 s a 8192 x 4096 batch)."""
    import scipy.sparse as sp

    G = sp.csr_matrix((np.ones(len(groups)), (groups, np.arange(len(groups)))),
                      shape=(n_groups, len(groups)))
    return np.asarray(G @ X.astype(np.float64))


def statement_means(path: str | os.PathLike, role: str, *,
                    batch_rows: int = 8192) -> tuple[pl.DataFrame, np.ndarray]:
    """Each statement's mean paired-token vector of one model (``role`` "base" or
    "instruct"), over every split: (``prompt_id``, ``label``, ``issue``, ``n_tokens`` in
    prompt_id order, [n_statements, d_model] float64). In the paired file's context these
    are the statement's content tokens as the crosscoder read them, so a direction fitted
    on them lives in the decoders' space. Memory: one row group, a batch and the sums."""
    if role not in ("base", "instruct"):
        raise ValueError(f"role={role!r}; use 'base' or 'instruct'")
    info = paired_info(path)
    d = int(info["d_model"])
    index: dict[str, int] = {}
    meta: list[tuple[str, str | None, str | None]] = []
    sums: list[np.ndarray] = []
    counts: list[int] = []
    for m, Xb, Xi in iter_paired(path, batch_rows, meta=True):
        X = Xb if role == "base" else Xi
        pids = m["prompt_id"].to_list()
        rows = np.empty(len(pids), np.int64)
        for j, (p, lab, iss) in enumerate(zip(pids, m["label"].to_list(),
                                              m["issue"].to_list(), strict=True)):
            k = index.get(p)
            if k is None:
                k = index[p] = len(meta)
                meta.append((p, lab, iss))
                sums.append(np.zeros(d))
                counts.append(0)
            rows[j] = k
        uniq, inv = np.unique(rows, return_inverse=True)
        part = _group_sums(inv, len(uniq), X)
        n = np.bincount(inv, minlength=len(uniq))
        for j, k in enumerate(uniq.tolist()):
            sums[k] += part[j]
            counts[k] += int(n[j])
    order = sorted(range(len(meta)), key=lambda k: meta[k][0])
    frame = pl.DataFrame({"prompt_id": [meta[k][0] for k in order],
                          "label": [meta[k][1] for k in order],
                          "issue": [meta[k][2] for k in order],
                          "n_tokens": [counts[k] for k in order]},
                         schema={"prompt_id": pl.String, "label": pl.String,
                                 "issue": pl.String, "n_tokens": pl.Int64})
    M = (np.stack([sums[k] / counts[k] for k in order]) if order
         else np.zeros((0, d)))
    return frame, M
