"""Which text the two models of a diffed pair read: the ``diffing.context`` setting.

A crosscoder reads each model's activations on the same content tokens. If the two
models read those tokens in different surroundings (instruct inside its chat template,
base after a bare BOS), every content token of instruct has attended to the template,
and a latent can look instruct-only because it encodes "inside a user turn", not
because fine-tuning changed anything. The model-diffing anchors (Minder et al.,
diffing-toolkit) give both models identical token sequences. The contexts:

- ``raw`` (the default): both read BOS + the bare statement: the base model's own format,
  and one a chat model was pretrained on;
- ``chat``: both read it as one user turn of the *instruct* model's chat template (the base
  borrows it, so the tokens are identical even when the base tokenizer ships no template
  or a different one): the chat model's own format, but one the base may never have
  trained on. On the organism, whose base never read the template, the sham null (a
  neutral fine-tune of the same base) then reads a partisan variance ratio of 1.4-2.4
  instead of about 1: the template, not the fine-tuning, moves it;
- ``native``: each model reads it as the rest of the pipeline does
  (``extract.chat_template`` of its role). Context and weights are then confounded; kept
  for comparison with earlier runs.

A model whose native extraction already matches the context is not extracted again.
"""

from __future__ import annotations

CONTEXTS = ("raw", "chat", "native")


def check_context(context: str) -> str:
    if context not in CONTEXTS:
        raise ValueError(f"diffing.context {context!r}: choose one of {list(CONTEXTS)} "
                         "(raw = both models bare, chat = both in the instruct chat template, "
                         "native = each as extract.chat_template says)")
    return context


def reads_native(context: str, native_chat: bool) -> bool:
    """Whether a model whose pipeline-wide extraction uses the chat template iff
    ``native_chat`` already reads the statements as ``context`` asks."""
    check_context(context)
    return context == "native" or (context == "chat") == bool(native_chat)


def context_chat(context: str, native_chat: bool) -> bool:
    """Whether the model reads the statements inside a chat template in ``context``."""
    check_context(context)
    return bool(native_chat) if context == "native" else context == "chat"


def same_position_share(token_index_base, token_index_instruct) -> float:
    """Share of paired tokens at the same position in both sequences: 1.0 when the two
    models read identical token sequences (context chat or raw), lower when one of them
    read a prefix the other did not (native, with one side templated)."""
    import numpy as np

    b = np.asarray(token_index_base)
    i = np.asarray(token_index_instruct)
    if b.shape != i.shape:
        raise ValueError(f"token index arrays differ in shape: {b.shape} vs {i.shape}")
    return float((b == i).mean()) if b.size else float("nan")
