"""Prompts -> text embeddings, through the registered conditioner (conditioning.py chooses it).

Each prompt is encoded to the length its own text (and negative prompt) needs, never to a batch's longest, so an
image does not depend on the other prompts of its batch.
"""

from __future__ import annotations

from typing import Any

import torch

from .request import GenerationRequest


class PromptsMixin:
    """``pipe.encode_prompt`` and the per-prompt embeddings of a call."""

    def encode_prompt(
        self, prompts: list[str], clip_skip: int | None = None, *, chunks: int | None = None
    ) -> torch.Tensor:
        """Text embeddings (len(prompts), tokens, dim) on the execution device, in the text encoder's dtype.

        With difframe-clip installed, prompts longer than 75 tokens are encoded in chunks of 75 (as the web UIs
        do); ``chunks`` pads every prompt to that many chunks.
        """
        conditioner = self._conditioner()
        if conditioner is not None:
            embeds = self._run("text_encoder", self.text_encoder, conditioner.encode, prompts, clip_skip, chunks=chunks)
        else:
            embeds = self._run("text_encoder", self.text_encoder, self._encode_with_transformers, prompts, clip_skip)
        return embeds.to(device=self.execution_device, dtype=self.text_encoder.dtype)

    def token_chunks(self, prompts: list[str]) -> list[int]:
        """How many 77-token chunks each prompt needs (1 without difframe-clip's long-prompt support)."""
        conditioner = self._conditioner()
        if conditioner is None:
            return [1] * len(prompts)
        return [conditioner.count_chunks([p]) for p in prompts]

    @torch.no_grad()
    def _encode_with_transformers(self, prompts: list[str], clip_skip: int | None) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.execution_device)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.execution_device)
        if not clip_skip:
            return self.text_encoder(ids, attention_mask=mask)[0]
        hidden = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True)[-1][-(clip_skip + 1)]
        final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm  # transformers 4/5
        return final_norm(hidden)

    def prompt_embeddings(self, request: GenerationRequest) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per prompt: the conditional embedding and, with guidance, the unconditional one (same length)."""
        device, dtype = self.execution_device, self.text_encoder.dtype
        guided, clip_skip, negatives = request.guided, request.clip_skip, request.negatives
        given_negative = request.negative_prompt_embeds
        if request.prompt_embeds is not None:
            cond = list(request.prompt_embeds.to(device=device, dtype=dtype))
            if not guided:
                return cond, None
            if given_negative is not None:
                return cond, list(given_negative.to(device=device, dtype=dtype))
            negatives = negatives or [""] * len(cond)
            return cond, self._encode_grouped(negatives, [c.shape[0] // 77 or 1 for c in cond], clip_skip)
        prompts = request.prompts or []
        chunks = self.token_chunks(prompts)
        if guided and given_negative is None:
            negatives = negatives or [""] * len(prompts)
            chunks = [max(a, b) for a, b in zip(chunks, self.token_chunks(negatives))]
        cond = self._encode_grouped(prompts, chunks, clip_skip)
        if not guided:
            return cond, None
        if given_negative is not None:
            return cond, list(given_negative.to(device=device, dtype=dtype))
        return cond, self._encode_grouped(negatives, chunks, clip_skip)

    def _encode_grouped(self, texts: list[str], chunks: list[int], clip_skip: int | None) -> list[torch.Tensor]:
        """Encode each distinct (text, chunk count) once: one text per encoder call in reproducible mode (the
        encoder's numbers then never depend on the other texts), else one batch per chunk count."""
        result: list[Any] = [None] * len(texts)
        per_text = self.reproducible
        for count in sorted(set(chunks)):
            wanted = sorted({texts[i] for i in range(len(texts)) if chunks[i] == count})
            groups = [[text] for text in wanted] if per_text else [wanted]
            pad = count if self._conditioner() else None
            encoded = {
                t: e for group in groups for t, e in zip(group, self.encode_prompt(group, clip_skip, chunks=pad))
            }
            for i in range(len(texts)):
                if chunks[i] == count:
                    result[i] = encoded[texts[i]]
        return result
