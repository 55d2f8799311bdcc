"""The GPU stages at the papers' real shapes, random init, for a bounded number of batches.

Builds random-init models with the shapes of Llama-3.1-8B (The Neutral Mask),
Llama-3.2-3B (Resisting Correction) and DeBERTa-v3-large as a one-logit reward
model (SEAL), runs each GPU stage of the workflow through the library's own code
for ``--batches`` batches, and prints tokens/s per stage. It then takes the token
counts of configs/paper.yaml from ``rlhf_audit.plan`` and prints the measured
estimate of a full paper run beside the plan's table-based one.

    python benchmarks/bench_paper.py                 # paper shapes (GPU; ~40 GB)
    python benchmarks/bench_paper.py --size small    # CI smoke run on CPU, seconds

No weights are downloaded: the models are random, so only speed means anything.
Tokens per second are wall time after torch.cuda.synchronize() on CUDA, and
process CPU time on CPU (a shared machine's wall time measures its neighbours).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHAPES = {
    "paper": {
        "llama31_8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
        "llama32_3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                           num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                           tie_word_embeddings=True),
        "deberta_v3_large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, vocab_size=128100),
        "sae_expansion": 8, "batch": 32, "prompt_tokens": 48, "new_tokens": 64,
        "rm_tokens": 256,
    },
    "small": {
        "llama31_8b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=1000),
        "llama32_3b": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                           tie_word_embeddings=True),
        "deberta_v3_large": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, vocab_size=1000),
        "sae_expansion": 8, "batch": 4, "prompt_tokens": 16, "new_tokens": 8, "rm_tokens": 32,
    },
}


def word_tokenizer(vocab: int):
    """A word-level fast tokenizer over ``vocab`` synthetic words (w0 w1 ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    words = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab - 4)])}
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <eos> $B:1",
        special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def texts(n: int, n_words: int, vocab: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, vocab - 4, n_words)) for _ in range(n)]


