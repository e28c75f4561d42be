"""The orchestration of a Stable Diffusion call, and nothing else: the request is checked (request.py), the
pipeline adds its own inputs, prompts are encoded (prompts.py), seeds planned (noise.py), images split into chunks
(batching.py); each chunk's starting latents come from the pipeline, run through the loop (loop.py), are decoded
(output.py) and become the output with each image's parameters. Runtime options live in runtime.py.

A pipeline subclass provides ``prepare_inputs`` (its inputs and default size) and ``initial_latents`` (a chunk's
starting latents and timesteps); everything else is shared.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from difframe.pipeline import Component, DiffusionPipeline

from .batching import ImageJob, SizesAndMemoryMixin, chunk_ranges, plan_jobs, split_where_changes
from .concurrency import CallState
from .conditioning import ConditionerMixin
from .guided_steps import GuidanceMixin
from .image_prompts import ImagePromptsMixin
from .images import default_size
from .loop import Chunk, Start, denoise
from .noise import check_latents, chunk_generators, plan_noise
from .numerics import FiniteWatch, check_decoded
from .output import AutoencoderMixin, StableDiffusionOutput, image_parameters, make_output
from .prompt_networks import lora_folder
from .prompts import PromptsMixin
from .request import GenerationRequest, check_call, check_device, check_scaling_factor, read_geometry
from .runtime import RuntimeMixin, budget_bytes, check_attention_name
from .single_file import SingleFileMixin

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class StableDiffusionBase(
    GuidanceMixin,
    ConditionerMixin,
    ImagePromptsMixin,
    SingleFileMixin,
    PromptsMixin,
    AutoencoderMixin,
    SizesAndMemoryMixin,
    RuntimeMixin,
    DiffusionPipeline,
):
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
        budget_bytes(options.get("memory_budget"))  # a malformed budget: before any weight loads
        if options.get("lora_dir") is not None:
            lora_folder(options["lora_dir"])  # a LoRA folder that is not one: before any weight loads
        if options.get("prepacked_convolutions", False) not in (True, False, "auto"):
            raise ValueError(
                f"prepacked_convolutions must be True, False or 'auto', got {options['prepacked_convolutions']!r}"
            )
        if options.get("reproducible", True) not in (True, False):
            raise ValueError(f"reproducible must be True or False, got {options['reproducible']!r}")
        if isinstance(options.get("scheduler"), str):
            framework.get("scheduler", options["scheduler"])
        if options.get("attention") is not None and isinstance(options["attention"], str):
            check_attention_name(framework, options["attention"])
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

    def interrupt(self) -> None:
        """Stop denoising after the current step; what is done so far is decoded and returned, marked unfinished.

        From a step callback it stops that call only; from elsewhere (another thread) it stops every call in
        progress."""
        current = self._calls.current()
        for call in [current] if current is not None else self._calls.all():
            call.interrupted = True

    # --- the whole call ---------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, **pipeline_inputs: Any) -> StableDiffusionOutput:
        """A pipeline's ``__call__``: the shared checks, the pipeline's own inputs, the image prompts, the run."""
        unet_config = getattr(self.unet, "config", None)
        text_config = getattr(self.text_encoder, "config", None)
        check_call(
            request, getattr(unet_config, "cross_attention_dim", None), getattr(text_config, "num_hidden_layers", None)
        )
        self.prepare_inputs(request, **pipeline_inputs)
        request.cross_attention_kwargs = self.image_prompt_kwargs(  # IP-Adapter (docs/ip-adapter.md)
            request.cross_attention_kwargs, request.ip_adapter_image, request.ip_adapter_image_embeds,
            request.ip_adapter_masks, count=request.count, num_images_per_prompt=request.num_images_per_prompt,
            guidance_scale=request.guidance_scale, height=request.height, width=request.width,
        )  # fmt: skip
        return self._generate(request)

    def _generate(self, request: GenerationRequest) -> StableDiffusionOutput:
        total, height, width = request.total, request.height, request.width
        self.check_size(height, width)
        self.check_memory(height, width, total)  # before planning: a million images would not even be listed
        image_seeds, generators = plan_noise(request)
        jobs = plan_jobs(request.count, request.num_images_per_prompt, image_seeds)
        check_latents(request.latents, total)
        self.check_chunk_inputs(request)
        self.check_vae()
        self._check_cross_attention_kwargs(request.cross_attention_kwargs)
        budget = self.memory_budget if request.memory_budget is None else budget_bytes(request.memory_budget)
        one_per_image = self.reproducible and not isinstance(generators, torch.Generator)  # one shared generator:
        chunk_size = 1 if one_per_image else self.chunk_size(total, height, width, request.guided, budget)  # in order
        one_at_a_time = self._offload_lock if self._offload_device is not None else contextlib.nullcontext()
        with self._gate.shared(), one_at_a_time, self.hooked_call():
            call = CallState(sampler=_own_copy(self.scheduler))
            call.sampler.set_timesteps(request.num_inference_steps, device=self.execution_device)  # errors first
            with self._calls.begin(call):
                return self._run_chunks(call, request, jobs, image_seeds, generators, chunk_size)

    def _run_chunks(
        self,
        call: CallState,
        request: GenerationRequest,
        jobs: list[ImageJob],
        image_seeds: list[int | None],
        generators: Any,
        chunk_size: int,
    ) -> StableDiffusionOutput:
        cond, uncond = self.prompt_embeddings(request)
        results, steps_done = [], []
        ranges = split_where_changes(chunk_ranges(len(jobs), chunk_size), [cond[j.prompt_index].shape[0] for j in jobs])
        steps = self.steps_to_run(request.num_inference_steps, request.strength)
        sampler_name = self._sampler_name(call.sampler)
        context = {
            "seeds": image_seeds,
            "guidance_scale": float(request.guidance_scale),
            "dtype": str(self.unet.dtype).removeprefix("torch."),
            "sampler": sampler_name,
        }
        try:
            with self.progress_bar(total=steps * len(ranges)) as progress:
                for start, stop in ranges:
                    if call.interrupted:
                        break
                    index = [job.prompt_index for job in jobs[start:stop]]
                    rows = (
                        [cond[i] for i in index]
                        if uncond is None
                        else [uncond[i] for i in index] + [cond[i] for i in index]
                    )
                    chunk = Chunk(
                        start=start,
                        stop=stop,
                        jobs=jobs[start:stop],
                        generators=chunk_generators(image_seeds[start:stop], generators, start, stop),
                        embeds=torch.stack(rows),
                        guided=request.guided,
                        latents=None if request.latents is None else request.latents[start:stop],
                        extras=self.chunk_inputs(request.inputs, jobs[start:stop]),
                        sampler=call.sampler,
                        call=call,
                        watch=FiniteWatch.for_device(self.execution_device, 0, start, **context),
                        request=request,
                        progress=progress,
                        steps=steps,
                    )
                    out = self.run_chunk(chunk)
                    if request.output_type != "latent":
                        out = self.decode_latents(out)
                        check_decoded(out, start, context)
                    results.append(out)
                    steps_done += [chunk.steps_done] * chunk.size
        finally:
            self._release()
        made = jobs[: len(steps_done)]
        extra = {
            **self.image_prompt_metadata(request.cross_attention_kwargs),  # an image prompt is named in the PNG
            **self.conditioner_metadata(),
            **self.attention_record(),
            **self.guidance_metadata(),  # a guider other than plain cfg, and the inference hooks
        }
        parameters = image_parameters(
            request, made, steps_done, steps, sampler=sampler_name, model=self.model_name, extra=extra
        )
        return StableDiffusionOutput(
            images=make_output(self, request, results, parameters),
            seeds=list(image_seeds[: len(made)]),
            parameters=parameters,
            interrupted=call.interrupted,
            finished=[ran == steps for ran in steps_done],
        )

    def run_chunk(self, chunk: Chunk) -> torch.Tensor:
        """One chunk: the pipeline's starting latents, then the loop. Returns the final latents."""
        return self.denoise(chunk, self.initial_latents(chunk))

    def denoise(self, chunk: Chunk, start: Start) -> torch.Tensor:
        return denoise(self, chunk, start)

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

    # --- timesteps the pipelines share ------------------------------------------------------------------------
    def steps_to_run(self, num_inference_steps: int, strength: float | None) -> int:
        if strength is None:
            return num_inference_steps
        return min(int(num_inference_steps * strength), num_inference_steps)

    def set_timesteps(self, num_inference_steps: int, sampler: Any = None) -> torch.Tensor:
        """Set ``sampler``'s schedule (a call's own copy; the pipeline's sampler when None) and return it."""
        sampler = self.scheduler if sampler is None else sampler
        sampler.set_timesteps(num_inference_steps, device=self.execution_device)
        return sampler.timesteps

    def strength_timesteps(self, num_inference_steps: int, strength: float, sampler: Any = None) -> torch.Tensor:
        """The last ``strength`` of the schedule: image-to-image starts from a partly noised image."""
        sampler = self.scheduler if sampler is None else sampler
        self.set_timesteps(num_inference_steps, sampler)
        run = self.steps_to_run(num_inference_steps, strength)
        start = max(num_inference_steps - run, 0) * sampler.order
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(start)
        return sampler.timesteps[start:]

    def size_from_image(self, request: GenerationRequest, image: Any) -> None:
        """Height and width not given: the init image's size, rounded down to the model's size step."""
        if request.height is None or request.width is None:  # 0 is an error, not the default
            default_h, default_w = default_size(image, self.size_multiple)
            request.height = default_h if request.height is None else request.height
            request.width = default_w if request.width is None else request.width
        self.check_size(request.height, request.width)

    def latent_shape(self, chunk: Chunk, channels: int | None = None) -> tuple[int, int, int, int]:
        request = chunk.request
        factor = self.vae_scale_factor
        channels = self.unet.config.in_channels if channels is None else channels
        return (chunk.size, channels, request.height // factor, request.width // factor)

    # --- what a pipeline provides -----------------------------------------------------------------------------
    def prepare_inputs(self, request: GenerationRequest, **pipeline_inputs: Any) -> None:
        """Check the pipeline's own inputs, set the default size, and put per-prompt tensors in request.inputs."""
        raise NotImplementedError

    def initial_latents(self, chunk: Chunk) -> Start:
        """A chunk's starting latents and the timesteps to run from them."""
        raise NotImplementedError

    def chunk_inputs(self, inputs: dict[str, torch.Tensor], jobs: list[ImageJob]) -> dict[str, torch.Tensor]:
        """Rows of the call's per-prompt inputs (a single row is shared by every prompt) for the given images."""
        return {name: pick(tensor, jobs) for name, tensor in inputs.items()}

    def check_chunk_inputs(self, request: GenerationRequest) -> None:
        """Checks of the pipeline's inputs against the planned images (given latents' shape, say)."""


def pick(tensor: torch.Tensor, jobs: list[ImageJob]) -> torch.Tensor:
    """Rows of a per-prompt tensor (or a single row shared by every prompt) for the given images."""
    if tensor.shape[0] == 1:
        return tensor.expand(len(jobs), *tensor.shape[1:]).contiguous()
    return tensor[[job.prompt_index for job in jobs]]


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


def _model_name(reference: str | os.PathLike[str]) -> str:
    path = Path(os.path.expanduser(os.fspath(reference)))
    if path.is_dir():
        return path.resolve().name
    return os.fspath(reference)
