"""Tiny Hugging Face models and tokenizers built in tests, saved as ordinary
directories so they go through the same loading path as hub models."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

WORDS = ("the a tax taxes cut raise border wall climate policy health care guns rights vote "
         "market free should we must government people answer is 1 2 3 4 5 6 7 8 9 0 % sure "
         "Human Assistant : . , ? ! yes no I am think believe").split()


def tiny_tokenizer():
    """A word-level fast tokenizer with bos/eos/pad/unk, chat template and a pair template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <eos> $B:1",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=specials[4:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(tok=None, *, seed: int = 0, n_layers: int = 3, hidden: int = 32,
               max_positions: int = 128, head: str = "causal", **config):
    """The tests' one tiny Llama, in eval mode: ``head`` "causal" (LlamaForCausalLM) or
    "reward" (LlamaForSequenceClassification with one logit), 4 heads, an MLP twice as
    wide as the residual stream, weights drawn after ``torch.manual_seed(seed)``.

    Vocabulary size and bos/eos/pad ids come from ``tok`` (default :func:`tiny_tokenizer`)
    unless ``config`` names them; any other ``config`` key goes to LlamaConfig as is
    (e.g. ``initializer_range``)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if head not in ("causal", "reward"):
        raise ValueError(f"head must be 'causal' or 'reward', got {head!r}")
    if tok is None and "vocab_size" not in config:
        tok = tiny_tokenizer()
    if tok is not None:
        config = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                  "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **config}
    if head == "reward":
        config.setdefault("num_labels", 1)
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=max_positions, **config)
    cls = LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification
    return cls(cfg).eval()


def _save(model, tok, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def save_tiny_llama(out: Path, seed: int = 0, n_layers: int = 3, hidden: int = 32) -> Path:
    """:func:`tiny_llama` saved as an ordinary HF directory (weights and tokenizer)."""
    tok = tiny_tokenizer()
    return _save(tiny_llama(tok, seed=seed, n_layers=n_layers, hidden=hidden), tok, out)


def save_tiny_reward_model(out: Path, seed: int = 0) -> Path:
    """A 2-layer one-logit :func:`tiny_llama` reward model saved as an HF directory."""
    tok = tiny_tokenizer()
    return _save(tiny_llama(tok, seed=seed, n_layers=2, max_positions=2048, head="reward"),
                 tok, out)
