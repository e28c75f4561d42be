"""The core's own registrations, found through the 'difframe' entry point like any plugin's."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_attention_processor(register) -> None:
    register(
        name="sdpa",
        factory="difframe.attention:SDPABackend",
        aliases=("default", "torch"),
        priority=10,
        description="torch scaled_dot_product_attention (flash / memory-efficient kernels where torch has them)",
    )
    register(
        name="sliced",
        factory="difframe.attention:SlicedBackend",
        aliases=("attention_slicing",),
        priority=0,
        description="attention a few heads at a time, for low memory; slice_size='auto', 'max' or a number",
    )
    register(
        name="reference",
        factory="difframe.attention:ReferenceBackend",
        aliases=("math",),
        priority=-10,
        description="plain float32 softmax(QK^T)V: slow, the yardstick the others are tested against",
    )


@hookimpl
def register_backend(register) -> None:
    register(
        name="eager",
        factory="difframe.backends:EagerBackend",
        aliases=("pytorch", "torch"),
        description="PyTorch as it is: every hook and add-on runs (the default)",
    )
    register(
        name="torch-compile",
        factory="difframe.backends:TorchCompileBackend",
        aliases=("compile", "inductor"),
        description="torch.compile on the UNet and VAE decoder (compile=True); first calls compile",
    )


@hookimpl
def register_guider(register) -> None:
    register(
        name="cfg",
        factory="difframe.guidance:ClassifierFreeGuidance",
        aliases=("classifier-free", "classifier-free-guidance"),
        description="classifier-free guidance with guidance_rescale (the default)",
    )