class Clock:
    """Wall time on CUDA (synchronised), process CPU time on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.t0 = time.perf_counter() if self.device.type == "cuda" else time.process_time()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter() if self.device.type == "cuda" else time.process_time()
        self.seconds = max(now - self.t0, 1e-9)


def build_lm(shape: dict, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, **shape)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def build_rm(shape: dict, device, dtype):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    cfg = DebertaV2Config(num_labels=1, pad_token_id=0, type_vocab_size=0,
                          relative_attention=True, pos_att_type=["p2c", "c2p"],
                          position_biased_input=False, max_position_embeddings=512, **shape)
    with torch.device(device):
        model = DebertaV2ForSequenceClassification(cfg).to(dtype)
    return model.eval()


def bench_extract(model, tok, s, batches, device) -> float:
    from rlhf_audit.extract import ExtractSettings, extract_shard

    n = s["batch"] * batches
    prompts = pl.DataFrame({"id": [str(i) for i in range(n)],
                            "text": texts(n, s["prompt_tokens"], len(tok), 1),
                            "label": ["left"] * n})
    settings = ExtractSettings(layers="all", positions=("last", "mean"), dtype="float16",
                               batch_size=s["batch"], max_length=s["prompt_tokens"] + 8)
    with tempfile.TemporaryDirectory() as d, Clock(device) as c:
        extract_shard(model, tok, prompts, settings, Path(d) / "shard.parquet")
    return n * (s["prompt_tokens"] + 1) / c.seconds


def bench_generate(model, tok, s, batches, device) -> float:
    from rlhf_audit.lm.generation import generate

    n = s["batch"] * batches
    prompts = texts(n, s["prompt_tokens"], len(tok), 2)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    with Clock(device) as c:
        gens = generate(model, tok, prompts, max_new_tokens=s["new_tokens"],
                        batch_size=s["batch"])
    made = sum(len(g.token_ids) for g in gens) if hasattr(gens[0], "token_ids") else (
        n * s["new_tokens"])
    return made / c.seconds


def bench_sae(d_model: int, s, batches, device, dtype) -> float:
    d_sae = s["sae_expansion"] * d_model
    g = torch.Generator(device="cpu").manual_seed(0)
    W = (torch.randn(d_model, d_sae, generator=g) / d_model ** 0.5).to(device, dtype)
    b = torch.zeros(d_sae, device=device, dtype=dtype)
    n_tok = s["batch"] * s["prompt_tokens"]
    X = torch.randn(n_tok, d_model, generator=g).to(device, dtype)
    with Clock(device) as c:
        for _ in range(batches):
            acts = torch.relu(X @ W + b)
            (acts > 0).sum(0)  # the firing tally scan_features keeps per feature
    return n_tok * batches / c.seconds


def bench_rewards(model, tok, s, batches, device) -> float:
    from rlhf_audit.seal import score_texts

    n = s["batch"] * batches
    half = s["rm_tokens"] // 2
    pre = texts(n, half, len(tok), 3)
    resp = texts(n, half, len(tok), 4)
    with Clock(device) as c:
        score_texts(model, tok, pre, resp, batch_size=s["batch"], max_length=s["rm_tokens"] + 4)
    return n * (s["rm_tokens"] + 2) / c.seconds


def paper_estimate(rates: dict[str, float]) -> dict[str, float]:
    """Hours of a full configs/paper.yaml run at the measured rates (GPU stages)."""
    import yaml

    from rlhf_audit import plan
    from rlhf_audit.config import load_schema, validate_config

    cfg = validate_config(yaml.safe_load((ROOT / "configs/paper.yaml").read_text()),
                          load_schema(ROOT / "workflow/schemas/config.schema.yaml"))
    c = plan.estimate(cfg)
    return {
        "extract": c["extract"].forward_tokens / rates["extract_8b"] / 3600,
        "steering": (c["steering"].generated_tokens / rates["generate_8b"]
                     + c["steering"].forward_tokens / rates["extract_8b"]) / 3600,
        "calibration": (c["calibration"].generated_tokens / rates["generate_3b"]
                        + c["calibration"].forward_tokens / rates["extract_3b"]) / 3600,
        "reward": c["reward"].forward_tokens / rates["reward_deberta"] / 3600,
        "plan_table_total": sum(x.gpu_hours for x in c.values()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="paper")
    ap.add_argument("--batches", type=int, default=None,
                    help="batches per stage (default: 8 at paper size, 2 small)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from rlhf_audit.lm.loader import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    torch.set_num_threads(1 if device.type == "cpu" else torch.get_num_threads())
    s = SHAPES[args.size]
    batches = args.batches or (8 if args.size == "paper" else 2)
    rates: dict[str, float] = {}
    for name, key in (("llama31_8b", "8b"), ("llama32_3b", "3b")):
        tok = word_tokenizer(s[name]["vocab_size"])
        model = build_lm(s[name], device, dtype)
        rates[f"extract_{key}"] = bench_extract(model, tok, s, batches, device)
        rates[f"generate_{key}"] = bench_generate(model, tok, s, batches, device)
        if key == "8b":
            rates["sae_scan_8b"] = bench_sae(s[name]["hidden_size"], s, batches, device, dtype)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    tok = word_tokenizer(s["deberta_v3_large"]["vocab_size"])
    rates["reward_deberta"] = bench_rewards(build_rm(s["deberta_v3_large"], device, dtype), tok,
                                            s, batches, device)
    print(f"bench_paper: size {args.size}, device {device}, dtype {dtype}, {batches} batches "
          f"of {s['batch']} per stage")
    for k, v in rates.items():
        print(f"  {k:<16} {v:>12,.0f} tokens/s")
    est = paper_estimate(rates)
    print("estimate of a full configs/paper.yaml run at these rates (GPU hours):")
    for k, v in est.items():
        print(f"  {k:<16} {v:>10.2f}")
    if args.size != "paper":
        print("  (small shapes: these are not paper figures)")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "device": str(device),
                                               "rates": rates, "estimate_hours": est}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
