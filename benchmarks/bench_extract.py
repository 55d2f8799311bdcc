"""Throughput and memory of activation extraction (rlhf_audit.extract).

On one random-init Llama and the same length-sorted batches, times:
  (a) the bare forward pass of the truncated model (blocks 0..deepest, nothing
      gathered or written): the limit extraction can approach;
  (b) ``extract_shard`` end to end (tokenising, forward, gather, Parquet writes);
  (c) the usual approach: ``output_hidden_states=True`` on the full model (all
      blocks and the LM head), then rows written one by one to Parquet through
      Python lists;
  (d) a peer, sae-lens' CacheActivationsRunner (per-token activations of one
      hook), against ``extract_shard`` on the same token workload.
and prints tokens/s for each with the ratios b/a and b/c.

    python benchmarks/bench_extract.py                  # ~50M Llama, CPU
    python benchmarks/bench_extract.py --size small     # CI smoke run, seconds
    python benchmarks/bench_extract.py --llama8b-shape  # GPU, Llama-3.1-8B shape
    python benchmarks/bench_extract.py --memory         # peak RSS, 1,000 vs 10,000 prompts
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import tqdm
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf_audit import extract as ex


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int


SHAPES = {
    "small": Shape(128, 344, 4, 4, 4, 2000),
    "default": Shape(512, 1376, 8, 8, 8, 32000),  # ~57M parameters
    "llama8b": Shape(4096, 14336, 32, 32, 8, 128256),
}


class _Stop(Exception):
    pass


def build_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: word ``w{i}`` is one token, BOS prepended."""
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    words |= {f"w{i}": i + 4 for i in range(vocab - 4)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_model(shape: Shape, device: str, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in place at the compute dtype (8B fp32 = 32 GB)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def make_prompts(n: int, vocab: int, min_words: int, max_words: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_words, max_words + 1, n)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, vocab - 4, k)) for k in lengths]
    return pl.DataFrame(
        {
            "id": [f"q{i:06d}" for i in range(n)],
            "text": texts,
            "label": rng.choice(["left", "right", "neutral"], n).tolist(),
            "issue": [None] * n,
        },
        schema_overrides={"issue": pl.String},
    )


def make_batches(tokenizer, prompts: pl.DataFrame, batch_size: int, device: str):
    """The batches extract_shard forms: longest first, right padding, real-token positions."""
    ids = ex.tokenize_prompts(tokenizer, prompts["text"].to_list(), ex.ExtractSettings())
    lengths = np.array([len(t) for t in ids])
    order = np.argsort(-lengths, kind="stable")
    batches = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        T = int(lengths[idx].max())
        arr = np.zeros((len(idx), T), np.int64)
        for i, j in enumerate(idx):
            arr[i, : lengths[j]] = ids[j]
        mask = torch.from_numpy(np.arange(T)[None, :] < lengths[idx][:, None])
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        batches.append(
            (idx, torch.from_numpy(arr).to(device), mask.long().to(device), pos.to(device))
        )
    return batches, int(lengths.sum())


