"""The shipped "squares" LoRA for the built-in model does what its card says: circles and triangles come out as
squares (read by the scorer), the prompt's colours stay."""

from __future__ import annotations

from pathlib import Path

import difframe_shapes_model
import pytest

SQUARES = Path(difframe_shapes_model.__file__).parent / "loras" / "squares.safetensors"


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_squares_lora_turns_shapes_into_squares_and_keeps_colours():
    from difframe_shapes_model.train_lora import measure

    without = measure(None, images=12, steps=8)
    with_lora = measure(SQUARES, images=12, steps=8)
    assert without["square"] <= 0.25  # the prompts ask for circles and triangles
    assert with_lora["square"] >= 0.75
    assert with_lora["colour"] >= without["colour"] - 0.2
    assert with_lora["background"] >= without["background"] - 0.2


def test_training_script_writes_a_loadable_lora(tmp_path):
    from difframe import Framework
    from difframe_shapes_model.train_lora import main

    out = tmp_path / "quick.safetensors"
    main(["--out", str(out), "--steps", "2", "--threads", "1"])
    pipe = Framework().build("stable-diffusion")
    pipe.load_lora_weights(out)
    assert pipe.get_list_adapters() == {"text_encoder": ["quick"]}
