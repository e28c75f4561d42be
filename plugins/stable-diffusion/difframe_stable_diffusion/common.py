"""What the Stable Diffusion pipelines share: prompt encoding with classifier-free guidance, per-image noise from
per-image seeds, chunked batches, the denoising loop (callback, interrupt), decoding and output types.

Loading, saving, placement and the progress bar come from difframe's DiffusionPipeline; the subclasses add only
how a chunk's starting latents are made (and, for inpainting, what happens after each step).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from difframe.attention import build_processor, resolve_backend_name, set_attention
from difframe.pipeline import Component, DiffusionPipeline
from difframe.prepacking import prepack_convolutions, prepacking_available

from .batching import (
    ImageJob,
    as_prompt_list,
    available_memory,
    chunk_ranges,
    chunk_size_for,
    parse_bytes,
    plan_jobs,
    plan_seeds,
)
from .concurrency import ActiveCalls, CallGate, CallState
from .conditioning import ConditionerMixin
from .guided_steps import GuidanceMixin, guided_prediction
from .image_prompts import ImagePromptsMixin
from .metadata import GenerationParameters, png_info
from .numerics import FiniteWatch, check_decoded
from .request import (
    check_device,
    check_guidance,
    check_memory,
    check_scaling_factor,
    minimum_image_bytes,
    read_geometry,
)
from .request import (
    check_size as check_size_for,
)
from .saving import write_png
from .single_file import SingleFileMixin

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
AUTO_BUDGET_FRACTION = 0.8  # of the free memory, when no budget is set


def rescale_noise_cfg(guided: torch.Tensor, conditional: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, sec. 3.4): give the guided prediction the per-image standard deviation of
    the conditional one, blended with the plain guided prediction by ``guidance_rescale``."""
    dims = list(range(1, conditional.ndim))
    ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guidance_rescale * (guided * ratio) + (1 - guidance_rescale) * guided


INTERRUPTED_KEY = "Interrupted"  # in an unfinished image's parameters: "after 3 of 10 steps"


@dataclass
class StableDiffusionOutput:
    """Images (a list of PIL images, an (N, H, W, 3) float array, an (N, 3, H, W) tensor or latents), each image's
    seed and generation parameters, and whether a callback interrupted the run.

    After ``pipe.interrupt()`` the images of the chunk that was cut short are still returned, partly denoised:
    ``finished[i]`` is False for them, and their parameters record the steps that ran ("Steps: 3", "Interrupted:
    after 3 of 10 steps"). Images of later chunks are not made.
    """

    images: Any
    seeds: list[int | None]
    parameters: list[GenerationParameters]
    interrupted: bool = False
    nsfw_content_detected: None = None  # no safety checker; kept for code written against the reference
    finished: list[bool] = field(default_factory=list)

    def __iter__(self):
        return iter((self.images, self.nsfw_content_detected))

    def save(self, folder: str | os.PathLike[str], prefix: str = "", *, include_unfinished: bool = False) -> list[Path]:
        """Save PIL images as PNGs with their parameters embedded: ``<prefix><index>-<seed>.png`` (``_1``, ``_2``
        ... where the name is taken; nothing is overwritten). Each file is written under a temporary name and
        renamed when complete. Images cut short by ``interrupt()`` are saved only with ``include_unfinished``."""
        if not isinstance(self.images, list):
            raise TypeError("only output_type='pil' images can be saved as PNG")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        finished = self.finished or [True] * len(self.images)
        skipped = 0
        paths = []
        for index, (image, params, done) in enumerate(zip(self.images, self.parameters, finished)):
            if not done and not include_unfinished:
                skipped += 1
                continue
            stem = f"{prefix}{index:05d}" + (f"-{params.seed}" if params.seed is not None else "")
            paths.append(write_png(image, folder, stem + ("" if done else "-unfinished"), png_info(params)))
        if skipped:
            warnings.warn(
                f"{skipped} image(s) cut short by interrupt() were not saved; pass include_unfinished=True to save "
                "them (their parameters say how many steps ran)",
                UserWarning,
                stacklevel=2,
            )
        return paths


@dataclass
class Chunk:
    """The images of one chunk: their jobs, noise generators and (guidance-ordered) text embeddings."""

    start: int
    stop: int
    jobs: list[ImageJob]
    generators: list[torch.Generator] | torch.Generator | None
    embeds: torch.Tensor  # [uncond..., cond...] with guidance, else cond
    guided: bool
    latents: torch.Tensor | None = None  # user-given starting latents for these images
    extras: dict[str, Any] = field(default_factory=dict)
    sampler: Any = None  # this call's own copy of the pipeline's sampler
    call: CallState | None = None
    watch: FiniteWatch | None = None
    steps_run: int = 0  # loop iterations done (a sampler of order 2 takes two per step)
    steps_planned: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


