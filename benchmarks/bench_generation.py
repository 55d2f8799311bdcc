"""Batched vs one-prompt-at-a-time generation throughput (rlhf_audit.lm.generation.generate).

Same random-init Llama, same prompts, greedy decoding: first every prompt on its
own (batch_size=1), then all of them in length-sorted, left-padded batches. Both
produce the same tokens (tests/test_generation.py checks that), so the ratio of
throughputs is the speed-up from batching alone. Target: >= 5x (printed; enforced
only with ``--require-speedup 5``). The exit status is 1 when the outputs differ.

    python benchmarks/bench_generation.py --small          # seconds, for CI
    python benchmarks/bench_generation.py --device cuda    # a bigger model on a GPU
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch

WORDS = (
    "the a tax taxes cut raise border wall climate policy health care guns rights vote "
    "market free should we must government people answer is sure yes no I am think "
    "believe school wages energy trade law court city state nation family work"
).split()


def build(hidden: int, layers: int, seed: int = 0):
    """A word-level tokenizer and a random-init Llama of the given size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 4),
        num_key_value_heads=max(hidden // 64, 4),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of 4 to 40 words (varied lengths, so padding matters)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) for _ in range(n)]


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny model, few prompts (CI)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--require-speedup", type=float, default=None, metavar="X",
                    help="exit 1 when batching is less than X times faster (off by default: "
                         "on a shared machine a timing ratio is not a pass/fail test)")
    args = ap.parse_args(argv)
    from rlhf_audit.lm.generation import generate

    torch.set_num_threads(args.threads)
    if args.small:
        hidden, layers, n, new, bs = 64, 2, 32, 16, 32
    else:
        hidden, layers, n, new, bs = 512, 8, 128, 64, 64
    bs = args.batch_size or bs
    model, tok = build(hidden, layers)
    model.to(args.device)
    ps = prompts(n)
    generate(model, tok, ps[:2], max_new_tokens=2)  # warm-up (allocator, kernels)
    t_single, single = timed(lambda: [generate(model, tok, [p], max_new_tokens=new)[0] for p in ps])
    t_batch, batched = timed(lambda: generate(model, tok, ps, max_new_tokens=new, batch_size=bs))
    n_tok_single = sum(len(g.token_ids) for g in single)
    n_tok_batch = sum(len(g.token_ids) for g in batched)
    same = sum(a.token_ids == b.token_ids for a, b in zip(single, batched, strict=True))
    res = {
        "device": str(args.device),
        "hidden": hidden,
        "layers": layers,
        "prompts": n,
        "max_new_tokens": new,
        "batch_size": bs,
        "threads": args.threads,
        "one_at_a_time_tok_s": n_tok_single / t_single,
        "batched_tok_s": n_tok_batch / t_batch,
        "speedup": (n_tok_batch / t_batch) / (n_tok_single / t_single),
        "identical_outputs": f"{same}/{n}",
    }
    print(
        f"model: Llama hidden={hidden} layers={layers} on {args.device}; {n} prompts, "
        f"{new} new tokens, batch {bs}"
    )
    print(f"one at a time: {res['one_at_a_time_tok_s']:10.1f} tokens/s ({t_single:.2f} s)")
    print(f"batched:       {res['batched_tok_s']:10.1f} tokens/s ({t_batch:.2f} s)")
    print(
        f"speed-up:      {res['speedup']:10.1f}x (target >= 5x); identical outputs "
        f"{res['identical_outputs']}"
    )
    res["ok"] = same == n and (args.require_speedup is None
                               or res["speedup"] >= args.require_speedup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    if same != n:
        print(f"FAIL: batched generation differs from one-at-a-time on {n - same}/{n} prompts")
    elif not res["ok"]:
        print(f"FAIL: speed-up {res['speedup']:.1f}x below --require-speedup "
              f"{args.require_speedup}")
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
