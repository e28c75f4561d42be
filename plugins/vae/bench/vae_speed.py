"""VAE speed side by side with the reference library: SD 1.5 VAE architecture, same random weights, same threads.

    .venv/bin/python plugins/vae/bench/vae_speed.py [--size 256] [--repeat 5] [--threads 2]

Prints a markdown table of median wall times (decode, encode, load) and the ratio ours / reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

SD15_VAE = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from difframe_vae import AutoencoderKL
    from diffusers import AutoencoderKL as Reference

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "vae"
    Reference(**SD15_VAE).save_pretrained(folder)
    rows = []
    load_ours = timed(lambda: AutoencoderKL.from_pretrained(folder), args.repeat)
    load_reference = timed(lambda: Reference.from_pretrained(folder), args.repeat)
    rows.append(("load vae/ folder", load_ours, load_reference))
    ours, reference = AutoencoderKL.from_pretrained(folder), Reference.from_pretrained(folder).eval()
    latent = torch.randn(1, 4, args.size // 8, args.size // 8)
    image = torch.rand(1, 3, args.size, args.size) * 2 - 1
    with torch.inference_mode():
        rows.append(
            (
                f"decode 1x{args.size}x{args.size}",
                timed(lambda: ours.decode(latent), args.repeat),
                timed(lambda: reference.decode(latent), args.repeat),
            )
        )
        rows.append(
            (
                f"encode 1x{args.size}x{args.size}",
                timed(lambda: ours.encode(image).mean, args.repeat),
                timed(lambda: reference.encode(image).latent_dist.mean, args.repeat),
            )
        )
        ours.to(memory_format=torch.channels_last)
        rows.append(
            (
                f"decode 1x{args.size}x{args.size}, ours channels_last",
                timed(lambda: ours.decode(latent.to(memory_format=torch.channels_last)), args.repeat),
                rows[1][2],
            )
        )
    print(f"threads: {args.threads}, torch {torch.__version__}, median of {args.repeat}\n")
    print("| what | ours | reference | ratio |\n| --- | ---: | ---: | ---: |")
    for what, a, b in rows:
        print(f"| {what} | {a:.3f} s | {b:.3f} s | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
