"""Checks that need no weights: numbers a call or the CLI is given, the device, the model's geometry read from its
config files, and the memory one image needs at the very least. The CLI runs them all before it loads a model;
the pipelines run the same ones before any model call. No torch import at module level."""

from __future__ import annotations

import json
import math
import operator
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MAX_SEED = 2**32 - 1  # torch's CPU generator seeds its Mersenne Twister with the low 32 bits of the seed
MAX_GUIDANCE = 100.0
USUAL_GUIDANCE = 30.0  # the web UIs' slider ends here; above it images saturate towards flat colours


def check_seed(value: Any) -> int:
    """A seed as an int in [0, MAX_SEED] (numpy integers accepted); anything else is refused."""
    if isinstance(value, bool):
        raise ValueError(f"a seed must be an integer, got {value!r}")
    try:
        seed = operator.index(value)
    except TypeError:
        raise ValueError(f"a seed must be an integer, got {value!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed {seed} is out of range: seeds are 0 to {MAX_SEED}. The noise generator keeps 32 bits of a seed, "
            f"so seed {seed} would give the image of seed {seed % (MAX_SEED + 1)}."
        )
    return seed


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_guidance(guidance_scale: Any, negative_prompt_given: bool = False) -> None:
    """A finite guidance scale up to MAX_GUIDANCE; warnings where the result is legal but likely not meant."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale) or abs(guidance_scale) > MAX_GUIDANCE:
        raise ValueError(
            f"guidance_scale must be a finite number of at most {MAX_GUIDANCE:g}, got {guidance_scale!r}; the usual "
            f"range is 1 to {USUAL_GUIDANCE:g} (7.5 by default)"
        )
    if guidance_scale > USUAL_GUIDANCE:
        warnings.warn(
            f"guidance_scale {guidance_scale:g} is above the usual 1-{USUAL_GUIDANCE:g}: images tend to saturate "
            "to flat colours",
            UserWarning,
            stacklevel=4,
        )
    if guidance_scale <= 1.0 and negative_prompt_given:
        warnings.warn(
            f"the negative prompt is ignored: guidance_scale {guidance_scale:g} <= 1 turns classifier-free "
            "guidance off",
            UserWarning,
            stacklevel=4,
        )


def check_strength(strength: Any, num_inference_steps: Any) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if isinstance(num_inference_steps, int) and int(num_inference_steps * strength) < 1:
        raise ValueError(
            f"strength {strength} x num_inference_steps {num_inference_steps} leaves no denoising step; raise "
            "strength or num_inference_steps"
        )


def check_device(device: Any) -> Any:
    """A torch.device that exists on this machine, or a ValueError that says which ones do."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {device!r} is not available: {why}; use device='cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} is not available on this machine; use device='cpu'")
    elif parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device {device!r} is not supported here; use cpu, cuda, cuda:N or mps")
    return parsed


def check_scaling_factor(value: Any, where: str) -> None:
    """The VAE's latent scale: zero or NaN would make every image one flat colour."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{where}: the VAE's scaling_factor must be a positive finite number, got {value!r} (Stable Diffusion "
            "1.x / 2.x use 0.18215); fix vae/config.json"
        )


@dataclass(frozen=True)
class ModelGeometry:
    """What the checks need from a model folder's configs: no weights."""

    vae_factor: int
    unet_downsampling: int
    unet_channels: int  # the UNet's first block: the widest activation per latent pixel
    vae_channels: int
    scaling_factor: Any

    @property
    def size_multiple(self) -> int:
        return self.vae_factor * self.unet_downsampling


def read_geometry(root: str | Path) -> ModelGeometry | None:
    """The geometry of a Stable Diffusion folder from vae/config.json and unet/config.json; None where the configs
    are not of that shape (a plugin's model), and the pipeline then checks after loading."""
    try:
        vae = json.loads((Path(root) / "vae" / "config.json").read_text(encoding="utf-8"))
        unet = json.loads((Path(root) / "unet" / "config.json").read_text(encoding="utf-8"))
        vae_blocks, unet_blocks = len(vae["block_out_channels"]), len(unet["block_out_channels"])
        return ModelGeometry(
            vae_factor=2 ** (vae_blocks - 1),
            unet_downsampling=2 ** (unet_blocks - 1),
            unet_channels=int(unet["block_out_channels"][0]),
            vae_channels=int(vae["block_out_channels"][0]),
            scaling_factor=vae.get("scaling_factor", 0.18215),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def check_size(height: Any, width: Any, multiple: int, why: str) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple} ({why}), got {height}x{width}")