class Timer:
    """Wall and process CPU seconds of a block. On a shared CPU machine other jobs inflate
    wall time; with one torch thread, CPU time is the work done, so CPU ratios use it."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> Timer:
        if self.cuda:
            torch.cuda.synchronize()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0

    def seconds(self) -> float:
        """The figure ratios use: wall time on CUDA, CPU time on CPU."""
        return self.wall if self.cuda else self.cpu


def bare_forward(model, batches, deepest: int, device: str) -> Timer:
    """(a) forward through blocks 0..deepest only; nothing kept."""
    handle = ex.decoder_layers(model)[deepest].register_forward_hook(
        lambda *_: (_ for _ in ()).throw(_Stop())
    )
    try:
        with Timer(device) as t, torch.inference_mode():
            for _, ids, mask, pos in batches:
                with contextlib.suppress(_Stop):
                    model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        return t
    finally:
        handle.remove()


def ours(model, tokenizer, prompts, settings, out: Path) -> Timer:
    """(b) extract_shard end to end."""
    with Timer(str(ex._model_device(model))) as t:
        ex.extract_shard(model, tokenizer, prompts, settings, out)
    return t


def usual(model, prompts, batches, layers, out: Path, device: str) -> Timer:
    """(c) full model with output_hidden_states, rows written one by one via Python lists."""
    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("label", pa.string()),
            ("issue", pa.string()),
            ("layer", pa.int16()),
            ("position", pa.string()),
            ("token_index", pa.int32()),
            ("token_id", pa.int32()),
            ("vector", pa.list_(pa.float32(), model.config.hidden_size)),
        ]
    )
    pid, lab, iss = (prompts[c].to_list() for c in ("id", "label", "issue"))
    with Timer(device) as t, pq.ParquetWriter(out, schema) as writer, torch.inference_mode():
        for idx, ids, mask, _ in batches:
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            rows = []
            for i, j in enumerate(idx):
                n = int(mask[i].sum())
                for L in layers:
                    h = hs[L + 1][i].float()
                    rows.append(
                        dict(
                            prompt_id=pid[j],
                            label=lab[j],
                            issue=iss[j],
                            layer=L,
                            position="last",
                            token_index=n - 1,
                            token_id=int(ids[i, n - 1]),
                            vector=h[n - 1].tolist(),
                        )
                    )
                    rows.append(
                        dict(
                            prompt_id=pid[j],
                            label=lab[j],
                            issue=iss[j],
                            layer=L,
                            position="mean",
                            token_index=-1,
                            token_id=-1,
                            vector=h[1:n].mean(0).tolist(),
                        )
                    )
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return t


def peer(
    model_dir: Path, n_seq: int, ctx: int, d: int, layer: int, batch: int, vocab: int, device: str
) -> tuple[Timer | None, str]:
    """(d) sae-lens CacheActivationsRunner on a local HF Llama (per-token rows, one hook)."""
    try:
        import datasets
        from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig
    except Exception as e:  # noqa: BLE001 - report whatever stops the import
        return None, f"sae-lens CacheActivationsRunner not importable: {e!r}"
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_dict({"input_ids": rng.integers(4, vocab, (n_seq, ctx)).tolist()})
    out = model_dir / "peer-cache"
    # One buffer holding exactly the data set: the runner otherwise fills a 2 GB buffer
    # by cycling the data.
    buffer_gb = (n_seq * ctx * d * 4 + 0.5) / 1e9
    try:
        cfg = CacheActivationsRunnerConfig(
            dataset_path="local",
            model_name=str(model_dir),
            model_class_name="AutoModelForCausalLM",
            model_batch_size=batch,
            hook_name=f"model.layers.{layer}",
            d_in=d,
            training_tokens=n_seq * ctx,
            context_size=ctx,
            new_cached_activations_path=str(out),
            device=device,
            shuffle=False,
            prepend_bos=False,
            streaming=False,
            buffer_size_gb=buffer_gb,
            dtype="float32",
        )
        with warnings.catch_warnings():
            # It warns the data set is "fewer samples than required" (it counts a 2 GB
            # buffer's worth) while caching exactly these sequences.
            warnings.simplefilter("ignore", UserWarning)
            runner = CacheActivationsRunner(cfg, override_dataset=data)  # loads model: untimed
            with Timer(device) as t:
                result = runner.run()
    except Exception as e:  # noqa: BLE001
        return None, f"CacheActivationsRunner failed on a local HF Llama: {e!r}"
    if len(result) != n_seq:
        return t, f"peer cached {len(result)} sequences, expected {n_seq}"
    return t, "ok (model_class_name=AutoModelForCausalLM via HookedProxyLM)"


def run_timing(args) -> None:
    shape = SHAPES["llama8b" if args.llama8b_shape else args.size]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    layers = (
        [int(x) for x in args.layers.split(",")]
        if args.layers
        else [shape.layers // 2 - 1, shape.layers // 2]
    )
    n = (
        args.prompts
        or {"small": 64, "default": 256, "llama8b": 2048}[
            "llama8b" if args.llama8b_shape else args.size
        ]
    )
    tok = build_tokenizer(shape.vocab)
    model = build_model(shape, device)
    n_params = sum(p.numel() for p in model.parameters())
    prompts = make_prompts(n, shape.vocab, args.min_words, args.max_words, seed=1)
    batches, n_tokens = make_batches(tok, prompts, args.batch_size, device)
    settings32 = ex.ExtractSettings(
        layers=layers,
        positions=("last", "mean"),
        dtype="float32",
        batch_size=args.batch_size,
        max_length=4096,
    )
    settings16 = ex.ExtractSettings(
        layers=layers,
        positions=("last", "mean"),
        dtype="float16",
        batch_size=args.batch_size,
        max_length=4096,
    )
    print(
        f"model: Llama {n_params / 1e6:.1f}M params, hidden {shape.hidden}, "
        f"{shape.layers} blocks, vocab {shape.vocab}; device {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"data: {n} prompts, {n_tokens} tokens ({args.min_words}-{args.max_words} words + BOS), "
        f"batch {args.batch_size}, layers {layers} (deepest {max(layers)}), positions last+mean"
    )
    times: dict[str, list[Timer]] = {"a": [], "b": [], "b16": [], "c": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare_forward(model, batches[:1], max(layers), device)  # warm-up
        for r in range(args.repeats):
            times["a"].append(bare_forward(model, batches, max(layers), device))
            times["b"].append(ours(model, tok, prompts, settings32, tmp / f"b{r}.parquet"))
            times["b16"].append(ours(model, tok, prompts, settings16, tmp / f"h{r}.parquet"))
            times["c"].append(usual(model, prompts, batches, layers, tmp / f"c{r}.parquet", device))
        best = {k: min(v, key=Timer.seconds) for k, v in times.items()}
        sec = {k: t.seconds() for k, t in best.items()}
        label = {
            "a": "(a) bare truncated forward (limit)",
            "b": "(b) extract_shard, float32 storage",
            "b16": "(b) extract_shard, float16 storage",
            "c": "(c) full model + hidden_states + row-by-row Parquet",
        }
        basis = "wall" if device.startswith("cuda") else "CPU"
        print(f"best of {args.repeats} runs (tok/s from {basis} time):")
        print(f"  {'':<53} {'wall s':>8} {'CPU s':>8} {'tok/s':>9}")
        for k in ("a", "b", "b16", "c"):
            t = best[k]
            print(f"  {label[k]:<53} {t.wall:8.2f} {t.cpu:8.2f} {n_tokens / sec[k]:9.0f}")
        print(
            f"  b/a (throughput of b relative to the limit): {sec['a'] / sec['b']:.2f}  "
            f"(target >= 0.9)"
        )
        print(
            f"  b/c (throughput of b relative to the usual): {sec['c'] / sec['b']:.2f}  "
            f"(target >= 2)"
        )
        if args.no_peer or args.llama8b_shape:
            print(
                "(d) peer: skipped"
                + (" (8B shape: the peer reloads weights from disk)" if args.llama8b_shape else "")
            )
            return
        # (d) the peer caches every token of fixed-length contexts at one hook; ours on the
        # same workload: position "token" at the same layer, prompts of exactly ctx tokens.
        model_dir = tmp / "model"
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        ctx, n_seq, layer = args.peer_ctx, args.peer_seqs, max(layers)
        t_peer, msg = peer(
            model_dir, n_seq, ctx, shape.hidden, layer, args.batch_size, shape.vocab, device
        )
        fixed = make_prompts(n_seq, shape.vocab, ctx - 1, ctx - 1, seed=2)
        tok_settings = ex.ExtractSettings(
            layers=[layer],
            positions=("token",),
            dtype="float32",
            batch_size=args.batch_size,
            max_length=4096,
        )
        t_ours = ours(model, tok, fixed, tok_settings, tmp / "tok.parquet")
        n_tok = n_seq * ctx
        print(
            f"(d) per-token workload: {n_seq} sequences x {ctx} tokens at layer {layer}, "
            f"float32 storage"
        )
        print(f"  peer sae-lens CacheActivationsRunner: {msg}")
        rows = [("peer CacheActivationsRunner.run()", t_peer)] if t_peer is not None else []
        rows.append(("extract_shard, position token", t_ours))
        for name, t in rows:
            print(f"  {name:<53} {t.wall:8.2f} {t.cpu:8.2f} {n_tok / t.seconds():9.0f}")
        if t_peer is not None:
            print(f"  ours/peer throughput: {t_peer.seconds() / t_ours.seconds():.2f}")


def memory_child(args) -> None:
    """Extract ``args.prompts`` prompts into one shard; print peak RSS as JSON."""
    shape = SHAPES[args.size]
    tok = build_tokenizer(shape.vocab)
    model = build_model(shape, "cpu")
    prompts = make_prompts(args.prompts, shape.vocab, args.min_words, args.max_words, seed=3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = ex.ExtractSettings(
        layers="all",
        positions=("last", "mean", "token"),
        token_layers=[shape.layers // 2],
        dtype="float16",
        batch_size=args.batch_size,
        shard_size=args.prompts,
        max_length=4096,
        buffer_mb=args.buffer_mb,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shard-00000.parquet"
        t = time.perf_counter()
        stats = ex.extract_shard(model, tok, prompts, settings, out)
        dt = time.perf_counter() - t
        size = out.stat().st_size / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "prompts": args.prompts,
                "rows": stats["rows"],
                "shard_mib": size,
                "rss_before_mib": before,
                "peak_rss_mib": peak,
                "seconds": dt,
            }
        )
    )


def run_memory(args) -> None:
    results = []
    for n in [int(x) for x in args.memory_prompts.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            "--prompts",
            str(n),
            "--size",
            args.size,
            "--batch-size",
            str(args.batch_size),
            "--min-words",
            str(args.min_words),
            "--max-words",
            str(args.max_words),
            "--buffer-mb",
            str(args.buffer_mb),
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    shape = SHAPES[args.size]
    print(
        f"peak RSS of one extract_shard job (subprocess, ru_maxrss); Llama hidden "
        f"{shape.hidden}, {shape.layers} blocks; all layers last+mean, token rows at layer "
        f"{shape.layers // 2}; float16; batch {args.batch_size}; buffer_mb {args.buffer_mb:g}"
    )
    print(
        f"  {'prompts':>8} {'rows':>9} {'shard MiB':>10} {'RSS before':>11} {'peak RSS':>9} "
        f"{'growth':>7} {'seconds':>8}"
    )
    for r in results:
        print(
            f"  {r['prompts']:>8} {r['rows']:>9} {r['shard_mib']:>10.1f} "
            f"{r['rss_before_mib']:>9.0f}MB {r['peak_rss_mib']:>7.0f}MB "
            f"{r['peak_rss_mib'] - r['rss_before_mib']:>5.0f}MB {r['seconds']:>8.1f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--size",
        choices=["small", "default"],
        default=None,
        help="model size (default: 'default' ~50M for timing, 'small' for --memory)",
    )
    p.add_argument(
        "--llama8b-shape",
        action="store_true",
        help="Llama-3.1-8B shape, random init, bf16 on the GPU",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--layers", default=None, help="comma-separated (default: two mid-depth)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-words", type=int, default=8)
    p.add_argument("--max-words", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer-ctx", type=int, default=64)
    p.add_argument("--peer-seqs", type=int, default=64)
    p.add_argument("--memory", action="store_true", help="peak RSS for --memory-prompts")
    p.add_argument("--memory-prompts", default="1000,10000")
    p.add_argument(
        "--buffer-mb",
        type=float,
        default=ex.ExtractSettings.buffer_mb,
        help="ExtractSettings.buffer_mb for --memory",
    )
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    # Progress bars of save_pretrained, datasets and the peer runner would bury the table.
    tqdm.std.tqdm.__init__ = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
    if args.size is None:
        args.size = "small" if (args.memory or args.memory_child) else "default"
    if args.memory_child:
        memory_child(args)
    elif args.memory:
        run_memory(args)
    else:
        run_timing(args)


if __name__ == "__main__":
    main()
