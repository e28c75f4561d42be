"""Registration of difframe-openvino. No torch or openvino import here: the factory is a string."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_backend(register) -> None:
    register(
        name="openvino",
        factory="difframe_openvino.backend:OpenVINOBackend",
        aliases=("ov",),
        description="UNet, VAE decoder and text encoder converted to OpenVINO and compiled for the CPU (f32 or bf16)",
        cannot_run=("attention_addons", "attention_backends"),  # inference hooks: run around compiled layers
        supports={"devices": ("cpu",), "dtypes": ("float32",)},
        requires={"packages": ("openvino",), "install": "pip install difframe-openvino"},
    )
