"""Image prompts for the Stable Diffusion pipelines: loading adapters and the image encoder, encoding images,
and the per-image cross-attention inputs of each chunk. The pipelines reach this through the registry
(conditioner "ip-adapter"), never by importing this plugin."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter import (
    IPAdapterAttention,
    IPAdapterWeights,
    adapter_from_state_dict,
    attach,
    cross_attention_layers,
    detach,
    read_adapter_file,
    set_scales,
)


def project_image_embeds(
    adapters: Sequence[IPAdapterWeights], embeds: Sequence[torch.Tensor], *, per_row: bool = False
) -> list[torch.Tensor]:
    """Per adapter: image-encoder output (batch, images, ...) -> image tokens (batch, images, tokens, dim).
    ``per_row``: each row (one output image's images) through the projection alone, so that its tokens do not
    depend on the other rows (reproducible mode)."""
    if len(embeds) != len(adapters):
        raise ValueError(f"{len(embeds)} image embeddings for {len(adapters)} IP-Adapters: give one entry per adapter")
    tokens = []
    for adapter, embed in zip(adapters, embeds):
        expected = 3 if not adapter.uses_hidden_states else 4
        if embed.ndim != expected:
            form = "(batch, images, dim)" if expected == 3 else "(batch, images, tokens, dim)"
            raise ValueError(
                f"image embeddings for {adapter.name} ({adapter.kind}) must be {form}, got {tuple(embed.shape)}"
            )
        parameter = next(adapter.projection.parameters())
        flat = embed.reshape(-1, *embed.shape[2:]).to(device=parameter.device, dtype=parameter.dtype)
        rows = flat.split(embed.shape[1]) if per_row else [flat]
        projected = torch.cat([adapter.projection(row) for row in rows])
        tokens.append(projected.reshape(*embed.shape[:2], *projected.shape[1:]))
    return tokens


@dataclass
class ImagePrompts:
    """One call's image prompts: per adapter, image tokens with one row per generated image (uncond rows apart)."""

    cond: list[torch.Tensor]  # per adapter (total, images, tokens, dim)
    uncond: list[torch.Tensor] | None
    masks: list[torch.Tensor | None] | None

    def chunk_kwargs(self, rows: slice, guided: bool) -> dict[str, Any]:
        tokens = [
            torch.cat([u[rows], c[rows]]) if guided and self.uncond is not None else c[rows]
            for c, u in zip(self.cond, self.uncond or self.cond)
        ]
        kwargs: dict[str, Any] = {"ip_hidden_states": tokens}
        if self.masks is not None:
            kwargs["ip_adapter_masks"] = self.masks
        return kwargs


def check_no_other_addon(unet: nn.Module) -> None:
    """IP-Adapter's add-on goes on every cross-attention layer, which holds one add-on: another one there is refused
    before anything is read, not silently replaced."""
    held = {
        type(module.addon).__name__: getattr(module.addon, "name", None)
        for _, module in cross_attention_layers(unet)
        if module.addon is not None and not isinstance(module.addon, IPAdapterAttention)
    }
    if held:
        names = ", ".join(sorted(str(name or kind) for kind, name in held.items()))
        raise ValueError(
            f"the UNet's cross-attention already has the add-on {names}, and IP-Adapter needs those layers for its "
            "own (an attention module holds one add-on): remove it first with pipe.remove_attention_addon(NAME) "
            "(added by name) or pipe.set_attention(None)"
        )


class ImagePrompter:
    """A pipeline's IP-Adapters, image encoder and feature extractor."""

    def __init__(self) -> None:
        self.adapters: list[IPAdapterWeights] = []
        self.addons: dict[str, Any] = {}
        self.image_encoder: nn.Module | None = None
        self.feature_extractor: Any = None
        self.scale: Any = 1.0

    # --- loading ----------------------------------------------------------------------------------------------
    def load(
        self,
        unet: nn.Module,
        sources: Sequence[str | os.PathLike[str]],
        subfolders: Sequence[str | None],
        weight_names: Sequence[str],
        *,
        image_encoder_folder: str | None = "image_encoder",
        allow_pickle: bool = False,
        feature_extractor: Any = None,
        image_encoder: nn.Module | None = None,
        **hub_options: Any,
    ) -> None:
        """Read and check every adapter file against ``unet`` and find the image encoder, then attach."""
        from difframe.hub import resolve

        check_no_other_addon(unet)
        adapters, folders = [], []
        for source, subfolder, weight_name in zip(sources, subfolders, weight_names):
            patterns = [f"{subfolder}/{weight_name}" if subfolder else weight_name]
            if image_encoder_folder and image_encoder is None:
                prefix = f"{subfolder}/" if subfolder and "/" not in image_encoder_folder else ""
                patterns += [f"{prefix}{image_encoder_folder}/*.json", f"{prefix}{image_encoder_folder}/*.safetensors"]
            root = resolve(source, allow_patterns=patterns, **hub_options)
            folder = root / subfolder if subfolder else root
            file = folder / weight_name
            if not file.resolve().is_relative_to(root.resolve()):
                raise ValueError(f"weight_name {weight_name!r} leaves the adapter folder {root}")
            if not file.is_file():
                raise FileNotFoundError(f"no IP-Adapter file {file}; pass weight_name= (and subfolder=) of the file")
            adapters.append(
                adapter_from_state_dict(read_adapter_file(file, allow_pickle=allow_pickle), unet, file.name)
            )
            folders.append(folder if "/" not in (image_encoder_folder or "") else root)
        if image_encoder is None:
            image_encoder = self.image_encoder
        if image_encoder is None:
            if not image_encoder_folder:
                raise ValueError(
                    "IP-Adapters need an image encoder: none is loaded and image_encoder_folder is None; pass "
                    "image_encoder_folder= (a folder inside the adapter repository) or image_encoder="
                )
            image_encoder = self._load_encoder(folders[0] / image_encoder_folder, unet)
        check_encoder(image_encoder, adapters)
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor or self.feature_extractor or _default_processor(image_encoder)
        detach(unet)
        self.adapters = adapters
        self.addons = attach(unet, adapters)
        self.scale = 1.0

    @staticmethod
    def _load_encoder(folder: Path, unet: nn.Module) -> nn.Module:
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no image encoder at {folder} (config.json missing): IP-Adapter releases keep it in "
                "models/image_encoder; pass image_encoder_folder= or load one into the pipeline first"
            )
        from transformers import CLIPVisionModelWithProjection

        parameter = next(unet.parameters())
        encoder = CLIPVisionModelWithProjection.from_pretrained(folder, torch_dtype=parameter.dtype)
        return encoder.to(parameter.device).eval()

    def set_scale(self, scale: Any) -> None:
        if not self.adapters:
            raise ValueError("no IP-Adapter is loaded: call pipe.load_ip_adapter(...) first")
        set_scales(self.addons, scale)
        self.scale = scale

    def unload(self, unet: nn.Module) -> None:
        detach(unet)
        self.adapters, self.addons, self.image_encoder, self.feature_extractor = [], {}, None, None

    # --- encoding ---------------------------------------------------------------------------------------------
    def encode_image(self, image: Any, hidden: bool, *, per_image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, unconditional embeddings) of a list of images: the projected embedding and zeros, or the
        penultimate layer's tokens of the images and of black images. ``per_image`` (reproducible mode): each image
        through the encoder alone, so that its embedding never depends on the other images of the call (matrix
        kernels block by batch size); the black image's tokens, the same for every image, are computed once."""
        encoder = self.image_encoder
        parameter = next(encoder.parameters())
        if not torch.is_tensor(image):
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=parameter.device, dtype=parameter.dtype)

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            if hidden:
                return encoder(pixels, output_hidden_states=True).hidden_states[-2]
            return encoder(pixels).image_embeds

        if per_image:
            embeds = torch.cat([encode(one) for one in image.split(1)])
            uncond = encode(torch.zeros_like(image[:1])).expand_as(embeds) if hidden else torch.zeros_like(embeds)
            return embeds, uncond
        embeds = encode(image)
        return embeds, encode(torch.zeros_like(image)) if hidden else torch.zeros_like(embeds)

    def prepare_ip_adapter_image_embeds(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: Sequence[torch.Tensor] | None,
        device: Any,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        *,
        per_image: bool = False,
    ) -> list[torch.Tensor]:
        """As the reference pipelines' method of that name: per adapter (rows x images_per_prompt [x2 with guidance,
        uncond first], images, ...), for reuse as ``ip_adapter_image_embeds``. Rows: 1, or one per prompt when the
        adapter's entry is a list with a list of images per prompt. ``per_image``: as in encode_image."""
        cond, uncond = self._embeds_per_adapter(
            ip_adapter_image, ip_adapter_image_embeds, do_classifier_free_guidance, per_image=per_image
        )
        out = []
        for c, u in zip(cond, uncond or cond):
            c = c.repeat_interleave(num_images_per_prompt, dim=0)  # rows: 1, or one per prompt given
            if do_classifier_free_guidance:
                c = torch.cat([u.repeat_interleave(num_images_per_prompt, dim=0), c])
            out.append(c.to(device))
        return out

    def _embeds_per_adapter(
        self, images: Any, embeds: Sequence[torch.Tensor] | None, guided: bool, *, per_image: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per adapter (rows, images, ...): rows are 1 (every image the same) or one per prompt or per output."""
        adapters = self.adapters
        if embeds is not None:
            if images is not None:
                raise ValueError("pass ip_adapter_image or ip_adapter_image_embeds, not both")
            embeds = list(embeds) if isinstance(embeds, (list, tuple)) else [embeds]
            if len(embeds) != len(adapters):
                raise ValueError(f"{len(embeds)} ip_adapter_image_embeds for {len(adapters)} IP-Adapters: one each")
            if not guided:
                return list(embeds), None
            for e in embeds:
                if e.shape[0] % 2:
                    raise ValueError(
                        "with guidance, ip_adapter_image_embeds hold unconditional rows then conditional rows (an "
                        f"even count), as prepare_ip_adapter_image_embeds returns them; got {e.shape[0]} rows"
                    )
            pairs = [e.chunk(2) for e in embeds]
            return [p[1] for p in pairs], [p[0] for p in pairs]
        if images is None:
            raise ValueError(
                f"{len(adapters)} IP-Adapter(s) loaded: pass ip_adapter_image= (or ip_adapter_image_embeds=), or "
                "call pipe.unload_ip_adapter()"
            )
        if self.image_encoder is None:
            raise ValueError("no image encoder is loaded: load_ip_adapter(..., image_encoder_folder=...) loads one")
        per_adapter = images if isinstance(images, (list, tuple)) and len(adapters) > 1 else [images]
        if len(per_adapter) != len(adapters):
            raise ValueError(
                f"ip_adapter_image has {len(per_adapter)} entries for {len(adapters)} IP-Adapters: give one entry "
                "(an image, a list of images, or a list with a list per prompt) per adapter"
            )
        cond, uncond = [], []
        for adapter, entry in zip(adapters, per_adapter):
            per_prompt = isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], (list, tuple))
            groups = (
                [list(g) for g in entry] if per_prompt else [entry if isinstance(entry, (list, tuple)) else [entry]]
            )
            counts = {len(g) for g in groups}
            if len(counts) != 1:
                raise ValueError(f"every prompt needs the same number of images for {adapter.name}; got {counts}")
            flat = [image for group in groups for image in group]
            c, u = self.encode_image(flat, adapter.uses_hidden_states, per_image=per_image)
            cond.append(c.reshape(len(groups), -1, *c.shape[1:]))
            uncond.append(u.reshape(len(groups), -1, *u.shape[1:]))
        return cond, uncond

    def call_inputs(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: Sequence[torch.Tensor] | None,
        ip_adapter_masks: Sequence[torch.Tensor | None] | None,
        *,
        count: int,
        num_images_per_prompt: int,
        guided: bool,
        height: int,
        width: int,
        per_image: bool = False,
    ) -> ImagePrompts:
        """Check and encode one call's image prompts; rows follow the output images (prompt-major). ``per_image``
        (the pipeline's reproducible mode): each image through the encoder, and each output image's embeddings
        through the projection, alone, so an output image's tokens are the same bits alone or in any batch."""
        total = count * num_images_per_prompt
        cond, uncond = self._embeds_per_adapter(ip_adapter_image, ip_adapter_image_embeds, guided, per_image=per_image)

        def per_output(tensor: torch.Tensor, index: int) -> torch.Tensor:
            rows = tensor.shape[0]
            if rows == total:
                return tensor
            if rows == count:
                return tensor.repeat_interleave(num_images_per_prompt, dim=0)
            if rows == 1:
                return tensor.expand(total, *tensor.shape[1:])
            raise ValueError(
                f"image prompts of IP-Adapter {index} have {rows} rows; give 1 (for every image), one per prompt "
                f"({count}) or one per generated image ({total})"
            )

        cond = [per_output(c, i) for i, c in enumerate(cond)]
        uncond = [per_output(u, i) for i, u in enumerate(uncond)] if uncond is not None else None
        masks = None
        if ip_adapter_masks is not None:
            masks = list(ip_adapter_masks)
            if len(masks) != len(self.adapters):
                raise ValueError(f"{len(masks)} ip_adapter_masks for {len(self.adapters)} IP-Adapters: one each")
            for i, (mask, c) in enumerate(zip(masks, cond)):
                if mask is None:
                    continue
                if mask.ndim != 4 or mask.shape[0] != 1 or mask.shape[1] != c.shape[1]:
                    raise ValueError(
                        f"ip_adapter_masks[{i}] has shape {tuple(mask.shape)}; it must be (1, {c.shape[1]}, height, "
                        "width): one mask per image of that adapter"
                    )
                if tuple(mask.shape[2:]) != (height, width):
                    raise ValueError(
                        f"ip_adapter_masks[{i}] is {mask.shape[2]}x{mask.shape[3]} but the images are "
                        f"{height}x{width}: resize the masks to the image size"
                    )
        with torch.no_grad():
            cond_tokens = project_image_embeds(self.adapters, cond, per_row=per_image)
            uncond_tokens = (
                project_image_embeds(self.adapters, uncond, per_row=per_image) if uncond is not None else None
            )
        return ImagePrompts(cond_tokens, uncond_tokens, masks)


def check_encoder(encoder: nn.Module, adapters: Sequence[IPAdapterWeights]) -> None:
    """The encoder's widths must be those each adapter's projection reads (a Plus adapter reads hidden states)."""
    config = encoder.config
    for adapter in adapters:
        width = config.hidden_size if adapter.uses_hidden_states else getattr(config, "projection_dim", None)
        reads = _projection_input(adapter.projection)
        if width != reads:
            source = (
                "hidden states (hidden_size)" if adapter.uses_hidden_states else "image embeddings (projection_dim)"
            )
            raise ValueError(
                f"{adapter.name} ({adapter.kind}) reads {reads}-wide {source}, but the image encoder gives {width}: "
                "a Plus or full-face adapter needs the image encoder it was trained with (ViT-H for the SD 1.5 "
                "releases); load that one with image_encoder_folder="
            )


def _projection_input(projection: nn.Module) -> int:
    first = getattr(projection, "proj_in", None)
    if first is None:
        first = projection.proj[0] if isinstance(projection.proj, nn.Sequential) else projection.proj
    return int(first.weight.shape[1])


def _default_processor(encoder: nn.Module) -> Any:
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)
