"""Train a small LoRA for the built-in model: "squares", which draws every shape as a square and keeps the prompt's
colours. The scorer measures it (``difframe_shapes_model.score.read(image).shape``).

It is a text-encoder LoRA (kohya / web-UI layout, ``lora_te_*``): trained so that the text encoder with the LoRA
gives each of the model's 90 captions the embedding the unchanged encoder gives the same caption with "square" as its
shape ("a red circle on a blue background" -> that of "a red square on a blue background"); the empty prompt (the
unconditional branch of guidance) is kept as it was. The UNet then draws what it always draws for squares. Training
runs the 3-layer text encoder only, so it takes seconds on a CPU:

    python -m difframe_shapes_model.train_lora --out squares.safetensors

Load it with ``pipe.load_lora_weights(path)``, or put it in a LoRA folder and write ``<lora:squares:1>``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .data import SHAPES, all_captions

TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def square_caption(caption: str) -> str:
    words = caption.split(" ")
    return " ".join("square" if word in SHAPES else word for word in words)


def measure(lora: Path | None, images: int = 24, steps: int = 10, weight: float = 1.0) -> dict[str, float]:
    """Images of circles and triangles (the model's captions, seeds 0..images-1), read by the scorer: the share drawn
    as squares, and the shares with the prompt's shape colour and background colour."""
    from difframe import Framework

    from .score import read

    prompts = [c for c in all_captions() if "square" not in c]
    prompts = [prompts[(i * 37) % len(prompts)] for i in range(images)]
    pipe = Framework().build("stable-diffusion")
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora, weight=weight)
    output = pipe(prompts, seeds=list(range(images)), num_inference_steps=steps)
    readings = [read(image) for image in output.images]
    words = [p.split(" ") for p in prompts]
    return {
        "square": sum(r.shape == "square" for r in readings) / images,
        "prompted_shape": sum(r.shape == w[2] for r, w in zip(readings, words)) / images,
        "colour": sum(r.colour == w[1] for r, w in zip(readings, words)) / images,
        "background": sum(r.background == w[5] for r, w in zip(readings, words)) / images,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", type=int, metavar="IMAGES", help="then score IMAGES images without / with it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from difframe import Framework
    from peft import LoraConfig, inject_adapter_in_model
    from safetensors.torch import save_file

    pipe = Framework().build("stable-diffusion", prepacked_convolutions=False)
    encoder, tokenizer = pipe.text_encoder.float(), pipe.tokenizer
    encoder.requires_grad_(False)
    captions = [*all_captions(), ""]
    targets_text = [square_caption(c) for c in captions]

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    source_ids = ids(captions)
    with torch.no_grad():
        wanted = encoder(ids(targets_text)).last_hidden_state
    names = [n for n, _ in encoder.named_modules() if n.endswith(TARGETS)]
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=names, init_lora_weights="gaussian")
    inject_adapter_in_model(config, encoder, adapter_name="squares")
    parameters = [p for n, p in encoder.named_parameters() if "lora_" in n]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=args.lr)
    begin = time.perf_counter()
    for step in range(args.steps):
        loss = (encoder(source_ids).last_hidden_state - wanted).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "loss": round(loss.item(), 6)}), flush=True)
    state = {}
    for name, module in encoder.named_modules():
        if hasattr(module, "lora_A") and "squares" in module.lora_A:
            key = "lora_te_" + ("" if name.startswith("text_model.") else "text_model.") + name
            key = key.replace(".", "_")
            state[f"{key}.lora_down.weight"] = module.lora_A["squares"].weight.detach().to(torch.float16).contiguous()
            state[f"{key}.lora_up.weight"] = module.lora_B["squares"].weight.detach().to(torch.float16).contiguous()
            state[f"{key}.alpha"] = torch.tensor(args.alpha, dtype=torch.float16)
    metadata = {"ss_network_dim": str(args.rank), "ss_network_alpha": str(args.alpha)}
    metadata["recipe"] = json.dumps({k: str(v) for k, v in vars(args).items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    save_file(state, partial, metadata=metadata)
    partial.replace(args.out)
    print(f"wrote {args.out}: {len(state) // 3} layers in {time.perf_counter() - begin:.0f} s")
    if args.measure:
        for lora in (None, args.out):
            print(json.dumps({"lora": str(lora), **measure(lora, args.measure)}), flush=True)


if __name__ == "__main__":
    main()