class StableDiffusionBase(GuidanceMixin, ConditionerMixin, ImagePromptsMixin, SingleFileMixin, DiffusionPipeline):
    """Shared base of the Stable Diffusion pipelines (components named as in the shared model layout)."""

    layout_name: ClassVar[tuple[str, str] | None] = ("diffusers", "StableDiffusionPipeline")
    vae = Component("model", description="KL autoencoder: images <-> latents")
    text_encoder = Component("model", description="CLIP text encoder")
    tokenizer = Component("model", description="CLIP tokenizer")
    unet = Component("model", description="the denoiser")
    scheduler = Component("scheduler", description="the sampler")

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        self.model_name: str | None = None
        self.memory_budget: int | None = None  # None: automatic, from free memory
        self._offload_device: torch.device | None = None
        self._active_module: torch.nn.Module | None = None
        self.timings: dict[str, float] | None = None  # set to {} to measure time inside the model calls
        self._gate = CallGate()  # calls shared, changes to the models exclusive (see concurrency.py)
        self._calls = ActiveCalls()
        self._offload_lock = threading.RLock()  # offloading moves shared modules between devices: one call at a time
        self._timings_lock = threading.Lock()

    # --- building -----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, reference: str | os.PathLike[str], **options: Any) -> Any:
        """As DiffusionPipeline.from_pretrained; a sampler or attention name is checked before any weight loads."""
        from difframe.framework import Framework

        framework = options.get("framework") or Framework()
        options["framework"] = framework
        if isinstance(options.get("torch_dtype"), str):  # dtype="float16" as well as dtype=torch.float16
            name = options["torch_dtype"].removeprefix("torch.")
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(f"unknown dtype {options['torch_dtype']!r}; use float32, float16 or bfloat16")
            options["torch_dtype"] = getattr(torch, name)
        if isinstance(options.get("torch_dtype"), torch.dtype) and options["torch_dtype"] not in WEIGHT_DTYPES:
            raise ValueError(
                f"dtype {str(options['torch_dtype']).removeprefix('torch.')} cannot run these pipelines: they compute "
                "in float32, float16 or bfloat16 (integer and float8 weights need a quantization backend)"
            )
        _budget_bytes(options.get("memory_budget"))  # a malformed budget: before any weight loads
        if options.get("prepacked_convolutions", False) not in (True, False, "auto"):
            raise ValueError(
                f"prepacked_convolutions must be True, False or 'auto', got {options['prepacked_convolutions']!r}"
            )
        if isinstance(options.get("scheduler"), str):
            framework.get("scheduler", options["scheduler"])
        if options.get("attention") is not None and isinstance(options["attention"], str):
            _check_attention_name(framework, options["attention"])
        if options.get("cpu_offload") not in (None, False, True):
            check_device(options["cpu_offload"])
        local = Path(os.path.expanduser(os.fspath(reference)))
        geometry = read_geometry(local) if local.is_dir() else None
        if geometry is not None and "vae" not in options:
            check_scaling_factor(geometry.scaling_factor, os.fspath(local / "vae" / "config.json"))
        pipeline = super().from_pretrained(reference, **options)
        pipeline.model_name = _model_name(reference)
        pipeline._update_legacy_scheduler_config()
        return pipeline

    def _update_legacy_scheduler_config(self) -> None:
        """Old SD scheduler configs (steps_offset 0, clip_sample true) are corrected on load, as the reference
        library's pipeline constructor does, so a folder gives the same images in both."""
        scheduler = self.scheduler
        fixes: dict[str, Any] = {}
        if scheduler.config.get("steps_offset", 1) != 1:
            fixes["steps_offset"] = 1
        if scheduler.config.get("clip_sample", False) is True:
            fixes["clip_sample"] = False
        if fixes and hasattr(type(scheduler), "from_config"):
            self.__dict__["scheduler"] = type(scheduler).from_config({**scheduler.config, **fixes})

    def apply_options(
        self,
        attention: Any = None,
        memory_budget: int | str | None = None,
        attention_slicing: bool | int | str = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        cpu_offload: bool | str | torch.device = False,
        prepacked_convolutions: bool | Literal["auto"] = False,
        **rest: Any,
    ) -> None:
        """Build options: ``attention`` ("auto", "sdpa", "sliced", a plugin's backend), ``memory_budget`` (bytes or
        "8GB"; default automatic), ``attention_slicing``, ``vae_slicing``, ``vae_tiling``, ``cpu_offload``,
        ``prepacked_convolutions`` (True, False, or "auto": when this torch build supports them)."""
        super().apply_options(**rest)
        if attention is not None:
            self.set_attention(attention)
        if attention_slicing:
            self.enable_attention_slicing("auto" if attention_slicing is True else attention_slicing)
        if vae_slicing:
            self.enable_vae_slicing()
        if vae_tiling:
            self.enable_vae_tiling()
        if cpu_offload:
            self.enable_model_cpu_offload(None if cpu_offload is True else cpu_offload)
        if prepacked_convolutions not in (True, False, "auto"):
            raise ValueError(f"prepacked_convolutions must be True, False or 'auto', got {prepacked_convolutions!r}")
        if prepacked_convolutions is True or (prepacked_convolutions == "auto" and prepacking_available()):
            self.enable_prepacked_convolutions()
        self.set_memory_budget(memory_budget)

    # --- memory and speed options -------------------------------------------------------------------------------
    def set_attention(self, name: Any = "auto", **options: Any) -> None:
        """Attention backend of the UNet and VAE: a registered name ("auto" picks the best available) or object.
        Waits for the calls in progress; calls started afterwards use the new backend."""
        framework = self._framework()
        if isinstance(name, str):
            _check_attention_name(framework, name)
            processor = build_processor(name, framework=framework, device=self.execution_device.type, **options)
        else:
            processor = name
        with self._gate.exclusive("set_attention"):
            for model in (self.unet, self.vae):
                if isinstance(model, torch.nn.Module):
                    with contextlib.suppress(ValueError):  # a model without attention modules
                        set_attention(model, processor)

    def enable_attention_slicing(self, slice_size: int | str = "auto") -> None:
        """Attention a few heads at a time: the score matrices of one slice in memory instead of all heads."""
        self.set_attention("sliced", slice_size=slice_size)

    def disable_attention_slicing(self) -> None:
        self.set_attention("auto")

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time: the VAE's peak memory of one image, same results."""
        with self._gate.exclusive("enable_vae_slicing"):
            self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        with self._gate.exclusive("disable_vae_slicing"):
            self.vae.disable_slicing()

    def enable_vae_tiling(self, **options: Any) -> None:
        """Decode and encode large images in overlapping tiles: memory bounded by the tile size."""
        with self._gate.exclusive("enable_vae_tiling"):
            self.vae.enable_tiling(**options)

    def disable_vae_tiling(self) -> None:
        with self._gate.exclusive("disable_vae_tiling"):
            self.vae.disable_tiling()

    def enable_prepacked_convolutions(self) -> None:
        """CPU inference in float32 reuses the UNet's and VAE's convolution weights reordered once for oneDNN: a
        faster step where latents are small (the built-in model's are 8x8), one more copy of those weights in memory.
        """
        with self._gate.exclusive("enable_prepacked_convolutions"):
            for model in (self.unet, self.vae):  # any torch module: a plugin's model need not be a ModelMixin
                prepack_convolutions(model, True)

    def disable_prepacked_convolutions(self) -> None:
        with self._gate.exclusive("disable_prepacked_convolutions"):
            for model in (self.unet, self.vae):
                prepack_convolutions(model, False)

    def enable_model_cpu_offload(self, device: str | torch.device | None = None) -> None:
        """Keep every model in CPU memory and move each to ``device`` only while it runs (text encoder, then UNet,
        then VAE). Accelerator memory then holds the largest model (the UNet) rather than all of them, at the
        cost of one transfer per model per call. Default device: CUDA if available, else the current device."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else self.device
        device = check_device(device)
        with self._gate.exclusive("enable_model_cpu_offload"):
            self._offload_device = device
            self._active_module = None
            for module in self._modules():
                module.to("cpu")

    def disable_model_cpu_offload(self) -> None:
        with self._gate.exclusive("disable_model_cpu_offload"):
            device = self._offload_device
            self._offload_device = None
            self._active_module = None
            if device is not None:
                self.to(device)

    def to(self, device: Any = None, dtype: Any = None) -> Any:
        """Move or cast every model; waits for the calls in progress."""
        if isinstance(device, (str, torch.device)):
            device = check_device(device)
        with self._gate.exclusive("to"):
            return super().to(device, dtype)

    def set_memory_budget(self, budget: int | str | None) -> None:
        """Bytes that one chunk of a batch may use ("8GB"); None: automatic, from the device's free memory;
        "unlimited": never split a batch."""
        self.memory_budget = _budget_bytes(budget)

    def set_scheduler(self, name: str, /, **overrides: Any) -> Any:
        """Swap the sampler in one line: ``pipe.set_scheduler("euler_a")``. The model's noise schedule is kept; the
        options the current sampler's name implied (Karras sigmas, solver order, ...) are not carried over.

        Every call samples with its own copy of the sampler taken when it starts, so calls in progress (in other
        threads, or this one's callback) finish with the sampler they started with; later calls use the new one."""
        framework = self._framework()
        config = dict(self.scheduler.config)
        current = self.scheduler_name
        try:
            implied = framework.get("scheduler", current).spec.options if current else {}
        except Exception:
            implied = {}
        base = {k: v for k, v in config.items() if k not in implied}
        self.__dict__["scheduler"] = framework.scheduler(name, base, **overrides)
        return self.scheduler

    def interrupt(self) -> None:
        """Stop denoising after the current step; what is done so far is decoded and returned, marked unfinished.

        From a step callback it stops that call only; from elsewhere (another thread) it stops every call in
        progress."""
        current = self._calls.current()
        for call in [current] if current is not None else self._calls.all():
            call.interrupted = True

    @property
    def execution_device(self) -> torch.device:
        return self._offload_device if self._offload_device is not None else self.device

    def _framework(self) -> Any:
        if self.framework is None:
            from difframe.framework import Framework

            self.framework = Framework()
        return self.framework

    # --- running models (offload and timing in one place) ------------------------------------------------------
    def _activate(self, module: Any) -> None:
        if self._offload_device is None or not isinstance(module, torch.nn.Module) or module is self._active_module:
            return
        if self._active_module is not None:
            self._active_module.to("cpu")
        module.to(self._offload_device)
        self._active_module = module

    def _release(self) -> None:
        if self._offload_device is not None and self._active_module is not None:
            self._active_module.to("cpu")
            self._active_module = None

    def _run(self, label: str, module: Any, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._activate(module)
        timings = self.timings
        if timings is None:
            return function(*args, **kwargs)
        begin = time.perf_counter()
        result = function(*args, **kwargs)
        with self._timings_lock:
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - begin
        return result

    # --- sizes ----------------------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        factor = getattr(self.vae, "scale_factor", None)
        if isinstance(factor, int):
            return factor
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE factor times the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** int(getattr(self.unet, "num_upsamplers", 0))

    def default_size(self) -> int:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return int(size) * self.vae_scale_factor

    def check_size(self, height: int, width: int) -> None:
        multiple = self.size_multiple
        why = f"the VAE's factor {self.vae_scale_factor}"
        if multiple != self.vae_scale_factor:
            why += f" times the UNet's downsampling {multiple // self.vae_scale_factor}"
        check_size_for(height, width, multiple, why)

    def check_memory(self, height: int, width: int, total: int = 1) -> None:
        """Refuse up front a size whose image alone cannot fit in the device's free memory, or a batch whose
        images (all held until the call returns) cannot."""
        itemsize = torch.empty((), dtype=self.unet.dtype).element_size()
        channels = self.unet.config.block_out_channels[0]
        needed = minimum_image_bytes(height, width, self.vae_scale_factor, channels, itemsize)
        free = available_memory(self.execution_device)
        check_memory(needed, free, height, width, self.execution_device)
        check_memory(total * height * width * 3 * 4, free, height, width, self.execution_device, images=total)

    def estimate_image_bytes(self, height: int, width: int, guided: bool) -> int:
        """A rough peak working memory per image (activations, not weights), for splitting batches into chunks."""
        itemsize = torch.empty((), dtype=self.unet.dtype).element_size()
        tokens = (height // self.vae_scale_factor) * (width // self.vae_scale_factor)
        channels = self.unet.config.block_out_channels[0]
        unet = (2 if guided else 1) * tokens * channels * itemsize * 40
        vae_channels = self.vae.config.block_out_channels[0]
        vae = 0 if getattr(self.vae, "use_slicing", False) else height * width * vae_channels * itemsize * 6
        return int(max(unet, vae))

    def _chunk_size(self, total: int, height: int, width: int, guided: bool, budget: Any) -> int:
        budget_bytes = self.memory_budget if budget is None else _budget_bytes(budget)  # a call's budget: this call
        if budget_bytes == -1:
            return total
        if budget_bytes is None:
            free = available_memory(self.execution_device)
            budget_bytes = None if free is None else int(free * AUTO_BUDGET_FRACTION)
        return chunk_size_for(total, self.estimate_image_bytes(height, width, guided), budget_bytes)

    # --- prompts --------------------------------------------------------------------------------------------------
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

    def _prompt_embeddings(
        self,
        prompts: list[str] | None,
        negatives: list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        guided: bool,
        clip_skip: int | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per prompt: the conditional embedding and, with guidance, the unconditional one (same length).

        Each prompt is encoded to the length its own text (and negative prompt) needs, never to a batch's longest,
        so its image does not depend on the other prompts of the batch.
        """
        device, dtype = self.execution_device, self.text_encoder.dtype
        if prompt_embeds is not None:
            cond = list(prompt_embeds.to(device=device, dtype=dtype))
            if not guided:
                return cond, None
            if negative_prompt_embeds is not None:
                return cond, list(negative_prompt_embeds.to(device=device, dtype=dtype))
            negatives = negatives or [""] * len(cond)
            uncond = self._encode_grouped(negatives, [c.shape[0] // 77 or 1 for c in cond], clip_skip)
            return cond, uncond
        chunks = self.token_chunks(prompts)
        if guided and negative_prompt_embeds is None:
            negatives = negatives or [""] * len(prompts)
            chunks = [max(a, b) for a, b in zip(chunks, self.token_chunks(negatives))]
        cond = self._encode_grouped(prompts, chunks, clip_skip)
        if not guided:
            return cond, None
        if negative_prompt_embeds is not None:
            return cond, list(negative_prompt_embeds.to(device=device, dtype=dtype))
        return cond, self._encode_grouped(negatives, chunks, clip_skip)

    def _encode_grouped(self, texts: list[str], chunks: list[int], clip_skip: int | None) -> list[torch.Tensor]:
        """Encode texts in one batch per chunk count, each distinct (text, count) once."""
        result: list[torch.Tensor | None] = [None] * len(texts)
        for count in sorted(set(chunks)):
            wanted = sorted({texts[i] for i in range(len(texts)) if chunks[i] == count})
            encoded = self.encode_prompt(wanted, clip_skip, chunks=count if self._conditioner() else None)
            for i in range(len(texts)):
                if chunks[i] == count:
                    result[i] = encoded[wanted.index(texts[i])]
        return result  # type: ignore[return-value]

    # --- checks shared by every pipeline ----------------------------------------------------------------------
    def _check_common(
        self,
        prompt: Any,
        negative_prompt: Any,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        num_inference_steps: Any,
        guidance_scale: Any,
        guidance_rescale: Any,
        num_images_per_prompt: Any,
        output_type: str,
        callback_on_step_end: Any,
        clip_skip: Any,
    ) -> tuple[list[str] | None, list[str] | None, int]:
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass prompt or prompt_embeds, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass a prompt (a string or a list of strings) or prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")
        prompts = as_prompt_list(prompt, "prompt")
        negatives = as_prompt_list(negative_prompt, "negative_prompt")
        if prompt_embeds is not None and prompt_embeds.ndim != 3:
            raise ValueError(f"prompt_embeds must be (batch, tokens, dim), got shape {tuple(prompt_embeds.shape)}")
        width = getattr(getattr(self.unet, "config", None), "cross_attention_dim", None)
        for name, tensor in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if tensor is not None and isinstance(width, int) and tensor.shape[-1] != width:
                raise ValueError(
                    f"{name} has width {tensor.shape[-1]}; this UNet's cross-attention takes {width} (the text "
                    "encoder's hidden size)"
                )
        count = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        if negatives is not None and len(negatives) != count:
            if len(negatives) == 1 and isinstance(negative_prompt, str):
                negatives = negatives * count
            else:
                raise ValueError(
                    f"negative_prompt has {len(negatives)} entries but there are {count} prompts; pass one negative "
                    "prompt per prompt, or a single string for all"
                )
        if negative_prompt_embeds is not None:
            expected = prompt_embeds.shape if prompt_embeds is not None else None
            if negative_prompt_embeds.shape[0] != count or (expected and negative_prompt_embeds.shape != expected):
                raise ValueError(
                    f"negative_prompt_embeds has shape {tuple(negative_prompt_embeds.shape)}; it must match the "
                    f"prompts ({count}) and prompt_embeds"
                )
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        check_guidance(guidance_scale, negative_prompt is not None or negative_prompt_embeds is not None)
        if not isinstance(guidance_rescale, (int, float)) or not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise ValueError(f"num_images_per_prompt must be an integer, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError("callback_on_step_end must be callable: f(pipe, step, timestep, tensors) -> dict")
        if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0):
            raise ValueError(f"clip_skip must be a non-negative integer, got {clip_skip!r}")
        layers = getattr(getattr(self.text_encoder, "config", None), "num_hidden_layers", None)
        if clip_skip and isinstance(layers, int) and clip_skip >= layers:
            raise ValueError(f"clip_skip {clip_skip} leaves no layer: the text encoder has {layers} layers")
        for name, tensor in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} holds NaN or infinite values")
        return prompts, negatives, count

    def _check_cross_attention_kwargs(self, kwargs: Any) -> None:
        """They go to attention add-ons (IP-Adapter, ...); without one they would be dropped without a word."""
        if kwargs is None:
            return
        if not isinstance(kwargs, dict):
            raise TypeError(f"cross_attention_kwargs must be a dict, got {type(kwargs).__name__}")
        backend = type(getattr(self, "backend", None)).__name__
        eager = backend in ("NoneType", "EagerBackend", "TorchCompileBackend")  # others decide for themselves
        unet = self.unet
        has_addon = bool(kwargs) and any(getattr(m, "addon", None) for m in getattr(unet, "modules", list)())
        if kwargs and eager and isinstance(unet, torch.nn.Module) and not has_addon:
            raise ValueError(
                f"cross_attention_kwargs {sorted(kwargs)} would be ignored: they are passed to attention add-ons "
                "(IP-Adapter, ...) and this UNet has none. A LoRA's strength is set with pipe.set_adapters."
            )

    def _plan_noise(
        self,
        total: int,
        seed: Any,
        seeds: Sequence[int] | None,
        generator: Any,
        latents_given: bool = False,
    ) -> tuple[list[int | None], list[torch.Generator] | torch.Generator | None]:
        """Per-image seeds, or the caller's generator(s)."""
        if generator is not None:
            if seed is not None or seeds is not None:
                raise ValueError("pass seed/seeds or generator, not both")
            items = generator if isinstance(generator, list) else [generator]
            if not all(isinstance(g, torch.Generator) for g in items):
                raise TypeError("generator must be a torch.Generator or a list of them; for a number, pass seed=")
            if isinstance(generator, list):
                if len(generator) != total:
                    raise ValueError(
                        f"got {len(generator)} generators for {total} images (prompts x num_images_per_prompt)"
                    )
                return [None] * total, list(generator)
            return [None] * total, generator
        if latents_given and seed is None and seeds is None:
            return [None] * total, None  # the caller's latents are the noise: no seed reproduces them
        planned = plan_seeds(total, seed, seeds)
        return list(planned), None

    @staticmethod
    def _generators(chunk_seeds: list[int | None], given: Any, start: int, stop: int) -> Any:
        if given is None:
            if any(s is None for s in chunk_seeds):
                return None
            return [torch.Generator(device="cpu").manual_seed(int(s)) for s in chunk_seeds]
        if isinstance(given, list):
            return given[start:stop]
        return given  # one generator for the whole batch (images then depend on their position)

    @staticmethod
    def randn(shape: Sequence[int], generators: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Noise of ``shape``; with a list of generators, image i's noise comes from generator i alone."""
        if isinstance(generators, list):
            parts = [
                torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators[: shape[0]]
            ]
            return torch.cat(parts).to(device)
        rand_device = generators.device if generators is not None else torch.device("cpu")
        return torch.randn(tuple(shape), generator=generators, device=rand_device, dtype=dtype).to(device)

    # --- the loop ---------------------------------------------------------------------------------------------
    @staticmethod
    def _step_accepts_generator(sampler: Any) -> bool:
        try:
            return "generator" in inspect.signature(sampler.step).parameters
        except (TypeError, ValueError):
            return False

    def denoise(
        self,
        chunk: Chunk,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        guidance_scale: float,
        guidance_rescale: float,
        cross_attention_kwargs: dict[str, Any] | None,
        callback: Callable[..., Any] | None,
        progress: Any,
        model_extra: torch.Tensor | None = None,
        after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The sampling loop over ``timesteps`` for one chunk; returns the final latents. Stops with a
        NonFiniteError naming the step and stage where NaN or infinity first appears."""
        sampler = self.sampler_of(chunk)
        step_kwargs = {"generator": chunk.generators} if self._step_accepts_generator(sampler) else {}
        embeds = chunk.embeds
        watch = chunk.watch
        chunk.steps_planned = len(timesteps)
        if watch is not None:
            watch.steps = len(timesteps)
            watch.record(-1, None, "starting latents", latents, chunk.size)
        chunk_kwargs = self.chunk_attention_kwargs(chunk, cross_attention_kwargs)  # its rows of image prompts
        self._activate(self.unet)
        guider = self.guider.begin(len(timesteps))
        self._hook_set().reset()  # each chunk starts with empty hook state
        for i, t in enumerate(timesteps):
            if chunk.call is not None and chunk.call.interrupted:
                break
            raw, noise_pred = guided_prediction(
                guider,
                index=i,
                total=len(timesteps),
                timestep=t,
                latents=latents,
                embeds=embeds,
                guided=chunk.guided,
                prepare=lambda batch, t=t: self.model_input(sampler, batch, t, model_extra, chunk.size),
                run_denoiser=lambda batch, rows, t=t: self._run(
                    "unet", self.unet, self.unet, batch, t, rows, cross_attention_kwargs=chunk_kwargs
                ),
                guidance_scale=guidance_scale,
                guidance_rescale=guidance_rescale,
            )
            if watch is not None:
                watch.record(i, t, "UNet output", raw, chunk.size)
                if chunk.guided:
                    watch.record(i, t, "guidance", noise_pred, chunk.size)
            latents = sampler.step(noise_pred, t, latents, **step_kwargs).prev_sample
            if watch is not None:
                watch.record(i, t, "sampler step", latents, chunk.size)
            if after_step is not None:
                latents = after_step(i, t, latents)
                if watch is not None:
                    watch.record(i, t, "inpainting blend", latents, chunk.size)
            if callback is not None:
                tensors = {"latents": latents, "prompt_embeds": embeds, "images": (chunk.start, chunk.stop)}
                returned = callback(self, i, t, tensors)
                if returned is not None and not isinstance(returned, dict):
                    raise TypeError(
                        f"callback_on_step_end must return a dict such as {{'latents': ...}} or None, got "
                        f"{type(returned).__name__}"
                    )
                if returned and "latents" in returned and returned["latents"].shape != latents.shape:
                    raise ValueError(
                        f"callback_on_step_end returned latents of shape {tuple(returned['latents'].shape)}; they "
                        f"must keep the shape {tuple(latents.shape)}"
                    )
                if returned:
                    latents = returned.get("latents", latents)
                    embeds = returned.get("prompt_embeds", embeds)
                    if watch is not None:
                        watch.record(i, t, "callback", latents, chunk.size)
            chunk.steps_run = i + 1
            if watch is not None:
                watch.end_step(i)
            progress.update()
        if watch is not None:
            watch.check()
        return latents

    @staticmethod
    def model_input(sampler: Any, batch: torch.Tensor, t: Any, extra: torch.Tensor | None, rows: int) -> torch.Tensor:
        """The denoiser's input: the stacked latents scaled for the sampler, then the extra channels (inpainting)."""
        batch = sampler.scale_model_input(batch, t)
        if extra is None:
            return batch
        return torch.cat([batch, extra[:rows].repeat(batch.shape[0] // rows, 1, 1, 1)], dim=1)

    def sampler_of(self, chunk: Chunk) -> Any:
        """The sampler a chunk runs with: its call's own copy (the pipeline's, for a chunk made by hand)."""
        return chunk.sampler if chunk.sampler is not None else self.scheduler

    def set_timesteps(self, num_inference_steps: int, sampler: Any = None) -> torch.Tensor:
        """Set ``sampler``'s schedule (a call's own copy; the pipeline's sampler when None) and return it."""
        sampler = self.scheduler if sampler is None else sampler
        sampler.set_timesteps(num_inference_steps, device=self.execution_device)
        return sampler.timesteps

    # --- decoding -------------------------------------------------------------------------------------------------
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (N, 3, H, W) in [0, 1] (NaN kept: the caller checks)."""
        image = self._run("vae", self.vae, self.vae.decode, latents / self.vae.config.scaling_factor)
        return (image / 2 + 0.5).clamp(0, 1)

    def check_vae(self) -> None:
        check_scaling_factor(getattr(self.vae.config, "scaling_factor", None), "the pipeline's VAE")

    def encode_images(self, images: torch.Tensor, generators: Any) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> scaled latents, each image sampled with its own generator."""
        images = images.to(device=self.execution_device, dtype=self.vae.dtype)
        if isinstance(generators, list):
            parts = [
                self._run("vae", self.vae, self.vae.encode, images[i : i + 1]).sample(generators[i])
                for i in range(images.shape[0])
            ]
            latents = torch.cat(parts)
        else:
            latents = self._run("vae", self.vae, self.vae.encode, images).sample(generators)
        return self.vae.config.scaling_factor * latents

    @staticmethod
    def to_output(images: torch.Tensor, output_type: str) -> Any:
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return array
        from PIL import Image

        return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]

    # --- the whole call ---------------------------------------------------------------------------------------
    def _generate(
        self,
        *,
        prompts: list[str] | None,
        negatives: list[str] | None,
        count: int,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_rescale: float,
        num_images_per_prompt: int,
        seed: Any,
        seeds: Any,
        generator: Any,
        latents: torch.Tensor | None,
        clip_skip: int | None,
        output_type: str,
        callback_on_step_end: Any,
        cross_attention_kwargs: dict[str, Any] | None,
        memory_budget: Any,
        strength: float | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> StableDiffusionOutput:
        total = count * num_images_per_prompt
        self.check_size(height, width)
        self.check_memory(height, width, total)  # before planning: a million images would not even be listed
        image_seeds, generators = self._plan_noise(total, seed, seeds, generator, latents is not None)
        jobs = plan_jobs(count, num_images_per_prompt, image_seeds)
        if latents is not None and (latents.ndim != 4 or latents.shape[0] != total):
            raise ValueError(f"latents must be ({total}, C, h, w): one per image; got {tuple(latents.shape)}")
        if latents is not None and not bool(torch.isfinite(latents).all()):
            raise ValueError("latents hold NaN or infinite values")
        guided = guidance_scale > 1.0
        self.check_chunk_inputs(height, width, total, latents)
        self.check_vae()
        self._check_cross_attention_kwargs(cross_attention_kwargs)
        chunk_size = self._chunk_size(total, height, width, guided, memory_budget)
        one_at_a_time = self._offload_lock if self._offload_device is not None else contextlib.nullcontext()
        with self._gate.shared(), one_at_a_time, self.hooked_call():
            call = CallState(sampler=_own_copy(self.scheduler))
            call.sampler.set_timesteps(num_inference_steps, device=self.execution_device)  # its errors: before work
            with self._calls.begin(call):
                return self._generate_locked(
                    call,
                    jobs=jobs,
                    image_seeds=image_seeds,
                    generators=generators,
                    chunk_size=chunk_size,
                    guided=guided,
                    prompts=prompts,
                    negatives=negatives,
                    prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_prompt_embeds,
                    height=height,
                    width=width,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    guidance_rescale=guidance_rescale,
                    latents=latents,
                    clip_skip=clip_skip,
                    output_type=output_type,
                    callback_on_step_end=callback_on_step_end,
                    cross_attention_kwargs=cross_attention_kwargs,
                    strength=strength,
                    inputs=inputs,
                )

    def _generate_locked(
        self,
        call: CallState,
        *,
        jobs: list[ImageJob],
        image_seeds: list[int | None],
        generators: Any,
        chunk_size: int,
        guided: bool,
        prompts: list[str] | None,
        negatives: list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_rescale: float,
        latents: torch.Tensor | None,
        clip_skip: int | None,
        output_type: str,
        callback_on_step_end: Any,
        cross_attention_kwargs: dict[str, Any] | None,
        strength: float | None,
        inputs: dict[str, Any] | None,
    ) -> StableDiffusionOutput:
        total = len(jobs)
        cond, uncond = self._prompt_embeddings(
            prompts, negatives, prompt_embeds, negative_prompt_embeds, guided, clip_skip
        )
        results, done, steps_done = [], 0, []
        lengths = [cond[job.prompt_index].shape[0] for job in jobs]
        ranges = split_where_changes(chunk_ranges(total, chunk_size), lengths)
        steps_per_chunk = self.steps_to_run(num_inference_steps, strength)
        sampler_name = self._sampler_name(call.sampler)
        context = {
            "seeds": image_seeds,
            "guidance_scale": float(guidance_scale),
            "dtype": str(self.unet.dtype).removeprefix("torch."),
            "sampler": sampler_name,
        }
        try:
            with self.progress_bar(total=steps_per_chunk * len(ranges)) as progress:
                for start, stop in ranges:
                    if call.interrupted:
                        break
                    chunk_jobs = jobs[start:stop]
                    index = [job.prompt_index for job in chunk_jobs]
                    rows = (
                        [cond[i] for i in index]
                        if not guided
                        else [uncond[i] for i in index] + [cond[i] for i in index]
                    )
                    embeds = torch.stack(rows)
                    chunk = Chunk(
                        start=start,
                        stop=stop,
                        jobs=chunk_jobs,
                        generators=self._generators(image_seeds[start:stop], generators, start, stop),
                        embeds=embeds,
                        guided=guided,
                        latents=None if latents is None else latents[start:stop],
                        extras=self.chunk_inputs(inputs or {}, chunk_jobs),
                        sampler=call.sampler,
                        call=call,
                        watch=FiniteWatch.for_device(self.execution_device, 0, start, **context),
                    )
                    out = self.run_chunk(
                        chunk,
                        height=height,
                        width=width,
                        num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale,
                        guidance_rescale=guidance_rescale,
                        cross_attention_kwargs=cross_attention_kwargs,
                        callback=callback_on_step_end,
                        progress=progress,
                        strength=strength,
                    )
                    if output_type != "latent":
                        out = self.decode_latents(out)
                        check_decoded(out, start, context)
                    results.append(out)
                    ran = steps_per_chunk
                    if chunk.steps_planned and chunk.steps_run < chunk.steps_planned:
                        order = max(1, round(chunk.steps_planned / max(steps_per_chunk, 1)))
                        ran = min(steps_per_chunk, math.ceil(chunk.steps_run / order))
                    steps_done += [ran] * chunk.size
                    done = stop
        finally:
            self._release()
        images = torch.cat(results) if results else torch.empty(0)
        finished = [ran == steps_per_chunk for ran in steps_done]
        prompted = self.image_prompt_metadata(cross_attention_kwargs)  # an image prompt is named in the PNG
        parameters = [
            GenerationParameters(
                prompt=prompts[job.prompt_index] if prompts else "",
                negative_prompt=(negatives[job.prompt_index] if negatives else "") if guided else "",
                steps=num_inference_steps if complete else ran,
                scheduler=sampler_name,
                guidance_scale=float(guidance_scale),
                seed=job.seed,
                width=width,
                height=height,
                model=self.model_name,
                clip_skip=clip_skip,
                guidance_rescale=float(guidance_rescale) if guided else 0.0,
                strength=strength,
                extra={
                    **prompted,
                    **self.conditioner_metadata(),
                    **({} if complete else {INTERRUPTED_KEY: f"after {ran} of {steps_per_chunk} steps"}),
                },
            )
            for job, ran, complete in zip(jobs[:done], steps_done, finished)
        ]
        output = images if output_type == "latent" else self.to_output(images, output_type)
        if output_type == "pil":
            for image, params in zip(output, parameters):
                image.info["parameters"] = params.to_text()
        return StableDiffusionOutput(
            images=output,
            seeds=list(image_seeds[:done]),
            parameters=parameters,
            interrupted=call.interrupted,
            finished=finished,
        )

    @property
    def scheduler_name(self) -> str | None:
        """The registered name of the current sampler (the most specific one whose class and options match)."""
        return self._sampler_name(self.scheduler)

    def _sampler_name(self, scheduler: Any) -> str | None:
        cached = getattr(scheduler, "_difframe_name", None)
        if cached is not None:
            return cached
        best, best_score = None, -1
        try:
            registrations = self._framework().registry.all("scheduler")
        except Exception:
            registrations = []
        for registration in registrations:
            module_name, _, attribute = registration.spec.factory.partition(":")
            if module_name != type(scheduler).__module__ or attribute != type(scheduler).__qualname__:
                continue
            options = registration.spec.options
            if all(scheduler.config.get(k) == v for k, v in options.items()) and len(options) > best_score:
                best, best_score = registration.name, len(options)
        return best or type(scheduler).__name__

    # --- what subclasses provide ----------------------------------------------------------------------------------
    def steps_to_run(self, num_inference_steps: int, strength: float | None) -> int:
        if strength is None:
            return num_inference_steps
        return min(int(num_inference_steps * strength), num_inference_steps)

    def strength_timesteps(self, num_inference_steps: int, strength: float, sampler: Any = None) -> torch.Tensor:
        """The last ``strength`` of the schedule: image-to-image starts from a partly noised image."""
        sampler = self.scheduler if sampler is None else sampler
        self.set_timesteps(num_inference_steps, sampler)
        run = self.steps_to_run(num_inference_steps, strength)
        start = max(num_inference_steps - run, 0) * sampler.order
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(start)
        return sampler.timesteps[start:]

    def chunk_inputs(self, inputs: dict[str, Any], jobs: list[ImageJob]) -> dict[str, Any]:
        """Per-image inputs of a chunk (init images, masks), picked from the call's inputs."""
        return {}

    def check_chunk_inputs(self, height: int, width: int, total: int, latents: torch.Tensor | None) -> None:
        self.check_size(height, width)

    def run_chunk(self, chunk: Chunk, **settings: Any) -> torch.Tensor:
        raise NotImplementedError


def _own_copy(sampler: Any) -> Any:
    """A call's own sampler: set_timesteps and step mutate a sampler, so concurrent calls must not share one."""
    try:
        return copy.deepcopy(sampler)
    except Exception as error:  # a plugin's sampler holding something that cannot be copied
        if hasattr(type(sampler), "from_config") and hasattr(sampler, "config"):
            return type(sampler).from_config(dict(sampler.config))
        raise TypeError(
            f"the sampler {type(sampler).__name__} cannot be copied for this call ({error}); give it a from_config "
            "classmethod or make it deep-copyable"
        ) from error


def _budget_bytes(budget: int | str | None) -> int | None:
    """Bytes; -1 for "unlimited"; None for automatic."""
    if isinstance(budget, str) and budget.strip().lower() in ("unlimited", "none", "inf"):
        return -1
    return parse_bytes(budget)


def split_where_changes(ranges: list[tuple[int, int]], keys: list[Any]) -> list[tuple[int, int]]:
    """Split ranges so that every range holds images with one key (here: the text embedding's length)."""
    result = []
    for start, stop in ranges:
        begin = start
        for i in range(start + 1, stop):
            if keys[i] != keys[i - 1]:
                result.append((begin, i))
                begin = i
        result.append((begin, stop))
    return result


def _check_attention_name(framework: Any, name: str) -> None:
    resolved = resolve_backend_name(framework, name)
    registration = framework.get("attention_processor", resolved)
    if registration.spec.role != "backend":
        raise ValueError(
            f"attention {name!r} is an add-on, not a backend; add it with pipe.unet.set_attention(...) after building"
        )
    reason = registration.unavailable_reason
    if reason is not None:
        raise ValueError(f"attention backend {resolved!r} cannot run on this machine: {reason}")


def _model_name(reference: str | os.PathLike[str]) -> str:
    path = Path(os.path.expanduser(os.fspath(reference)))
    if path.is_dir():
        return path.resolve().name
    return os.fspath(reference)
