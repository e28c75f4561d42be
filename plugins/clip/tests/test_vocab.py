"""The tokenizer folder written from CLIP's own BPE merges file gives CLIP's token ids."""

from __future__ import annotations

import json

import transformers
from difframe_clip.vocab import VOCAB_SIZE, byte_symbols, find_bpe_file, write_tokenizer_folder


def test_byte_symbols_are_a_permutation_of_256_characters():
    symbols = byte_symbols()
    assert len(symbols) == len(set(symbols)) == 256
    assert symbols[:3] == ["!", '"', "#"] and symbols[-1] == chr(256 + 67)  # printable first, then the rest


def test_bpe_file_is_found_without_importing_open_clip():
    import sys

    assert find_bpe_file().name == "bpe_simple_vocab_16e6.txt.gz"
    assert "open_clip" not in sys.modules


def test_known_token_ids(model_root):
    tokenizer = transformers.CLIPTokenizer.from_pretrained(model_root / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert tokenizer.model_max_length == 77
    # lower-casing, whitespace folding and punctuation as CLIP does it
    assert tokenizer("A  Photo of a CAT!", add_special_tokens=False).input_ids == [320, 1125, 539, 320, 2368, 256]
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[7:] == [49407] * 70


def test_vocab_files(model_root):
    vocab = json.loads((model_root / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == VOCAB_SIZE
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["a</w>"] == 320 and vocab["cat</w>"] == 2368
    merges = (model_root / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + VOCAB_SIZE - 512 - 2


def test_sd2_style_padding(tmp_path):
    tokenizer = transformers.CLIPTokenizer.from_pretrained(write_tokenizer_folder(tmp_path, pad_token="!"))
    assert tokenizer.pad_token_id == 0
    assert tokenizer("a cat", padding="max_length", max_length=77).input_ids[:5] == [49406, 320, 2368, 49407, 0]