def minimum_image_bytes(height: int, width: int, vae_factor: int, unet_channels: int, itemsize: int) -> int:
    """Bytes that one image needs whatever the options (slicing, tiling): the UNet's first activation over the
    whole latent, and the decoded image in float32 with its 8-bit copy. A floor, not an estimate of the peak."""
    latent_pixels = (height // vae_factor) * (width // vae_factor)
    return max(latent_pixels * unet_channels * itemsize, height * width * 3 * (4 + 1))


def check_memory(needed: int, free: int | None, height: int, width: int, device: Any, images: int = 1) -> None:
    if free is None or needed <= free:
        return
    if images == 1:
        raise ValueError(
            f"a {width}x{height} image needs at least {_gib(needed)} of working memory on {device}, and "
            f"{_gib(free)} is free; choose a smaller size (the model was trained for far smaller ones)"
        )
    raise ValueError(
        f"{images} images of {width}x{height} are all held until the call returns: at least {_gib(needed)} on "
        f"{device}, and {_gib(free)} is free; make several calls, or use a job file (difframe generate --prompts)"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


@dataclass
class GenerationRequest:
    """The settings of one pipeline call, from ``__call__`` to the loop: the call's own arguments (same names and
    defaults as the pipelines' parameters), then what the checks derive from them. One object, never forwarded
    argument by argument."""

    prompt: Any = None
    negative_prompt: Any = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    num_images_per_prompt: int = 1
    seed: Any = None
    seeds: Any = None
    generator: Any = None
    latents: Any = None
    prompt_embeds: Any = None
    negative_prompt_embeds: Any = None
    clip_skip: int | None = None
    output_type: str = "pil"
    callback_on_step_end: Any = None
    cross_attention_kwargs: dict[str, Any] | None = None
    memory_budget: Any = None
    ip_adapter_image: Any = None
    ip_adapter_image_embeds: Any = None
    ip_adapter_masks: Any = None
    strength: float | None = None  # image-to-image and inpainting: how much of the schedule runs
    # derived by the checks (check_call and the pipeline's prepare_inputs)
    prompts: list[str] | None = field(default=None, init=False)
    negatives: list[str] | None = field(default=None, init=False)
    count: int = field(default=0, init=False)  # prompts (or rows of prompt_embeds)
    inputs: dict[str, Any] = field(default_factory=dict, init=False)  # the pipeline's per-prompt tensors

    @classmethod
    def of_call(
        cls, prompt: Any, negative_prompt: Any, settings: dict[str, Any], not_taken: tuple[str, ...] = ()
    ) -> GenerationRequest:
        """The request of a pipeline's call: its prompts and keyword settings (``not_taken``: settings this
        pipeline has no use for). An unknown setting is refused with the list of known ones."""
        known = {f.name for f in fields(cls) if f.init} - {"prompt", "negative_prompt", "strength", *not_taken}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(
                f"unknown argument(s) {', '.join(map(repr, unknown))}; this pipeline takes {', '.join(sorted(known))}"
            )
        return cls(prompt=prompt, negative_prompt=negative_prompt, **settings)

    @property
    def total(self) -> int:
        """Images of the call: prompts x images per prompt."""
        return self.count * self.num_images_per_prompt

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


def check_call(request: GenerationRequest, cross_attention_dim: Any, text_layers: Any) -> None:
    """The checks every pipeline's call shares; fills ``request.prompts``, ``negatives`` and ``count``.
    ``cross_attention_dim``: the UNet's text width; ``text_layers``: the text encoder's layers (None: unknown)."""
    from .batching import as_prompt_list

    prompt, negative_prompt = request.prompt, request.negative_prompt
    prompt_embeds, negative_prompt_embeds = request.prompt_embeds, request.negative_prompt_embeds
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
    for name, tensor in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if tensor is not None and isinstance(cross_attention_dim, int) and tensor.shape[-1] != cross_attention_dim:
            raise ValueError(
                f"{name} has width {tensor.shape[-1]}; this UNet's cross-attention takes {cross_attention_dim} (the "
                "text encoder's hidden size)"
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
    steps = request.num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"num_inference_steps must be an integer, got {steps!r}")
    if steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {steps}")
    check_guidance(request.guidance_scale, negative_prompt is not None or negative_prompt_embeds is not None)
    rescale = request.guidance_rescale
    if not isinstance(rescale, (int, float)) or not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {rescale!r}")
    per_prompt = request.num_images_per_prompt
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int):
        raise ValueError(f"num_images_per_prompt must be an integer, got {per_prompt!r}")
    if per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be at least 1, got {per_prompt}")
    if request.output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {request.output_type!r}")
    if request.callback_on_step_end is not None and not callable(request.callback_on_step_end):
        raise TypeError("callback_on_step_end must be callable: f(pipe, step, timestep, tensors) -> dict")
    clip_skip = request.clip_skip
    if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0):
        raise ValueError(f"clip_skip must be a non-negative integer, got {clip_skip!r}")
    if clip_skip and isinstance(text_layers, int) and clip_skip >= text_layers:
        raise ValueError(f"clip_skip {clip_skip} leaves no layer: the text encoder has {text_layers} layers")
    import torch

    for name, tensor in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
    request.prompts, request.negatives, request.count = prompts, negatives, count
