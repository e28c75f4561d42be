"""Measure the shapes IP-Adapter with the built-in scorer: reference images of coloured shapes (a data seed the
training never drew from), generated under an empty prompt, and under a prompt that contradicts the image in
colour, shape and background, at several adapter scales.

    python -m difframe_ip_adapter.shapes.evaluate [--images 60] [--scales 0 0.25 0.5 0.75 1]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

FOLDER = Path(__file__).parent / "ip-adapter-shapes"
WEIGHT_NAME = "ip-adapter_shapes.safetensors"


def load(pipe, folder: Path = FOLDER) -> None:
    pipe.load_ip_adapter(folder, subfolder="models", weight_name=WEIGHT_NAME)


def contradicting(scene, rng: random.Random):
    """A scene that differs from ``scene`` in shape colour, shape kind and background."""
    from difframe_shapes_model.data import PALETTE, SHAPES, Scene

    colour = rng.choice([c for c in PALETTE if c not in (scene.colour, scene.background)])
    background = rng.choice([c for c in PALETTE if c not in (scene.colour, scene.background, colour)])
    shape = rng.choice([s for s in SHAPES if s != scene.shape])
    return Scene(colour, shape, background, scene.box)


def evaluate(pipe, scales: list[float], images: int, steps: int = 20, seed: int = 4242) -> list[dict]:
    from difframe_shapes_model.data import draw, make_dataset
    from difframe_shapes_model.score import read

    _, scenes = make_dataset(images, seed)
    references = [draw(scene) for scene in scenes]
    rng = random.Random(seed)
    texts = [contradicting(scene, rng) for scene in scenes]
    rows = []
    for scale in scales:
        pipe.set_ip_adapter_scale(scale)
        for label, prompts in (("empty", [""] * images), ("contradicting", [t.caption for t in texts])):
            output = pipe(
                prompts, ip_adapter_image=[[r] for r in references], seeds=list(range(images)),
                num_inference_steps=steps,
            )  # fmt: skip
            readings = [read(image) for image in output.images]

            def share(test, readings=readings) -> float:
                return round(100 * sum(test(r, s, t) for r, s, t in zip(readings, scenes, texts)) / images, 1)

            rows.append(
                {
                    "prompt": label,
                    "scale": scale,
                    "image colours": share(lambda r, s, t: r.colour == s.colour and r.background == s.background),
                    "image shape colour": share(lambda r, s, t: r.colour == s.colour),
                    "image shape kind": share(lambda r, s, t: r.shape == s.shape),
                    "text colours": share(lambda r, s, t: r.colour == t.colour and r.background == t.background),
                    "text shape kind": share(lambda r, s, t: r.shape == t.shape),
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---:" for _ in keys) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]}%" if isinstance(row[k], float) and k != "scale" else str(row[k])
                                       for k in keys) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch
    from difframe import Framework

    torch.set_num_threads(args.threads)
    pipe = Framework().build("stable-diffusion")
    pipe.set_progress_bar_config(disable=True)
    load(pipe, args.folder)
    print(markdown(evaluate(pipe, args.scales, args.images, args.steps)))


if __name__ == "__main__":
    main()
