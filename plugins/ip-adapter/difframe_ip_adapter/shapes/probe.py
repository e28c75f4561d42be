"""How much of the shape kind the shapes image encoder's embedding carries: a linear (ridge) classifier trained on
the embeddings of drawn scenes, scored on scenes of another data seed. Chance is one in three.

    python -m difframe_ip_adapter.shapes.probe [--train 1500] [--test 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def embeddings(count: int, seed: int, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings, shape index) of ``count`` drawn scenes, through the encoder in ``folder`` (default: the
    shipped one) and its processor."""
    import torch
    from difframe_shapes_model.data import SHAPES, draw, make_dataset
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from .evaluate import FOLDER

    folder = (folder or FOLDER) / "models" / "image_encoder"
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    _, scenes = make_dataset(count, seed)
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=[draw(s) for s in scenes], return_tensors="pt")
    with torch.no_grad():
        embeds = encoder(pixel_values=pixels.pixel_values).image_embeds.numpy()
    return embeds, np.array([SHAPES.index(scene.shape) for scene in scenes])


def probe_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    (x, y), (x_test, y_test) = train, test
    x, x_test = np.c_[x, np.ones(len(x))], np.c_[x_test, np.ones(len(x_test))]
    weights = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ np.eye(int(y.max()) + 1)[y])
    return float((np.argmax(x_test @ weights, axis=1) == y_test).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--folder", type=Path, default=None, help="another adapter folder (default: the shipped one)")
    args = parser.parse_args(argv)
    train, test = embeddings(args.train, 11, args.folder), embeddings(args.test, 4242, args.folder)
    accuracy = probe_accuracy(train, test)
    print(f"shape kind from the image embedding, linear probe: {100 * accuracy:.1f}% (chance 33.3%)")


if __name__ == "__main__":
    main()
