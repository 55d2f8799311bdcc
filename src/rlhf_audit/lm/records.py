"""What a generation returns, apart from the code that makes it: scoring a stored
generation (calibration's scorer, the judge) needs its shape but not torch, whose
import costs each such job about 2.5 s of CPU."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Generation:
    """One prompt's continuation."""

    prompt: str
    """The prompt exactly as given (chat template already applied by the caller)."""
    text: str
    """Decoded continuation, special tokens skipped."""
    token_ids: list[int] = field(default_factory=list)
    """Generated token ids only (no prompt); the end-of-sequence id is included if produced."""
    token_logprobs: list[float] = field(default_factory=list)
    """Log-probability (nats) of each generated token under the model's next-token
    distribution at temperature 1, before any sampling transform (temperature, top-p)."""
    finished: bool = False
    """Whether generation stopped at an end-of-sequence token (else at max_new_tokens)."""
