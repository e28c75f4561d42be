"""Demo: an image prompt on the built-in model, offline. Draws a reference picture (or takes --image), generates
from it with an empty prompt at adapter scales 0, 0.5 and 1, and saves the reference beside the results.

    python -m difframe_ip_adapter.shapes.demo --out out/ip-demo [--image my.png] [--prompt "a red circle ..."]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/ip-demo"))
    parser.add_argument("--image", type=Path, help="reference image (default: a drawn scene)")
    parser.add_argument("--prompt", default="", help="text prompt (default empty: the image alone)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    args = parser.parse_args(argv)
    from difframe import Framework
    from difframe_shapes_model.data import draw, random_scene
    from PIL import Image

    from .evaluate import load

    if args.image:
        reference = Image.open(args.image).convert("RGB")
        described = args.image.name
    else:
        scene = random_scene(random.Random(args.seed))
        reference, described = draw(scene), scene.caption
    pipe = Framework().build("stable-diffusion")
    load(pipe)
    args.out.mkdir(parents=True, exist_ok=True)
    reference.save(args.out / "reference.png")
    print(f"{args.out / 'reference.png'}  (reference: {described})")
    for scale in args.scales:
        pipe.set_ip_adapter_scale(scale)
        output = pipe(args.prompt, ip_adapter_image=reference, seed=args.seed, num_inference_steps=20)
        path = output.save(args.out, prefix=f"scale-{scale:g}-")[0]
        print(f"{path}  (IP-Adapter scale {scale:g}, prompt {args.prompt!r})")


if __name__ == "__main__":
    main()
