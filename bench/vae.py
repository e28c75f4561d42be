"""VAE speed side by side with the reference library: SD 1.5 VAE architecture, same random weights, same threads.

    .venv/bin/python bench/vae.py [--size 256] [--repeat 5] [--threads 2]

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


def timed_pair(ours: Callable[[], object], reference: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall times, ours and the reference alternating so that load from other work hits both alike."""
    ours(), reference()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, bucket in ((ours, times[0]), (reference, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


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
    rows = [("load vae/ folder", *timed_pair(lambda: AutoencoderKL.from_pretrained(folder),
                                             lambda: Reference.from_pretrained(folder), args.repeat))]  # fmt: skip
    ours, reference = AutoencoderKL.from_pretrained(folder), Reference.from_pretrained(folder).eval()
    latent = torch.randn(1, 4, args.size // 8, args.size // 8)
    image = torch.rand(1, 3, args.size, args.size) * 2 - 1
    size = f"1x{args.size}x{args.size}"
    with torch.inference_mode():
        decode = timed_pair(lambda: ours.decode(latent), lambda: reference.decode(latent), args.repeat)
        rows.append((f"decode {size}", *decode))
        encode = timed_pair(
            lambda: ours.encode(image).mean, lambda: reference.encode(image).latent_dist.mean, args.repeat
        )
        rows.append((f"encode {size}", *encode))
        ours.to(memory_format=torch.channels_last)
        latent_cl = latent.to(memory_format=torch.channels_last)
        decode_cl = timed_pair(lambda: ours.decode(latent_cl), lambda: reference.decode(latent), args.repeat)
        rows.append((f"decode {size}, ours channels_last", *decode_cl))
    print(f"threads: {args.threads}, torch {torch.__version__}, median of {args.repeat}\n")
    print("| what | ours | reference | ratio |\n| --- | ---: | ---: | ---: |")
    for what, a, b in rows:
        print(f"| {what} | {a:.3f} s | {b:.3f} s | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
