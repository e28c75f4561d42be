"""Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance"): a third branch runs the conditional prompt with identity self-attention on chosen layers, and guidance
pushes away from it. The perturbation is an inference hook, so the guider works with any attention backend."""

from __future__ import annotations

import re
from typing import Any

import torch
from difframe.attention import Attention
from difframe.guidance import Guider, rescale_noise_cfg
from difframe.inference_hooks import InferenceHook, current_step
from torch import nn


class IdentitySelfAttention(InferenceHook):
    """For the rows of one guidance branch, self-attention outputs its value projection (each token attends only
    to itself). ``layers``: regular expressions searched in module names ("mid", "down_blocks.1")."""

    def __init__(self, layers: list[str] | str = "mid", branch: str = "perturbed") -> None:
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        self.branch = branch

    def matches(self, module_name: str, module: nn.Module) -> bool:
        if not isinstance(module, Attention) or module.is_cross_attention:
            return False
        return any(re.search(layer, module_name) and not _other_index(layer, module_name) for layer in self.layers)

    def post_forward(self, module_name: str, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        step = current_step()
        if step is None or self.branch not in step.branches:
            return None
        rows = step.rows_of(self.branch)
        hidden = (args[0] if args else kwargs["hidden_states"])[rows]
        identity = _value_path(module, hidden)
        output = output.clone()
        output[rows] = identity
        return output

    def description(self) -> dict[str, Any]:
        return {"layers": self.layers}


def _other_index(layer: str, module_name: str) -> bool:
    """'blocks.1' must not pick 'blocks.10': a numeric last part of the pattern must equal the name's."""
    wanted, last = layer.split(".")[-1], module_name.split(".")[-1]
    return wanted.isnumeric() and last.isnumeric() and wanted != last


def _value_path(module: Attention, hidden: torch.Tensor) -> torch.Tensor:
    """The attention module's output when every token attends only to itself."""
    residual = hidden
    spatial = hidden.ndim == 4
    if spatial:
        batch, channels, height, width = hidden.shape
    if module.group_norm is not None:
        hidden = module.group_norm(hidden)
    if spatial:
        hidden = hidden.flatten(2).transpose(1, 2)
    out = module.to_out[1](module.to_out[0](module.to_v(hidden)))
    if spatial:
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
    if module.residual_connection:
        out = out + residual
    return out / module.rescale_output_factor


class PerturbedAttentionGuidance(Guider):
    """cfg + pag_scale * (cond - perturbed). ``pag_adaptive_scale`` lowers the scale as the timestep falls:
    max(0, pag_scale - pag_adaptive_scale * (1000 - t)). ``layers``: where self-attention is perturbed."""

    extra_branches = ("perturbed",)

    def __init__(
        self,
        pag_scale: float = 3.0,
        pag_adaptive_scale: float = 0.0,
        layers: list[str] | str = "mid",
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        start: float = 0.0,
        stop: float = 1.0,
    ) -> None:
        super().__init__(guidance_scale, guidance_rescale, start, stop)
        self.pag_scale, self.pag_adaptive_scale = pag_scale, pag_adaptive_scale
        self.layers = [layers] if isinstance(layers, str) else list(layers)

    def required_hooks(self) -> list[InferenceHook]:
        hook = IdentitySelfAttention(self.layers)
        hook.name = "identity-self-attention"
        return [hook]

    def combine(self, predictions, step, guidance_scale, guidance_rescale):
        if set(predictions) == {"cond"}:
            return predictions["cond"]
        cond, perturbed = predictions["cond"], predictions["perturbed"]
        scale = self.pag_scale
        if self.pag_adaptive_scale > 0:
            scale = max(0.0, self.pag_scale - self.pag_adaptive_scale * (1000 - float(step.timestep)))
        if "uncond" not in predictions:
            return cond + scale * (cond - perturbed)
        uncond = predictions["uncond"]
        guided = uncond + self.scale(guidance_scale) * (cond - uncond) + scale * (cond - perturbed)
        rescale = guidance_rescale if self.guidance_rescale is None else self.guidance_rescale
        return rescale_noise_cfg(guided, cond, rescale) if rescale > 0.0 else guided
