"""IP-Adapter cost per denoising step, side by side with the reference library: the full SD 1.5 UNet
architecture (random weights, saved once by the reference and loaded by both), 256x256 (32x32 latents), a batch
of two (classifier-free guidance), one adapter with the published SD 1.5 sizes (plain: 4 tokens from a 1024-wide
embedding; Plus: 16 tokens from 1280-wide ViT-H hidden states through the resampler).

    flock /tmp/heavy.lock .venv/bin/python bench/ip_adapter.py [--repeat 5] [--threads 2] [--kind plain] [--per-layer N]

A step is one UNet call; the adapter's cost is (UNet call with the adapter) - (without), the four calls alternating
round by round (a plain and an adapted copy of each UNet); the image embedding is projected inside the timed call on
both sides. ``--per-layer N`` also times each cross-attention layer alone (its real input, N alternating rounds):
the adapter's cost where it is paid, without the noise of whole UNet calls. Prints a markdown table of median wall
times and the ratios ours / reference.
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


def per_layer_costs(ours_ip, reference_ip, text, tokens, reference_tokens, sample, repeat):
    """The adapter's cost measured where it is paid: each cross-attention layer called alone with its real input
    shape, with and without the adapter, ours and the reference's, alternating; summed over the layers."""
    from difframe.attention import attention_modules
    from diffusers.models.attention_processor import AttnProcessor2_0

    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs.setdefault(name, args[0])

        return hook

    hooks = [
        module.register_forward_pre_hook(keep_input(name))
        for name, module in attention_modules(ours_ip)
        if module.is_cross_attention
    ]
    ours_ip(sample, 500, text, cross_attention_kwargs={"ip_hidden_states": tokens})
    for hook in hooks:
        hook.remove()
    plain_processor = AttnProcessor2_0()
    totals = [0.0, 0.0, 0.0, 0.0]
    for name, hidden in inputs.items():
        ours_layer, theirs_layer = ours_ip.get_submodule(name), reference_ip.get_submodule(name)
        calls = [
            lambda ours=ours_layer, x=hidden: ours.default_forward(x, text),
            lambda theirs=theirs_layer, x=hidden: plain_processor(theirs, x, text),
            lambda ours=ours_layer, x=hidden: ours(x, text, ip_hidden_states=tokens),
            lambda theirs=theirs_layer, x=hidden: theirs(x, encoder_hidden_states=(text, reference_tokens)),
        ]
        for index, median in enumerate(medians(calls, repeat)):
            totals[index] += median
    return totals[:2], totals[2:], len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kind", choices=("plain", "plus"), default="plain")
    parser.add_argument(
        "--per-layer", type=int, metavar="N", default=0, help="also time each cross-attention layer alone, N rounds"
    )
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
        if args.per_layer:
            tokens = project_image_embeds([adapter], [image])
            reference_tokens = reference_ip.encoder_hid_proj([image])
            layers_base, layers_with, layers = per_layer_costs(
                ours_ip, reference_ip, text, tokens, reference_tokens, sample, args.per_layer
            )
    cost = [with_adapter[0] - base[0], with_adapter[1] - base[1]]
    print(f"{args.kind} adapter, 256x256, batch 2, {args.threads} threads, median of {args.repeat}")
    print(f"max abs difference of the UNet outputs with the adapter: {float(difference.abs().max()):.2e}\n")
    print("| per step | ours | reference | ratio (ours / reference) |")
    print("| --- | ---: | ---: | ---: |")
    rows = [("UNet call without adapter", base), ("UNet call with the adapter", with_adapter)]
    rows.append(("adapter's cost (with - without)", cost))
    if args.per_layer:
        rows.append(
            (f"{layers} cross-attention layers alone, without adapter (median of {args.per_layer})", layers_base)
        )
        rows.append((f"{layers} cross-attention layers alone, with the adapter", layers_with))
        rows.append(("adapter's cost, per layer summed", [w - b for w, b in zip(layers_with, layers_base)]))
    for label, (mine, theirs) in rows:
        ratio = f"{mine / theirs:.3f}x" if theirs > 0 else "n/a"
        print(f"| {label} | {mine * 1000:.1f} ms | {theirs * 1000:.1f} ms | {ratio} |")


if __name__ == "__main__":
    main()
