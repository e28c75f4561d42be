"""Pydantic specs: what a plugin registers, validated without importing the plugin's component code."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.+-]*$"
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class Requirements(BaseModel):
    """What a component needs on this machine to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packages: tuple[str, ...] = Field(default=(), description="importable module names, e.g. 'xformers'")
    cuda: bool = Field(default=False, description="needs an NVIDIA GPU and a CUDA build of torch")
    install: str = Field(default="", description="how to get the packages, e.g. \"pip install 'difframe-x[x]'\"")


class Supports(BaseModel):
    """What a component works with. Empty means 'any'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: tuple[str, ...] = ()
    dtypes: tuple[Literal["float32", "float16", "bfloat16"], ...] = ()
    devices: tuple[Literal["cpu", "cuda", "mps"], ...] = ()


class ComponentSpec(BaseModel):
    """Fields every registration shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = "component"

    name: str = Field(pattern=NAME_PATTERN, description="lower-case name users type, e.g. 'dpmpp_2m'")
    factory: str = Field(description="'module:attr' of the class or function that builds it")
    aliases: tuple[str, ...] = Field(default=(), description="other names, matched case-insensitively")
    description: str = ""
    options: dict[str, Any] = Field(
        default_factory=dict, description="config values this name implies, e.g. use_karras_sigmas=True"
    )
    requires: Requirements = Requirements()
    supports: Supports = Supports()
    loads: tuple[tuple[str, str], ...] = Field(
        default=(),
        description="class names of the shared on-disk layout it loads, e.g. ('diffusers', 'DDIMScheduler')",
    )

    @field_validator("factory")
    @classmethod
    def _factory_is_module_attr(cls, value: str) -> str:
        if not FACTORY_PATTERN.match(value):
            raise ValueError(f"factory must look like 'package.module:ClassName', got {value!r}")
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not alias.strip() for alias in value):
            raise ValueError("aliases must not be empty strings")
        return value


class SchedulerSpec(ComponentSpec):
    kind: ClassVar[str] = "scheduler"
    stochastic: bool = Field(default=False, description="step() draws noise; takes a generator")
    label: str | None = Field(
        default=None,
        description="the name's label in AUTOMATIC1111's web UI, e.g. 'DPM++ 2M Karras': PNG parameters write it as "
        "'Sampler' and read it back to this name (None: the web UI has no such sampler; the name is written)",
    )
    schedule_type: str | None = Field(
        default=None,
        description="the web UI's 'Schedule type' of this name: 'Uniform' (the model's own σs), 'Karras' or "
        "'Exponential'; None for a sampler that has none there (DDIM, PLMS, UniPC...)",
    )

    @field_validator("label")
    @classmethod
    def _label_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("label must not be blank; leave it out if the web UI has no such sampler")
        return value


class ModelSpec(ComponentSpec):
    kind: ClassVar[str] = "model"
    role: Literal[
        "denoiser", "autoencoder", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "other"
    ] = "other"


class ConditionerSpec(ComponentSpec):
    kind: ClassVar[str] = "conditioner"
    modality: Literal["text", "image", "other"] = "text"


class AttentionProcessorSpec(ComponentSpec):
    kind: ClassVar[str] = "attention_processor"
    role: Literal["backend", "addon"] = "backend"
    priority: int = Field(default=0, description="'auto' picks the available backend with the highest priority")


class PipelineSpec(ComponentSpec):
    kind: ClassVar[str] = "pipeline"
    default_model: str | None = Field(default=None, description="model reference used when build() gets none")
    default_model_options: dict[str, Any] = Field(
        default_factory=dict, description="build options for the default model; those build() is given win"
    )


class BackendSpec(ComponentSpec):
    """Where a pipeline's models run: eager PyTorch, torch.compile, a converted and compiled graph (OpenVINO)."""

    kind: ClassVar[str] = "backend"
    cannot_run: tuple[Literal["attention_addons", "attention_backends", "inference_hooks"], ...] = Field(
        default=(),
        description="Python code a compiled graph leaves out; build() refuses options that need it",
    )


class GuiderSpec(ComponentSpec):
    """How a denoising step combines the predictions of its guidance batch (see difframe.guidance)."""

    kind: ClassVar[str] = "guider"


class InferenceHookSpec(ComponentSpec):
    """Code run around named modules of a model at every step (see difframe.inference_hooks)."""

    kind: ClassVar[str] = "inference_hook"
    incompatible: tuple[str, ...] = Field(
        default=(), description="names of hooks or guiders this one cannot run with; build() refuses the pair"
    )


SPEC_TYPES: dict[str, type[ComponentSpec]] = {
    spec.kind: spec
    for spec in (
        SchedulerSpec,
        ModelSpec,
        ConditionerSpec,
        AttentionProcessorSpec,
        PipelineSpec,
        BackendSpec,
        GuiderSpec,
        InferenceHookSpec,
    )
}
HOOK_KINDS: dict[str, str] = {
    "register_scheduler": "scheduler",
    "register_model": "model",
    "register_conditioner": "conditioner",
    "register_attention_processor": "attention_processor",
    "register_pipeline": "pipeline",
    "register_backend": "backend",
    "register_guider": "guider",
    "register_inference_hook": "inference_hook",
}
