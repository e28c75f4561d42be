"""What a pipeline adds on top of its weights: LoRA adapters, textual-inversion embeddings, and the web UIs'
``<lora:NAME:WEIGHT>`` prompt syntax (looked up in a LoRA folder, recorded in the PNG as "Lora hashes").

A call whose prompts name LoRAs loads them from the folder (once; they stay loaded, inactive, for later calls),
activates them with their weights next to the adapters ``set_adapters`` made active, and restores the previous
weights afterwards. Such a call changes the shared layers, so it runs alone (other calls on the pipeline wait).
Every image records the LoRAs it was made with: the prompt keeps its tags, adapters activated through the API are
appended as tags, and "Lora hashes" / "TI hashes" name the files the way the web UIs do.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .lora import LoraMixin
from .metadata import format_hashes, model_hash
from .prompt_networks import find_lora, lora_folder, parse_lora_tags
from .textual_inversion import TextualInversionMixin


class NetworksMixin(LoraMixin, TextualInversionMixin):
    """LoRA and textual inversion for the Stable Diffusion pipelines."""

    lora_dir: str | os.PathLike[str] | None = None

    def apply_options(self, lora_dir: str | os.PathLike[str] | None = None, **rest: Any) -> None:
        """``lora_dir``: the folder ``<lora:NAME:...>`` tags are looked up in (default: $DIFFRAME_LORA_DIR)."""
        if lora_dir is not None:
            lora_folder(lora_dir)  # an error now, not at the first prompt that needs it
        self.lora_dir = lora_dir
        super().apply_options(**rest)

    def _generate(self, request: Any) -> Any:
        prompts: list[str] | None = request.prompts
        negatives: list[str] | None = request.negatives
        texts = (prompts or []) + (negatives or [])
        parsed = [parse_lora_tags(text) for text in texts]
        tag_sets = {tuple(sorted(tags.items())) for _, tags in parsed[: len(prompts or [])]}
        tags = dict(next(iter(tag_sets), ()))
        for _, negative_tags in parsed[len(prompts or []) :]:
            tags.update(negative_tags)
        if len(tag_sets) > 1:
            raise ValueError(
                "the prompts of one call name different LoRAs (or weights): "
                + "; ".join(", ".join(f"{n}:{w:g}" for n, w in s) or "none" for s in sorted(tag_sets))
                + ". Generate them in separate calls."
            )
        if not tags:
            output = super()._generate(request)
            return self._record_networks(output, prompts, negatives, prompts, negatives, {})
        stripped = [text for text, _ in parsed]
        request = copy.copy(request)  # the caller's request keeps its prompts
        request.prompts = stripped[: len(prompts or [])] or prompts
        request.negatives = stripped[len(prompts or []) :] or negatives
        with self._changing("a prompt's <lora:...> tags"), self._prompt_loras(tags):
            output = super()._generate(request)
        return self._record_networks(output, request.prompts, request.negatives, prompts, negatives, tags)

    @contextlib.contextmanager
    def _prompt_loras(self, tags: dict[str, float]) -> Iterator[None]:
        state = self._lora_state()
        if state["fused"]:
            raise ValueError("LoRA weights are fused into the model: unfuse_lora() before using <lora:...> in prompts")
        folder = lora_folder(self.lora_dir)
        files = {name: find_lora(name, folder) for name in tags if name not in state["loaded"]}  # all found first
        before = dict(state["weights"])
        try:
            for name, path in files.items():
                self.load_lora_weights(path, adapter_name=name)
            state["weights"] = {**before, **tags}
            self._apply_adapter_weights()
            yield
        finally:
            state["weights"] = before
            self._apply_adapter_weights()

    def _record_networks(
        self,
        output: Any,
        used_prompts: list[str] | None,
        used_negatives: list[str] | None,
        prompts: list[str] | None,
        negatives: list[str] | None,
        tags: dict[str, float],
    ) -> Any:
        """The recorded prompts keep their tags; adapters active through the API are added as tags; hashes."""
        state = self._lora_state()
        api = {n: w for n, w in state["weights"].items() if n not in tags and w != 0.0}
        originals = dict(zip(used_prompts or [], prompts or []))
        negative_originals = dict(zip(used_negatives or [], negatives or []))
        loaded = state["loaded"]
        lora_hashes = {n: loaded[n].short_hash or "" for n in [*tags, *api] if n in loaded}
        suffix = "".join(f" <lora:{n}:{w:g}>" for n, w in api.items())
        checkpoint_hash = self._checkpoint_hash()
        for params in output.parameters:
            if checkpoint_hash:
                params.extra["Model hash"] = checkpoint_hash
            params.prompt = originals.get(params.prompt, params.prompt) + suffix
            params.negative_prompt = negative_originals.get(params.negative_prompt, params.negative_prompt)
            if lora_hashes:
                params.extra["Lora hashes"] = format_hashes(lora_hashes)
            embeddings = self.embeddings_in(params.prompt + "\n" + params.negative_prompt)
            if embeddings:
                params.extra["TI hashes"] = format_hashes(embeddings)
        if isinstance(output.images, list):
            for image, params in zip(output.images, output.parameters):
                if hasattr(image, "info"):
                    image.info["parameters"] = params.to_text()
        return output

    def _checkpoint_hash(self) -> str | None:
        """The web UI's "Model hash" of a pipeline loaded from a single-file checkpoint (hashed once)."""
        info = getattr(self, "single_file", None)
        path = getattr(info, "path", None)
        if path is None:
            return None
        cached = self.__dict__.get("_checkpoint_hash")
        if cached is None or cached[0] != path:
            cached = (path, model_hash(path))
            self.__dict__["_checkpoint_hash"] = cached
        return cached[1]

    def lora_file(self, name: str) -> Path:
        """Where ``<lora:name:...>`` is found (the lora_dir option, else $DIFFRAME_LORA_DIR)."""
        return find_lora(name, lora_folder(self.lora_dir))
