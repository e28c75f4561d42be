"""Models (issue 4): load time, UNet forward, VAE decode and peak memory, against the reference library.

The full Stable Diffusion 1.5 architecture with random weights, saved once by diffusers / transformers into a
folder in the shared layout (unet/, vae/, text_encoder/). Every measurement runs in a fresh subprocess, so peak
resident memory (getrusage maxrss) belongs to that measurement alone; both sides use the same torch thread count.
Our side loads through the registry, by the model_index.json class names, exactly as a pipeline does.

Run: .venv/bin/python bench/models.py [--repeat 3] [--threads N] [--folder DIR]. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUT = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
}
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
)


# --- the saved model ----------------------------------------------------------------------------------------------
def save_reference_model(folder: Path) -> None:
    """Random SD 1.5-sized UNet, VAE and text encoder, written by the reference libraries."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).save_pretrained(folder / "unet")
    AutoencoderKL(**SD15_VAE).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).save_pretrained(folder / "text_encoder")
    index = {"_class_name": "StableDiffusionPipeline", **{name: list(kind) for name, kind in LAYOUT.items()}}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


# --- one measurement (runs in its own process) ---------------------------------------------------------------------
def loaders(side: str) -> dict[str, object]:
    """component name -> a callable(folder) that loads it, for our side or the reference's."""
    if side == "reference":
        import diffusers
        import transformers

        return {
            "unet": lambda f: diffusers.UNet2DConditionModel.from_pretrained(f, subfolder="unet"),
            "vae": lambda f: diffusers.AutoencoderKL.from_pretrained(f, subfolder="vae"),
            "text_encoder": lambda f: transformers.CLIPTextModel.from_pretrained(f / "text_encoder"),
        }
    from difframe import Framework

    framework = Framework()
    found = {}
    for name, layout in LAYOUT.items():
        registration = framework.registry.for_layout(*layout, kind="model")
        if registration is not None:
            factory = framework.load_factory(registration)
            found[name] = lambda f, factory=factory, name=name: factory.from_pretrained(f, subfolder=name)
    return found


def unet_call(unet, side: str, dtype=None):
    import torch

    dtype = dtype or torch.float32
    sample, context = torch.randn(2, 4, 32, 32, dtype=dtype), torch.randn(2, 77, 768, dtype=dtype)  # 256x256, batch 2
    if side == "reference":
        return lambda: unet(sample, 500, context).sample
    return lambda: unet(sample, 500, context)


def worker(case: str, side: str, folder: Path, threads: int, repeat: int, components: list[str]) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    load = loaders(side)  # imports happen here, before any timer starts
    result: dict = {}
    if case == "load":
        wall, cpu = time.perf_counter(), time.process_time()
        models = {name: load[name](folder) for name in components}
        result["seconds"] = [(time.perf_counter() - wall, time.process_time() - cpu)]
        result["loaded"] = sorted(models)
    elif case in ("unet", "unet-channels-last", "unet-bf16"):
        unet = load["unet"](folder)
        if case == "unet-channels-last":
            unet.to(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if case == "unet-bf16" else torch.float32
        step = unet_call(unet.to(dtype), side, dtype)
        with torch.no_grad():
            step()  # warm-up
            result["seconds"] = [_timed(step) for _ in range(repeat)]
    elif case == "vae-decode":
        vae = load["vae"](folder)
        latents = torch.randn(1, 4, 32, 32)
        decode = (lambda: vae.decode(latents).sample) if side == "reference" else (lambda: vae.decode(latents))
        with torch.no_grad():
            decode()
            result["seconds"] = [_timed(decode) for _ in range(repeat)]
    elif case == "memory":
        models = {name: load[name](folder) for name in components}
        with torch.no_grad():
            unet_call(models["unet"], side)()
        result["seconds"] = []
        result["loaded"] = sorted(models)
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is steadier when other work shares the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: str, side: str, args, components: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", case, side, "--folder", str(args.folder)]
    command += ["--threads", str(args.threads), "--repeat", str(args.repeat), "--components", ",".join(components)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the table ------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per process, and load rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--folder", type=Path, help="reuse (or create) the saved random model here")
    parser.add_argument(
        "--only", help="comma-separated cases: load,unet,unet-channels-last,unet-bf16,vae-decode,memory"
    )
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--components", default="unet,vae,text_encoder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(*args.worker, args.folder, args.threads, args.repeat, args.components.split(","))
        print(json.dumps(result))
        return

    temporary = None
    if args.folder is None:
        temporary = tempfile.TemporaryDirectory(prefix="difframe-bench-")
        args.folder = Path(temporary.name)
    if not (args.folder / "model_index.json").is_file():
        print(f"saving a random SD 1.5-sized model to {args.folder} ...", file=sys.stderr)
        save_reference_model(args.folder)

    ours = [name for name in LAYOUT if name in _our_components()]
    missing = [name for name in LAYOUT if name not in ours]
    rows = []

    def compare(label: str, case: str, components: list[str], rounds: int, key: str = "seconds") -> None:
        """Alternate processes, ours then the reference's, so load on the machine hits both sides alike."""
        if args.only and case not in args.only.split(","):
            return
        samples: dict[str, list] = {"ours": [], "reference": []}
        for _ in range(rounds):
            for side in samples:
                run = measure(case, side, args, components)
                samples[side] += run["seconds"] if key == "seconds" else [(run[key], run[key])]
        medians = {side: [statistics.median(s[i] for s in values) for i in (0, 1)] for side, values in samples.items()}
        print(f"  {label}: {medians}", file=sys.stderr, flush=True)
        rows.append((label, medians["ours"], medians["reference"], "s" if key == "seconds" else "MB"))

    loaded = "+".join(ours)
    compare(f"load {loaded}", "load", ours, rounds=args.repeat)
    compare("UNet forward, 256x256, batch 2", "unet", ["unet"], rounds=2)
    compare("UNet forward, channels_last (both)", "unet-channels-last", ["unet"], rounds=2)
    compare("UNet forward, bfloat16 (both)", "unet-bf16", ["unet"], rounds=2)
    if "vae" in ours:
        compare("VAE decode, 256x256, batch 1", "vae-decode", ["vae"], rounds=2)
    compare(f"peak RSS: load {loaded} + one UNet step", "memory", ours, rounds=2, key="maxrss_mb")

    import torch

    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads, medians; "
        f"`.venv/bin/python bench/models.py --repeat {args.repeat}`.\n"
    )
    print("| what | ours | reference | ours / reference (wall) | ours / reference (CPU time) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, mine, theirs, unit in rows:
        if unit == "MB":
            print(f"| {label} | {mine[0]:.0f} MB | {theirs[0]:.0f} MB | {mine[0] / theirs[0]:.2f}x | |")
            continue
        print(
            f"| {label} | {mine[0]:.2f} s (CPU {mine[1]:.2f} s) | {theirs[0]:.2f} s (CPU {theirs[1]:.2f} s) | "
            f"{mine[0] / theirs[0]:.2f}x | {mine[1] / theirs[1]:.2f}x |"
        )
    if missing:
        print(f"\nNot measured on our side (no plugin installed loads them): {', '.join(missing)}.")
    if temporary is not None:
        temporary.cleanup()


def _our_components() -> list[str]:
    from difframe import Framework

    framework = Framework()
    return [name for name, layout in LAYOUT.items() if framework.registry.for_layout(*layout, kind="model")]


if __name__ == "__main__":
    main()
