"""IP-Adapter cost per denoising step, side by side with the reference library: the full SD 1.5 UNet
architecture (random weights, saved once by the reference and loaded by both), 256x256 (32x32 latents), a batch
of two (classifier-free guidance), one adapter with the published SD 1.5 sizes (plain: 4 tokens from a 1024-wide
embedding; Plus: 16 tokens from 1280-wide ViT-H hidden states through the resampler).

    flock /tmp/heavy.lock .venv/bin/python bench/ip_adapter.py [--repeat 5] [--threads 2] [--kind plain]

A step is one UNet call; the adapter's cost is (UNet call with the adapter) - (without), the four calls alternating
round by round (a plain and an adapted copy of each UNet); the image embedding is projected inside the timed call on
both sides. Prints a markdown table of median wall times and the ratios ours / reference.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768}


def medians(functions: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median wall time of each function, run in turn (so load from other work hits all alike)."""
    for fn in functions:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeat):
        for fn, bucket in zip(functions, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kind", choices=("plain", "plus"), default="plain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from difframe_ip_adapter.adapter import adapter_from_state_dict, attach
    from difframe_ip_adapter.pipeline import project_image_embeds
    from difframe_ip_adapter.testing import published_state
    from difframe_sd_unet.unet import UNet2DConditionModel
    from diffusers import UNet2DConditionModel as Reference

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        Reference(**SD15_UNET).save_pretrained(Path(tmp) / "unet")
        # a plain and an adapted copy of each UNet, so that the four calls alternate within every round
        reference, reference_ip = (Reference.from_pretrained(Path(tmp) / "unet").eval() for _ in range(2))
        ours, ours_ip = (UNet2DConditionModel.from_pretrained(Path(tmp) / "unet").eval() for _ in range(2))
    gc.collect()
    embed_dim = 1024 if args.kind == "plain" else 1280
    queries = 16
    flat = published_state(SD15_UNET, args.kind, embed_dim=embed_dim, queries=queries, plus_width=768)
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        parts[prefix][rest] = value

    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 32, 32, generator=generator)
    text = torch.randn(2, 77, 768, generator=generator)
    shape = (2, 1, embed_dim) if args.kind == "plain" else (2, 1, 257, embed_dim)
    image = torch.randn(*shape, generator=generator)

    with torch.no_grad():
        adapter = adapter_from_state_dict(parts, ours_ip, f"ip-adapter ({args.kind})")
        attach(ours_ip, [adapter])
        reference_ip._load_ip_adapter_weights([parts], low_cpu_mem_usage=False)

        def ours_with_adapter() -> torch.Tensor:  # the image embedding projected in the call, as the reference does
            tokens = project_image_embeds([adapter], [image])
            return ours_ip(sample, 500, text, cross_attention_kwargs={"ip_hidden_states": tokens})

        def reference_with_adapter() -> torch.Tensor:
            return reference_ip(sample, 500, text, added_cond_kwargs={"image_embeds": [image]}).sample

        times = medians(
            [
                lambda: ours(sample, 500, text),
                lambda: reference(sample, 500, text),
                ours_with_adapter,
                reference_with_adapter,
            ],
            args.repeat,
        )
        base, with_adapter = times[:2], times[2:]
        difference = ours_with_adapter() - reference_with_adapter()
    cost = [with_adapter[0] - base[0], with_adapter[1] - base[1]]
    print(f"{args.kind} adapter, 256x256, batch 2, {args.threads} threads, median of {args.repeat}")
    print(f"max abs difference of the UNet outputs with the adapter: {float(difference.abs().max()):.2e}\n")
    print("| per step | ours | reference | ratio (ours / reference) |")
    print("| --- | ---: | ---: | ---: |")
    rows = [("UNet call without adapter", base), ("UNet call with the adapter", with_adapter)]
    rows.append(("adapter's cost (with - without)", cost))
    for label, (mine, theirs) in rows:
        ratio = f"{mine / theirs:.3f}x" if theirs > 0 else "n/a"
        print(f"| {label} | {mine * 1000:.1f} ms | {theirs * 1000:.1f} ms | {ratio} |")


if __name__ == "__main__":
    main()
