"""How many tokens each item will occupy in a model's batch, counted before batching.

Token-budget batching (like text-embeddings-inference's `--max-batch-tokens`) needs
each item's length when it is queued, not when its batch runs. The count uses a
private copy of the model's fast tokenizer with truncation and padding switched off:
Hugging Face tokenizers change that state on every padded call, so sharing one
between the event loop and the scoring thread fails with "Already borrowed".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

_CHARS_PER_TOKEN = 4


class TokenCounter:
    """Token counts (special tokens included, capped at the model's `max_length`)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.max_length = max_length
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(backend.to_str())
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
        else:
            log.warning(
                "tokenizer %s is not a fast tokenizer: batch token budgets use an estimate of %d characters per token",
                type(tokenizer).__name__,
                _CHARS_PER_TOKEN,
            )

    def single(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            return [self._estimate(text) for text in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [min(len(e.ids), self.max_length) for e in encodings]

    def pairs(self, firsts: Sequence[str], seconds: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            return [self._estimate(a + b) for a, b in zip(firsts, seconds, strict=True)]
        encodings = self._tokenizer.encode_batch(list(zip(firsts, seconds, strict=True)), add_special_tokens=True)
        return [min(len(e.ids), self.max_length) for e in encodings]

    def _estimate(self, text: str) -> int:
        return min(len(text) // _CHARS_PER_TOKEN + 2, self.max_length)
