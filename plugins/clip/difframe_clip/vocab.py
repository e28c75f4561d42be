"""Write a CLIP tokenizer folder (vocab.json, merges.txt, configs) from CLIP's original BPE merges file.

OpenAI's CLIP ships its byte-pair encoding as a gzipped list of merges (bpe_simple_vocab_16e6.txt.gz, also inside
the open-clip-torch package). The vocabulary is derived from it: the 256 byte symbols, the same with the
end-of-word marker '</w>', one token per merge (48,894 of them), then <|startoftext|> and <|endoftext|>: 49,408 ids.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

VOCAB_SIZE = 49408
MERGES = VOCAB_SIZE - 2 * 256 - 2  # the file has more; CLIP uses the first 48,894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def byte_symbols() -> list[str]:
    """One printable character per byte value, in CLIP's (and GPT-2's) order: printable bytes keep their own."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [mapping[b] for b in [*printable, *others]]


def find_bpe_file() -> Path:
    """CLIP's merges file from the installed open-clip-torch package, located without importing it."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{BPE_FILE} not found: install open-clip-torch (`pip install --no-deps open-clip-torch`) or pass the path "
        "of CLIP's BPE merges file"
    )


def read_merges(bpe_file: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    lines = gzip.decompress(Path(bpe_file or find_bpe_file()).read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : MERGES + 1]]  # type: ignore[misc]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer_folder(
    folder: str | os.PathLike[str],
    bpe_file: str | os.PathLike[str] | None = None,
    *,
    pad_token: str = EOS,
    model_max_length: int = 77,
) -> Path:
    """Write a folder that ``CLIPTokenizer.from_pretrained`` loads: SD 1.x pads with <|endoftext|>, SD 2.x with '!'."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = read_merges(bpe_file)
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, **special}
    config |= {"do_lower_case": True, "errors": "replace", "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return folder
