"""Tiny random Llama checkpoints for unit tests: seconds to build, no download."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(path: Path, *, hidden_size: int = 32, with_tokenizer: bool = False, seed: int = 0) -> str:
    """Save a 2-layer Llama with a 64-token vocabulary at `path` and return the path as a string.

    `with_tokenizer` adds a word-level tokenizer, for code that loads one beside the weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    if with_tokenizer:
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        vocab = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
        PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="<pad>", unk_token="<unk>").save_pretrained(path)
    return str(path)
