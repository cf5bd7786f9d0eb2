"""Tiny random causal LMs with a word-level tokenizer, saved as plain HF folders (loader/codebook tests)."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

# "Ġ" marks a leading space (byte-level BPE style). Whole English words, plus tokens the vocabulary
# filter must reject: capitalised, too short, digits, non-ASCII, no marker, a non-word.
TOKENS = ["<unk>", "<pad>", "Ġthe", "Ġcat", "Ġdog", "Ġhouse", "Ġred", "Ġwater", "ĠCat", "Ġab",
          "Ġx1", "Ġcafé", "water", "Ġzzqxv", "Ġrun", "Ġblue"]
WORDS_KEPT = ["the", "water", "house", "red", "run", "blue", "cat", "dog"]  # zipf >= 3, any order


def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def tiny_llama(vocab_size: int = len(TOKENS), seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=1)
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(vocab_size: int = len(TOKENS), hidden: int = 32, seed: int = 0) -> Gemma3ForCausalLM:
    """Gemma 3 text model: its embedding module multiplies the table by sqrt(hidden)."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           max_position_embeddings=64, sliding_window=16, pad_token_id=1)
    return Gemma3ForCausalLM(cfg).eval()


def save_tiny_lm(folder: Path, model=None) -> Path:
    """Save a tiny model (default: Llama) and the word tokenizer into `folder`; returns it."""
    model = model if model is not None else tiny_llama()
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder
