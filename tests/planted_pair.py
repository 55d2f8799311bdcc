"""A planted base/instruct pair of tiny Llamas whose residual stream is known exactly.

Attention and MLP output projections are zero, so every block's output (the
residual stream at every layer) is the token embedding. Each word's embedding is
``s_w * u + r_w``: a partisan coordinate ``s_w`` along a unit direction ``u`` (left
words near -1, right words near +1, all other words near 0) plus a component
``r_w`` orthogonal to ``u`` with a decaying (1/k) spectrum. The instruct model's
embeddings are the base ones with the ``u`` coordinate multiplied by 0.3, so along
``u`` the instruct variance of any pooled statement vector is exactly 0.09 of the
base one, and everything orthogonal to ``u`` is identical in both models.

Every issue has its own left, right and neutral words, so the orthogonal parts of
different issues are independent (a split-half estimate over issues is then
unbiased for the planted ratio). The chat templates wrap a statement in role
markers and, optionally, a constant preamble of about 30 tokens; statements
pooled over their own tokens are identical with and without it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch

PLANTED_RATIO = 0.09
SCALE = float(np.sqrt(PLANTED_RATIO))
FILLERS = "we should our policy the it must now for all".split()
PREAMBLE_WORDS = ("system note today is a date line for this chat and you are a careful "
                  "helpful model that answers with care every time a person asks here").split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PREAMBLE_TEMPLATE = ("{{ bos_token }}<|system|> " + " ".join(PREAMBLE_WORDS) + " "
                     "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _words(n_issues: int, per_side: int, n_neutral: int) -> dict[str, list[str]]:
    out = {}
    for k in range(n_issues):
        out[f"left{k}"] = [f"l{k}x{j}" for j in range(per_side)]
        out[f"right{k}"] = [f"r{k}x{j}" for j in range(per_side)]
        out[f"neutral{k}"] = [f"n{k}x{j}" for j in range(n_neutral)]
    return out


def planted_prompts(n_issues: int = 24, per_label: int = 8, n_neutral: int = 2,
                    seed: int = 0) -> list[dict]:
    """Rows ``{id, text, label, issue}`` in the partisan prompts format: each statement
    is two fillers and two of its issue-side's six words (all word sets distinct)."""
    rng = np.random.default_rng(seed)
    words = _words(n_issues, 6, 4)
    rows = []
    for k in range(n_issues):
        for side, n in (("left", per_label), ("right", per_label), ("neutral", n_neutral)):
            combos = list(itertools.combinations(words[f"{side}{k}"], 2))
            pick = rng.choice(len(combos), size=n, replace=False)
            for j, c in enumerate(pick):
                fill = rng.choice(FILLERS, size=2, replace=False)
                toks = [fill[0], combos[c][0], fill[1], combos[c][1]]
                rows.append({"id": f"issue{k}-{side}-{j}", "text": " ".join(toks),
                             "label": side, "issue": f"issue{k}"})
    return rows


def vocabulary(n_issues: int = 24) -> list[str]:
    words = [w for ws in _words(n_issues, 6, 4).values() for w in ws]
    return SPECIALS + sorted(set(words + FILLERS + PREAMBLE_WORDS))


def planted_tokenizer(template: str | None, n_issues: int = 24):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(vocabulary(n_issues))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=SPECIALS[4:])
    if template is not None:
        tok.chat_template = template
    return tok


def planted_embeddings(d: int = 64, n_issues: int = 24, seed: int = 0):
    """``(E_base, E_instruct, u)``: ``[vocab, d]`` embeddings and the partisan direction."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(n_issues)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    lam = 1.0 / np.arange(1, d + 1)
    lam *= 1.0 / lam.sum()
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    r = (rng.normal(size=(len(vocab), d)) * np.sqrt(lam)) @ Q.T
    r -= np.outer(r @ u, u)
    s = np.array([1.0 if w.startswith("r") and "x" in w else
                  -1.0 if w.startswith("l") and "x" in w else 0.0 for w in vocab])
    s = s + 0.3 * rng.normal(size=len(vocab))
    E_base = np.outer(s, u) + r
    E_inst = np.outer(SCALE * s, u) + r
    return E_base.astype(np.float32), E_inst.astype(np.float32), u


def planted_model(E: np.ndarray, n_layers: int = 3):
    from tiny import tiny_llama

    vocab, d = E.shape
    model = tiny_llama(seed=0, n_layers=n_layers, hidden=d, vocab_size=vocab, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(E))
        for block in model.model.layers:
            # No attention or MLP output: the residual stream is the token embedding.
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model


def save_planted_pair(root: Path, d: int = 64, n_issues: int = 24) -> dict[str, Path]:
    """HF directories ``base``, ``instruct`` (role-marker template) and
    ``instruct_preamble`` (the same weights, a ~30-token constant preamble), plus the
    prompts JSONL. Returns their paths by name (and ``prompts``)."""
    E_base, E_inst, _ = planted_embeddings(d, n_issues)
    out = {}
    for name, E, template in (("base", E_base, None), ("instruct", E_inst, TEMPLATE),
                              ("instruct_preamble", E_inst, PREAMBLE_TEMPLATE)):
        path = root / name
        planted_model(E).save_pretrained(path, safe_serialization=True)
        planted_tokenizer(template, n_issues).save_pretrained(path)
        out[name] = path
    prompts = root / "partisan.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in planted_prompts(n_issues)))
    out["prompts"] = prompts
    return out
