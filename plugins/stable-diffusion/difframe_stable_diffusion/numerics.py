"""NaN and infinity during denoising: found without a device sync per operation, reported with the step, the stage
and the images they appeared in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from difframe.errors import DifframeError

ACCELERATOR_CHECK_INTERVAL = 8  # steps between host syncs on an accelerator; every step on the CPU (no sync cost)

HINTS = {
    "starting latents": "the VAE encoder or the given latents produced them (a float16 VAE overflows: use float32)",
    "UNet output": "the UNet overflowed; with float16 weights try dtype=bfloat16 or float32, else check the weights",
    "guidance": "guidance_scale {guidance_scale:g} is too large for {dtype}",
    "sampler step": "the sampler {sampler!r} produced them; try another sampler or more steps",
    "inpainting blend": "the init image's latents hold them (a float16 VAE overflows: use float32)",
    "callback": "callback_on_step_end returned them",
    "VAE decoder": "the VAE decoder overflowed (a known float16 problem: run the VAE in float32)",
}


class NonFiniteError(DifframeError, FloatingPointError):
    """NaN or infinite values appeared while generating; the run stopped there."""


@dataclass
class FiniteWatch:
    """Per-image "all finite" flags kept on the device, read back every ``interval`` steps and at the end (on the
    CPU, at once)."""

    steps: int
    image_offset: int
    context: dict[str, Any]
    interval: int = 1
    _pending: list[tuple[int, Any, str, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def for_device(cls, device: torch.device, steps: int, image_offset: int, **context: Any) -> FiniteWatch:
        interval = 1 if device.type == "cpu" else ACCELERATOR_CHECK_INTERVAL
        return cls(steps=steps, image_offset=image_offset, context=context, interval=interval)

    def record(self, step: int, timestep: Any, stage: str, tensor: torch.Tensor, images: int) -> None:
        flags = torch.isfinite(tensor).reshape(tensor.shape[0], -1).all(dim=1)
        if flags.shape[0] != images:  # [uncond..., cond...] rows of one image fold into one flag
            flags = flags.reshape(-1, images).all(dim=0)
        self._pending.append((step, timestep, stage, flags))
        if self.interval == 1:  # no sync cost: stop right where it happens
            self.check()

    def end_step(self, step: int) -> None:
        if (step + 1) % self.interval == 0:
            self.check()

    def check(self) -> None:
        if not self._pending:
            return
        flags = torch.stack([entry[3] for entry in self._pending]).cpu()  # the one sync
        pending, self._pending = self._pending, []
        bad_rows = (~flags).any(dim=1).nonzero()
        if bad_rows.numel():
            row = int(bad_rows[0])
            step, timestep, stage, _ = pending[row]
            images = [self.image_offset + int(i) for i in (~flags[row]).nonzero().flatten()]
            raise NonFiniteError(describe(stage, images, self.context, step=step, steps=self.steps, timestep=timestep))


def describe(
    stage: str, images: list[int], context: dict[str, Any], *, step: int | None = None, steps: int = 0, timestep=None
) -> str:
    seeds = context.get("seeds")
    which = ", ".join(
        f"{i} (seed {seeds[i]})" if seeds and i < len(seeds) and seeds[i] is not None else str(i) for i in images
    )
    if stage == "VAE decoder":
        when = "after denoising"
    else:
        when = "before the first step" if step is None or step < 0 else f"at step {step + 1} of {steps}"
    if timestep is not None:
        when += f" (timestep {float(timestep):g})"
    hint = HINTS.get(stage, "").format(**{"guidance_scale": 0.0, "dtype": "?", "sampler": "?", **context})
    return f"NaN or infinite values appeared {when} in the {stage} for image(s) {which}; the run stopped. {hint}"


def check_decoded(images: torch.Tensor, image_offset: int, context: dict[str, Any]) -> None:
    flags = torch.isfinite(images).reshape(images.shape[0], -1).all(dim=1)
    if not bool(flags.all()):
        bad = [image_offset + int(i) for i in (~flags).nonzero().flatten()]
        raise NonFiniteError(describe("VAE decoder", bad, context))
