"""A tiny randomly initialised Llama model built from a config, for tests and smoke runs.

It shares the default model's tokenizer (and so its chat template), so every code path that runs
on the real model runs on it too, in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from cropi.model.loading import load_tokenizer


def build_tiny_model(out: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                     tokenizer_from: str = "default") -> Path:
    """Write a random ``LlamaForCausalLM`` (+ tokenizer) to ``out`` and return the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = load_tokenizer(tokenizer_from)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
