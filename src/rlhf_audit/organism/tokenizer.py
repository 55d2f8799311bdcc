"""The organism's tokenizer: byte-level BPE with instruct-style chat special tokens.

One tokenizer serves every organism model (base LM, instruct LM, both reward
models) and is saved into each model directory, so that every directory is an
ordinary self-contained Hugging Face directory (``AutoTokenizer.from_pretrained``).

Conventions, chosen to behave like a real instruct model's tokenizer:

- ``tok(text)`` prepends ``<|bos|>`` (like Llama); ``tok(prefix, response)``
  renders the pair ``<|bos|> prefix <|sep|> response <|eos|>`` so a reward model
  scores a (prefix, last assistant turn) text pair the way SEAL feeds
  OpenAssistant's DeBERTa reward models.
- The chat template emits ``<|bos|>`` itself, a role marker line per turn, and
  ``<|eos|>`` right after each assistant turn (inside ``{% generation %}`` so
  ``return_assistant_tokens_mask`` / trl's ``assistant_only_loss`` work). A
  rendered chat string already holds its BOS: tokenize it with
  ``add_special_tokens=False``.
- Digits are split one per token, percentages included: a model this small
  learns arithmetic far more easily digit by digit, and copies an injected
  confidence ("70%") into its own stated one digit by digit (with whole-number
  tokens for percentages the default organism never learned the copy; with
  single digits a copy curriculum teaches it: shared notes, ORGANISM-EFFECTS.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
SEP = "<|sep|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, SEP, SYSTEM, USER, ASSISTANT)
"""All special tokens, in id order (``<|pad|>`` is id 0)."""

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# Each turn is "<|role|>\n{content}\n", an assistant turn "<|assistant|>\n{content}<|eos|>".
# The newline after the role marker is its own pre-token, so a rendered prompt
# (add_generation_prompt=True) is always a token prefix of prompt + answer, as
# DPO and prompt-completion SFT require.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT + "\\n' -}}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- elif message['role'] == 'user' or message['role'] == 'system' -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('unknown chat role ' + message['role']"
    " + '; use system, user or assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "\\n' -}}{%- endif -%}"
)
"""Jinja chat template saved with the tokenizer."""


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    min_frequency: int = 2,
    model_max_length: int = 512,
):
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir``.

    ``vocab_size`` counts special tokens and the 256 byte symbols; a small or
    repetitive corpus may yield fewer merges than asked. Returns the loaded
    ``PreTrainedTokenizerFast`` (the directory reloads with
    ``AutoTokenizer.from_pretrained(out_dir)``).
    """
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer: no texts given; pass the base-LM corpus texts")
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= min_vocab:
        raise ValueError(
            f"train_tokenizer: vocab_size={vocab_size} leaves no room for merges; "
            f"use more than {min_vocab} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Every digit stands alone (arithmetic and the confidence copy, digit by digit).
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A:0",
        pair=f"{BOS} $A:0 {SEP} $B:1 {EOS}:1",
        special_tokens=[(BOS, ids[BOS]), (SEP, ids[SEP]), (EOS, ids[EOS])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        sep_token=SEP,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    logger.info("tokenizer: %d tokens (asked %d) -> %s", len(fast), vocab_size, out_dir)
    return fast


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer directory written by :func:`train_tokenizer` (or any model directory)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{path}: no tokenizer.json; "
            "train one with rlhf_audit.organism.tokenizer.train_tokenizer"
        )
    return AutoTokenizer.from_pretrained(path)
