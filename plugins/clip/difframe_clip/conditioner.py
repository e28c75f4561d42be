"""CLIPTextConditioner: prompts -> the text embeddings a Stable Diffusion UNet attends to.

Long prompts are split like the popular web UIs do: the prompt's tokens (without special tokens) are cut into
chunks of 75 (a BREAK also ends a chunk, and a cut that falls a few tokens after a comma moves back to just after
that comma, padding the rest of the chunk); each chunk becomes [BOS] + tokens + [EOS] + padding to 77 and is encoded
on its own; the chunk outputs are concatenated along the token axis, giving (batch, 77 * chunks, hidden). A prompt
of at most 75 tokens is one chunk, token for token what the reference library feeds the text encoder, so its
embedding is identical. Weighting syntax, (word:1.3) and the like, is read as the web UI reads it (prompt_weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from .prompt_weights import BREAK, parse_weighted_prompt

Prompts = str | Sequence[str]


class CLIPTextConditioner:
    """Encode prompts with a CLIP tokenizer and text encoder (transformers objects, or difframe_clip's).

    long_prompts: "chunk" (default) encodes every token in 75-token chunks; "truncate" keeps the first 75 tokens,
    as the reference library does. max_chunks caps the chunks per prompt (None: no cap). weighting: read the web
    UI's weighting syntax, ``(word)``, ``(word:1.3)``, ``[word]``, ``\\(``, ``BREAK`` (default True); False encodes
    the prompt's characters as they are. comma_backtrack: when a 75-token chunk is full and the prompt goes on, and
    the chunk's last comma is among its last ``comma_backtrack`` tokens, the chunk ends after that comma and the
    tokens after it start the next chunk (the web UI's "comma_padding_backtrack", default 20 as there; 0: never).
    Only chunking moves tokens: prompts of at most 75 tokens, and "truncate" mode, are never changed by it.
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        *,
        long_prompts: Literal["chunk", "truncate"] = "chunk",
        max_chunks: int | None = None,
        weighting: bool = True,
        comma_backtrack: int = 20,
    ) -> None:
        if long_prompts not in ("chunk", "truncate"):
            raise ValueError(f"long_prompts must be 'chunk' or 'truncate', got {long_prompts!r}")
        if max_chunks is not None and max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.long_prompts = long_prompts
        self.max_chunks = max_chunks
        if not isinstance(weighting, bool):
            raise TypeError(f"weighting must be True or False, got {weighting!r}")
        self.weighting = weighting
        self.length = int(getattr(text_encoder.config, "max_position_embeddings", 77))  # 77 for CLIP
        self.chunk_tokens = self.length - 2
        if isinstance(comma_backtrack, bool) or not isinstance(comma_backtrack, int):
            raise TypeError(f"comma_backtrack must be an integer, got {comma_backtrack!r}")
        if not 0 <= comma_backtrack < self.chunk_tokens:
            raise ValueError(
                f"comma_backtrack must be from 0 (off) to {self.chunk_tokens - 1} tokens, got {comma_backtrack}"
            )
        self.comma_backtrack = comma_backtrack
        self.comma = tokenizer.get_vocab().get(",</w>")  # CLIP's comma token (None: this vocabulary has none)
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    @classmethod
    def from_pretrained(
        cls,
        reference: str,
        *,
        tokenizer_subfolder: str = "tokenizer",
        text_encoder_subfolder: str = "text_encoder",
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        **options: Any,
    ) -> CLIPTextConditioner:
        """Load a model folder's tokenizer/ and text_encoder/."""
        from .models import CLIPTextModelLoader, CLIPTokenizerLoader

        tokenizer = CLIPTokenizerLoader.from_pretrained(reference, subfolder=tokenizer_subfolder)
        encoder = CLIPTextModelLoader.from_pretrained(
            reference, subfolder=text_encoder_subfolder, torch_dtype=torch_dtype, variant=variant,
            allow_pickle=allow_pickle,
        )  # fmt: skip
        return cls(tokenizer, encoder, **options)

    # --- tokens ---------------------------------------------------------------------------------------------------
    def tokenize(self, prompts: Prompts, chunks: int | None = None) -> torch.Tensor:
        """Token ids (batch, chunks, 77); every prompt padded with empty chunks to ``chunks`` (default: the most)."""
        return self.tokenize_weighted(prompts, chunks)[0]

    def tokenize_weighted(self, prompts: Prompts, chunks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (batch, chunks, 77) and each token's weight (1 for special tokens, padding and plain text)."""
        pieces = [self._chunks(prompt) for prompt in _as_list(prompts)]
        count = max(len(p) for p in pieces)
        if chunks is not None:
            if chunks < count:
                raise ValueError(f"a prompt needs {count} chunks of {self.chunk_tokens} tokens; asked for {chunks}")
            count = chunks
        empty: tuple[list[int], list[float]] = ([], [])
        rows = [p + [empty] * (count - len(p)) for p in pieces]
        ids = [[self._wrap(tokens) for tokens, _ in row] for row in rows]
        weights = [[[1.0, *w] + [1.0] * (self.length - 1 - len(w)) for _, w in row] for row in rows]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(weights, dtype=torch.float64)

    def _chunks(self, prompt: str) -> list[tuple[list[int], list[float]]]:
        """One prompt's chunks of at most 75 tokens, with their weights, cut as the web UI cuts them: a BREAK ends a
        chunk; a full chunk is closed when the next token arrives, and then, if its last comma is among its last
        ``comma_backtrack`` tokens (and that next token is not itself a comma), the tokens after the comma move on
        to the next chunk."""
        prompt = self.expand_embeddings(prompt)
        pieces = parse_weighted_prompt(prompt) if self.weighting else [(prompt, 1.0)]
        ids = self.tokenizer([text for text, _ in pieces], add_special_tokens=False, truncation=False, verbose=False)
        backtrack = self.comma_backtrack if self.long_prompts == "chunk" and self.comma is not None else 0
        full = self.chunk_tokens
        chunks: list[tuple[list[int], list[float]]] = []
        tokens: list[int] = []
        weights: list[float] = []
        comma = -1  # index in ``tokens`` of the current chunk's last comma
        for piece, piece_ids in zip(pieces, ids["input_ids"]):
            if piece == BREAK:
                chunks.append((tokens, weights))
                tokens, weights, comma = [], [], -1
                continue
            for token in piece_ids:
                if token == self.comma:
                    comma = len(tokens)  # a comma that arrives at a full chunk does not move the cut
                elif backtrack and len(tokens) == full and comma >= 0 and full - comma <= backtrack:
                    cut = comma + 1
                    chunks.append((tokens[:cut], weights[:cut]))
                    tokens, weights, comma = tokens[cut:], weights[cut:], -1
                if len(tokens) == full:
                    chunks.append((tokens, weights))
                    tokens, weights, comma = [], [], -1
                tokens.append(token)
                weights.append(piece[1])
        if tokens or not chunks:
            chunks.append((tokens, weights))
        if self.long_prompts == "truncate":
            return chunks[:1]
        return chunks[: self.max_chunks] if self.max_chunks else chunks

    def expand_embeddings(self, prompt: str) -> str:
        """A textual-inversion token of several vectors (added as ``tok``, ``tok_1``, ...) stands for all of them,
        as in the reference library's pipelines: "a <cat>" -> "a <cat> <cat>_1 <cat>_2"."""
        added = getattr(self.tokenizer, "added_tokens_encoder", None)
        if not added or len(added) <= 2:  # only the special tokens
            return prompt
        for token in set(self.tokenizer.tokenize(prompt)):
            if token in added and f"{token}_1" in added:
                count = 1
                while f"{token}_{count}" in added:
                    count += 1
                prompt = prompt.replace(token, " ".join([token] + [f"{token}_{i}" for i in range(1, count)]))
        return prompt

    def count_chunks(self, prompts: Prompts) -> int:
        return self.tokenize(prompts).shape[1]

    def _wrap(self, tokens: list[int]) -> list[int]:
        return [self.bos, *tokens, self.eos] + [self.pad] * (self.chunk_tokens - len(tokens))

    # --- embeddings -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Prompts, clip_skip: int | None = None, *, chunks: int | None = None) -> torch.Tensor:
        """Embeddings (batch, 77 * chunks, hidden) in the text encoder's dtype, on its device.

        clip_skip: how many final layers to skip (as in the reference library's encode_prompt): None or 0 uses the
        last layer; 1 the penultimate layer's output, passed through the final layer norm; and so on.
        """
        ids, weights = self.tokenize_weighted(prompts, chunks)
        batch, count, length = ids.shape
        hidden = self._run(ids.reshape(batch * count, length), clip_skip).reshape(batch, count, length, -1)
        if (weights != 1).any():
            hidden = _apply_weights(hidden, weights.to(hidden.device))
        return hidden.reshape(batch, count * length, hidden.shape[-1])

    def encode_pair(
        self,
        prompts: Prompts,
        negative_prompts: Prompts | None = None,
        clip_skip: int | None = None,
        *,
        negative_clip_skip: int | Literal["same"] | None = "same",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and negative-prompt embeddings with the same shape (both padded to the larger chunk count).

        negative_prompts: one per prompt, or one string for all; None means the empty prompt.
        negative_clip_skip: "same" (default) skips the same layers for the negatives, as the web UIs do; the
        reference library's encode_prompt encodes negatives with the last layer whatever clip_skip is: pass None to
        reproduce that.
        """
        prompts = _as_list(prompts)
        if negative_prompts is None:
            negatives = [""] * len(prompts)
        elif isinstance(negative_prompts, str):
            negatives = [negative_prompts] * len(prompts)
        else:
            negatives = list(negative_prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts; pass one per prompt")
        count = max(self.count_chunks(prompts), self.count_chunks(negatives))
        negative_skip = clip_skip if negative_clip_skip == "same" else negative_clip_skip
        return self.encode(prompts, clip_skip, chunks=count), self.encode(negatives, negative_skip, chunks=count)

    def _run(self, ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
        encoder = self.text_encoder
        layers = encoder.config.num_hidden_layers
        if clip_skip is not None and not (isinstance(clip_skip, int) and 0 <= clip_skip < layers):
            raise ValueError(
                f"clip_skip must be an integer from 0 to {layers - 1} for this text encoder, got {clip_skip}"
            )
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):  # a few fine-tunes were trained with a mask
            mask = _mask(ids, self.eos).to(encoder.device)
        ids = ids.to(encoder.device)
        if not clip_skip:
            hidden = encoder(ids, attention_mask=mask).last_hidden_state
        else:
            states = encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
            final_norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 nests it
            hidden = final_norm(states[-(clip_skip + 1)])
        return hidden.to(encoder.dtype)


def _apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The web UI's arithmetic: each token's embedding times its weight, then the chunk rescaled to its original
    mean. Per prompt and chunk (the web UI takes the mean over a whole batch's chunk, so there a prompt's embedding
    depends on the others of its batch; alone, the two agree). Chunks whose weights are all 1 are left untouched."""
    work = hidden.double()
    weighted = work * weights[..., None]
    original = work.mean(dim=(-2, -1), keepdim=True)
    weighted = weighted * (original / weighted.mean(dim=(-2, -1), keepdim=True))
    plain = (weights == 1).all(dim=-1)[..., None, None]
    return torch.where(plain, hidden, weighted.to(hidden.dtype))


def _as_list(prompts: Prompts) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a string or a non-empty list of strings")
    return prompts


def _mask(ids: torch.Tensor, eos: int) -> torch.Tensor:
    """1 up to and including each row's first EOS, 0 after (the padding)."""
    first_eos = (ids == eos).int().argmax(dim=1, keepdim=True)
    return (torch.arange(ids.shape[1]) <= first_eos).long()
