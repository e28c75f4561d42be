"""IP-Adapter image prompts in the Stable Diffusion pipelines.

The work is done by the registered conditioner "ip-adapter" (plugins/ip-adapter), reached through the registry:
these pipelines never import a model plugin. Without that plugin installed, load_ip_adapter says which package
provides it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ImagePromptsMixin:
    """pipe.load_ip_adapter / set_ip_adapter_scale / unload_ip_adapter / prepare_ip_adapter_image_embeds, and the
    per-chunk image tokens of a call."""

    _ip_prompter: Any = None
    reproducible: bool  # the pipeline's (runtime.py): image prompts are then encoded one image at a time

    def _image_prompter(self, create: bool) -> Any:
        if self._ip_prompter is None and create:
            self._ip_prompter = self._framework().create("conditioner", "ip-adapter")
        return self._ip_prompter

    def apply_options(self, ip_adapter: Any = None, ip_adapter_scale: Any = None, **rest: Any) -> None:
        """Build options: ``ip_adapter`` (an adapter file's path, a dict of load_ip_adapter arguments, or a list of
        either) and ``ip_adapter_scale``."""
        super().apply_options(**rest)
        if ip_adapter is None:
            if ip_adapter_scale is not None:
                raise ValueError("ip_adapter_scale needs ip_adapter= (the adapter to scale)")
            return
        entries = ip_adapter if isinstance(ip_adapter, list) else [ip_adapter]
        sources, subfolders, names, options = [], [], [], {}
        for entry in entries:
            if isinstance(entry, (str, os.PathLike)):
                path = Path(os.path.expanduser(os.fspath(entry)))
                if not path.is_file():
                    raise FileNotFoundError(
                        f"ip_adapter {os.fspath(entry)!r} is not a file; pass the adapter file's path, or a dict such "
                        "as {'pretrained': 'h94/IP-Adapter', 'subfolder': 'models', 'weight_name': ...}"
                    )
                sources.append(path.parent)
                subfolders.append(None)
                names.append(path.name)
            elif isinstance(entry, dict):
                entry = dict(entry)
                sources.append(entry.pop("pretrained"))
                subfolders.append(entry.pop("subfolder", None))
                names.append(entry.pop("weight_name"))
                options |= entry
            else:
                raise TypeError(f"ip_adapter entries are paths or dicts, got {type(entry).__name__}")
        self.load_ip_adapter(sources, subfolder=subfolders, weight_name=names, **options)
        if ip_adapter_scale is not None:
            self.set_ip_adapter_scale(ip_adapter_scale)

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path: Any,
        subfolder: str | list[str | None] | None = None,
        weight_name: str | list[str] | None = None,
        image_encoder_folder: str | None = "image_encoder",
        *,
        allow_pickle: bool = False,
        **hub_options: Any,
    ) -> None:
        """Load one IP-Adapter (or several: lists of sources, subfolders and weight names) and its image encoder.

        ``pipe.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name="ip-adapter_sd15.safetensors")``
        reads the file and ``models/image_encoder`` (a CLIP vision model with projection); every check runs before
        the adapters are attached, so a file that does not fit this UNet leaves the pipeline as it was.
        """
        sources = pretrained_model_name_or_path
        sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        if weight_name is None:
            raise ValueError("pass weight_name= (for example 'ip-adapter_sd15.safetensors')")
        names = list(weight_name) if isinstance(weight_name, (list, tuple)) else [weight_name]
        folders = list(subfolder) if isinstance(subfolder, (list, tuple)) else [subfolder] * len(sources)
        if len(sources) == 1 and len(names) > 1:
            sources = sources * len(names)
        if len(folders) == 1 and len(names) > 1:
            folders = folders * len(names)
        if not len(sources) == len(folders) == len(names):
            raise ValueError(
                f"{len(sources)} sources, {len(folders)} subfolders and {len(names)} weight names: give one of each "
                "per adapter (or one source/subfolder for all)"
            )
        with self._gate.exclusive("load_ip_adapter"):
            prompter = self._image_prompter(create=True)
            prompter.load(
                self.unet,
                sources,
                folders,
                names,
                image_encoder_folder=image_encoder_folder,
                allow_pickle=allow_pickle,
                feature_extractor=getattr(self, "feature_extractor", None),
                **hub_options,
            )

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """A number, a per-block dict ({"up": {"block_0": [0.0, 1.0, 0.0]}}), or a list with one per adapter."""
        prompter = self._image_prompter(create=False)
        if prompter is None:
            raise ValueError("no IP-Adapter is loaded: call pipe.load_ip_adapter(...) first")
        with self._gate.exclusive("set_ip_adapter_scale"):
            prompter.set_scale(scale)

    def unload_ip_adapter(self) -> None:
        prompter = self._image_prompter(create=False)
        if prompter is not None:
            with self._gate.exclusive("unload_ip_adapter"):
                prompter.unload(self.unet)
                self._ip_prompter = None

    @property
    def image_encoder(self) -> Any:
        prompter = self._image_prompter(create=False)
        return None if prompter is None else prompter.image_encoder

    def prepare_ip_adapter_image_embeds(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: Any,
        device: Any,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
    ) -> list[Any]:
        """Image embeddings per adapter, as the reference's method of that name returns them; pass them back as
        ``ip_adapter_image_embeds`` to skip the image encoder next time. In reproducible mode each image is encoded
        alone, as a call encodes it."""
        prompter = self._image_prompter(create=False)
        if prompter is None or not prompter.adapters:
            raise ValueError("no IP-Adapter is loaded: call pipe.load_ip_adapter(...) first")
        import torch

        with torch.no_grad():
            return prompter.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                num_images_per_prompt,
                do_classifier_free_guidance,
                per_image=self.reproducible,
            )

    def image_prompt_kwargs(
        self,
        cross_attention_kwargs: dict[str, Any] | None,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: Any,
        ip_adapter_masks: Any,
        *,
        count: int,
        num_images_per_prompt: int,
        guidance_scale: float,
        height: int,
        width: int,
    ) -> dict[str, Any] | None:
        """A call's image prompts, checked and encoded before denoising, carried to each chunk."""
        prompter = self._image_prompter(create=False)
        loaded = prompter is not None and bool(prompter.adapters)
        given = ip_adapter_image is not None or ip_adapter_image_embeds is not None or ip_adapter_masks is not None
        if not loaded:
            if given:
                raise ValueError("ip_adapter_image given but no IP-Adapter is loaded: call pipe.load_ip_adapter first")
            return cross_attention_kwargs
        backend = type(getattr(self, "backend", None)).__name__
        if backend not in ("NoneType", "EagerBackend", "TorchCompileBackend"):  # they run our attention modules
            raise ValueError(
                f"IP-Adapter runs as an attention add-on, which the {backend} does not run; build the pipeline with "
                "the eager (default) or torch-compile backend"
            )
        import torch

        with torch.no_grad():
            prompts = prompter.call_inputs(
                ip_adapter_image,
                ip_adapter_image_embeds,
                ip_adapter_masks,
                count=count,
                num_images_per_prompt=num_images_per_prompt,
                guided=guidance_scale > 1.0,
                height=height,
                width=width,
                per_image=self.reproducible,
            )
        return {**(cross_attention_kwargs or {}), "ip_adapter_prompts": prompts}

    def image_prompt_metadata(self, cross_attention_kwargs: dict[str, Any] | None) -> dict[str, str]:
        """The PNG's record of a call's image prompts: adapter files and scale (the images themselves are not
        stored, so such an image cannot be made again from its parameters alone)."""
        if not cross_attention_kwargs or "ip_adapter_prompts" not in cross_attention_kwargs:
            return {}
        prompter = self._image_prompter(create=False)
        names = ", ".join(adapter.name for adapter in prompter.adapters)
        return {"IP-Adapter": f"{names} (scale {json.dumps(prompter.scale)})"}

    @staticmethod
    def chunk_attention_kwargs(chunk: Any, cross_attention_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
        """The chunk's own rows of the call's image prompts (uncond rows first with guidance, as the text)."""
        if not cross_attention_kwargs or "ip_adapter_prompts" not in cross_attention_kwargs:
            return cross_attention_kwargs
        kwargs = dict(cross_attention_kwargs)
        prompts = kwargs.pop("ip_adapter_prompts")
        return kwargs | prompts.chunk_kwargs(slice(chunk.start, chunk.stop), chunk.guided)
