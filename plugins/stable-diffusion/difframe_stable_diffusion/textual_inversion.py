"""Textual inversion: learned token embeddings added to the tokenizer and the text encoder.

Files: the web UIs' embeddings (``emb_params`` in .safetensors; ``string_to_param`` in .pt, a pickle read only with
``allow_pickle``, weights-only) and the reference library's ``learned_embeds`` ({token: vector}). An embedding of n
vectors adds the tokens ``tok``, ``tok_1`` ... ``tok_{n-1}``; ``tok`` in a prompt stands for all of them (the text
conditioner expands it, as the reference library's pipelines do). Negative embeddings are the same thing used in the
negative prompt.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from difframe.errors import ModelLoadError

UNSUPPORTED = {"clip_g": "SDXL", "clip_l": "SDXL"}


@dataclass
class Embedding:
    token: str
    vectors: torch.Tensor  # (n, hidden)
    short_hash: str | None  # web UI "TI hashes": sha256 of the file, 12 hex digits


def read_embedding(
    source: str | os.PathLike[str] | dict[str, Any], token: str | None, *, allow_pickle: bool = False
) -> Embedding:
    """An embedding file (or state dict) -> its token and vectors; the token defaults to the file's own name."""
    from difframe.weights import read_state_dict

    short_hash = None
    if isinstance(source, dict):
        state, stem, where = source, None, "the given embedding"
    else:
        path = Path(source)
        where = os.fspath(path)
        if path.is_dir():
            found = [path / n for n in ("learned_embeds.safetensors", "learned_embeds.bin") if (path / n).is_file()]
            if not found:
                raise ModelLoadError(f"{path} has no learned_embeds.safetensors")
            path = found[0]
        if not path.is_file():
            raise ModelLoadError(f"embedding file {path} does not exist")
        if path.suffix != ".safetensors" and not allow_pickle:
            raise ModelLoadError(
                f"{path} is a pickle ({path.suffix}): loading a pickle can run code. Convert it to safetensors, or "
                "pass allow_pickle=True (it is then read weights-only)."
            )
        state = read_state_dict([path])
        stem = path.stem if path.stem != "learned_embeds" else None
        short_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    for key, family in UNSUPPORTED.items():
        if key in state:
            raise ModelLoadError(f"{where} is an embedding for {family} ({key}); this pipeline is Stable Diffusion 1/2")
    if "string_to_param" in state:  # the web UI's .pt
        params = state["string_to_param"]
        vectors = params.get("*", next(iter(params.values()), None)) if isinstance(params, dict) else None
        file_token = state.get("name") if isinstance(state.get("name"), str) else stem
    elif "emb_params" in state:  # the web UI's .safetensors
        vectors, file_token = state["emb_params"], stem
    elif len(state) == 1:  # the reference library's learned_embeds: {token: vector(s)}
        file_token, vectors = next(iter(state.items()))
    else:
        keys = ", ".join(sorted(map(str, state))[:5])
        raise ModelLoadError(f"{where} is not a textual-inversion embedding (keys: {keys})")
    if not isinstance(vectors, torch.Tensor):
        raise ModelLoadError(f"{where}: the embedding holds no tensor")
    vectors = vectors.detach().reshape(-1, vectors.shape[-1]) if vectors.ndim else vectors
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ModelLoadError(f"{where}: an embedding must be (vectors, width), got {tuple(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        raise ModelLoadError(f"{where}: the embedding holds NaN or infinite values")
    chosen = token or file_token
    if not chosen or not isinstance(chosen, str) or any(c.isspace() for c in chosen):
        raise ValueError(f"{where}: name the token to use in prompts (token=...), one word; got {chosen!r}")
    return Embedding(chosen, vectors, short_hash)


class TextualInversionMixin:
    """``load_textual_inversion`` / ``unload_textual_inversion``, as in the reference library's pipelines."""

    def _ti_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_ti")
        if state is None:
            state = {"loaded": {}, "original": None}
            self.__dict__["_ti"] = state
        return state

    def load_textual_inversion(
        self,
        pretrained: str | os.PathLike[str] | dict[str, Any] | list[Any],
        token: str | list[str | None] | None = None,
        *,
        allow_pickle: bool = False,
    ) -> list[str]:
        """Add one or several embeddings; returns their prompt tokens. Everything is checked before the tokenizer or
        the text encoder changes."""
        sources = pretrained if isinstance(pretrained, list) else [pretrained]
        tokens = token if isinstance(token, list) else [token] * len(sources)
        if len(tokens) != len(sources):
            raise ValueError(f"got {len(tokens)} tokens for {len(sources)} embeddings: pass one per embedding")
        embeddings = [read_embedding(s, t, allow_pickle=allow_pickle) for s, t in zip(sources, tokens)]
        tokenizer, encoder = self.tokenizer, self.text_encoder
        width = encoder.get_input_embeddings().weight.shape[1]
        vocabulary = tokenizer.get_vocab()
        seen: set[str] = set()
        for embedding in embeddings:
            if embedding.vectors.shape[1] != width:
                raise ModelLoadError(
                    f"embedding {embedding.token!r} has vectors of width {embedding.vectors.shape[1]}, the text "
                    f"encoder's are {width}: it was made for another base model"
                )
            names = _token_names(embedding)
            clash = [n for n in names if n in vocabulary or n in seen]
            if clash:
                raise ValueError(
                    f"token {clash[0]!r} is in the tokenizer already: load the embedding with another token=..."
                )
            seen.update(names)
        with self._changing("load_textual_inversion"):
            state = self._ti_state()
            snapshot = copy.deepcopy(tokenizer)
            rows = encoder.get_input_embeddings().weight.shape[0]
            if state["original"] is None:
                state["original"] = (snapshot, rows)
            try:
                for embedding in embeddings:
                    names = _token_names(embedding)
                    tokenizer.add_tokens(names)
                    ids = tokenizer.convert_tokens_to_ids(names)
                    encoder.resize_token_embeddings(len(tokenizer))
                    table = encoder.get_input_embeddings().weight
                    with torch.no_grad():
                        table[ids] = embedding.vectors.to(device=table.device, dtype=table.dtype)
                    state["loaded"][embedding.token] = embedding
            except Exception:
                encoder.resize_token_embeddings(rows)
                self.__dict__["tokenizer"] = snapshot
                for embedding in embeddings:
                    state["loaded"].pop(embedding.token, None)
                raise
        return [e.token for e in embeddings]

    def unload_textual_inversion(self) -> None:
        """Remove every loaded embedding: the tokenizer and the text encoder's table as they were."""
        state = self._ti_state()
        if state["original"] is None:
            return
        with self._changing("unload_textual_inversion"):
            tokenizer, rows = state["original"]
            self.text_encoder.resize_token_embeddings(rows)
            self.__dict__["tokenizer"] = tokenizer
            state["original"] = None
            state["loaded"].clear()

    @property
    def textual_inversions(self) -> dict[str, int]:
        """Loaded embeddings: prompt token -> number of vectors."""
        return {t: int(e.vectors.shape[0]) for t, e in self._ti_state()["loaded"].items()}

    def embeddings_in(self, text: str) -> dict[str, str]:
        """Token -> short hash of the loaded embeddings that ``text`` uses (for "TI hashes")."""
        loaded = self._ti_state()["loaded"]
        if not loaded:
            return {}
        used = set(self.tokenizer.tokenize(text))  # an added token comes out whole; "pinkstyle" does not use "ink"
        return {t: e.short_hash or "" for t, e in loaded.items() if t in used}


def _token_names(embedding: Embedding) -> list[str]:
    return [embedding.token] + [f"{embedding.token}_{i}" for i in range(1, embedding.vectors.shape[0])]
