"""Which text the two models of a diffed pair read: the ``diffing.context`` setting.

A crosscoder reads each model's activations on the same content tokens. If the two
models read those tokens in different surroundings (instruct inside its chat template,
base after a bare BOS), every content token of instruct has attended to the template,
and a latent can look instruct-only because it encodes "inside a user turn", not
because fine-tuning changed anything. The model-diffing anchors (Minder et al.,
diffing-toolkit) give both models identical token sequences. The contexts:

- ``raw`` (the default): both read BOS + the bare statement: the base model's own format,
  and text a chat model was pretrained on. For real pairs this is the safer default: a
  base may never have trained the chat template's special tokens (their embeddings are
  then untrained), so in ``chat`` the base's reading of the statement can move for
  reasons that are not about fine-tuning;
- ``chat``: both read it as one user turn of the *instruct* model's chat template. A base
  whose own extraction is bare borrows that template (rule extract_diffing_context), so
  the tokens are identical even when its tokenizer ships none; a base that is itself
  read templated (an SFT checkpoint as the base of an RLHF pair) reads its own;
- ``native``: each model reads it as the rest of the pipeline does
  (``extract.chat_template`` of its role). Context and weights are then confounded; kept
  for comparison with earlier runs.

In ``raw`` and ``chat`` the pairing refuses two models that did not read identical token
sequences, template and BOS included (the shards' ``sequence_hash``). A model whose own
extraction already reads the statements as asked is not extracted again; the others are
extracted once per model and context, at the diffing layer only.

The organism cannot choose between the contexts: its planted values are native-layout
quantities (instruct's and the sham's training targets are base's activations on the bare
statement, read by them inside the template), and base's planted partisan separation sits
in "statement straight after BOS": any prefix shrinks it (a plain newline as much as the
template's role marker), while the sham keeps its own. So in ``chat`` the sham reads 1.3-2.4
times base, base's own bare-over-templated ratio; in ``raw`` 1.04-1.10. Instruct against
the sham (pair instruct_vs_sham) is the comparison that holds in every context.
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
