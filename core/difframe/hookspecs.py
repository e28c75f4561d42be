"""The hooks a difframe plugin can implement.

Every hook receives a ``register`` callback. Call it once per component, with a spec object or the spec's fields
as keyword arguments. Factories are "module:attr" strings, imported only when a component is built, so listing
plugins never imports torch.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("difframe")
hookimpl = pluggy.HookimplMarker("difframe")


class Register(Protocol):
    def __call__(self, spec: Any = None, /, **fields: Any) -> None: ...


@hookspec
def register_scheduler(register: Register) -> None:
    """Register samplers (noise schedulers): ``register(name=..., factory=..., loads=[...])``."""


@hookspec
def register_model(register: Register) -> None:
    """Register networks and their loaders: denoisers, autoencoders, text and image encoders, tokenizers."""


@hookspec
def register_conditioner(register: Register) -> None:
    """Register conditioners: turn prompts (text, images) into the embeddings a denoiser attends to."""


@hookspec
def register_attention_processor(register: Register) -> None:
    """Register attention processors: backends (sdpa, xformers, kernels) and add-ons that wrap a backend."""


@hookspec
def register_pipeline(register: Register) -> None:
    """Register pipelines: the denoising logic that ties components together."""


@hookspec
def register_backend(register: Register) -> None:
    """Register backends: where a pipeline's models run (eager PyTorch, torch.compile, OpenVINO, GPU kernels)."""


@hookspec
def register_guider(register: Register) -> None:
    """Register guiders: how the predictions of the guidance batch (unconditional, conditional, perturbed) combine."""


@hookspec
def register_inference_hook(register: Register) -> None:
    """Register inference hooks: code run before and after named modules of a model at every denoising step."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``difframe`` CLI. ``cli`` is the argparse sub-parsers object."""
