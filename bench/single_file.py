"""Memory of loading a single-file checkpoint: ours against the reference's ``from_single_file``.

    flock /tmp/heavy.lock .venv/bin/python bench/single_file.py [--work /tmp/difframe-single-file]

A 4 GB fp32 Stable Diffusion 1.5 checkpoint (full architecture, random weights) is written once under --work: the
reference saves the model folder, we convert it to the original single-file layout. Each loader then runs in a
subprocess of its own and reports its peak resident memory (VmHWM) after loading, and again after reading every
weight once (what the first image does), with the anonymous / file-backed split at the end: memory-mapped weights
are file-backed pages the kernel can drop and re-read, a converted copy is anonymous memory.
Prints a markdown table (MiB) and the ratios ours / reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LOADERS = {
    "ours": """
from difframe import Framework
pipe = Framework().build("stable-diffusion", model=FILE, scheduler="pndm", progress=False)
assert pipe.single_file.architecture == "sd1", pipe.single_file
""",
    "reference": """
import diffusers
pipe = diffusers.StableDiffusionPipeline.from_single_file(FILE, config=FOLDER, local_files_only=True,
                                                          safety_checker=None)
""",
}
MEASURE = """
import json, sys, torch
FILE, FOLDER = sys.argv[1], sys.argv[2]
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
import diffusers, transformers, difframe_stable_diffusion.single_file  # imports are not the loaders' memory
baseline = status()["VmRSS"]
LOADER
loaded = status()
with torch.no_grad():
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        total = sum(float(p.sum()) for p in model.parameters())
touched = status()
print(json.dumps({"baseline": baseline, "loaded": loaded, "touched": touched}))
"""


def prepare(work: Path) -> tuple[Path, Path]:
    folder, file = work / "sd15-random", work / "sd15-random.safetensors"
    if file.is_file():
        return file, folder
    work.mkdir(parents=True, exist_ok=True)
    script = f"""
import torch, diffusers, transformers
from difframe_clip import write_tokenizer_folder
torch.manual_seed(0)
text = transformers.CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
    num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu")
vae = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
tokenizer = transformers.CLIPTokenizer.from_pretrained(write_tokenizer_folder({str(work / "tokenizer")!r}))
scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
diffusers.StableDiffusionPipeline(vae=diffusers.AutoencoderKL(**vae), text_encoder=transformers.CLIPTextModel(text),
    tokenizer=tokenizer, unet=diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768),
    scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
).save_pretrained({str(folder)!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    convert = f"""
from difframe import Framework
Framework().build("stable-diffusion", model={str(folder)!r}).save_single_file({str(file)!r})
"""
    subprocess.run([sys.executable, "-c", convert], check=True)
    return file, folder


def measure(loader: str, file: Path, folder: Path) -> dict:
    code = MEASURE.replace("LOADER", LOADERS[loader])
    done = subprocess.run(
        [sys.executable, "-c", code, str(file), str(folder)], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/difframe-single-file"))
    args = parser.parse_args()
    file, folder = prepare(args.work)
    print(f"checkpoint: {file} ({file.stat().st_size / 2**30:.2f} GiB, fp32, SD 1.5 architecture)\n")
    results = {name: measure(name, file, folder) for name in LOADERS}
    rows = [
        ("peak RSS after loading", lambda r: r["loaded"]["VmHWM"]),
        ("peak RSS after loading, minus imports", lambda r: r["loaded"]["VmHWM"] - r["baseline"]),
        ("peak RSS after reading every weight", lambda r: r["touched"]["VmHWM"]),
        ("  of which anonymous at the end", lambda r: r["touched"]["RssAnon"]),
        ("  of which file-backed at the end", lambda r: r["touched"]["RssFile"]),
    ]
    print("| MiB | ours | reference | ours / reference |")
    print("|---|---:|---:|---:|")
    for label, value in rows:
        ours, reference = value(results["ours"]), value(results["reference"])
        print(f"| {label} | {ours} | {reference} | {ours / reference:.2f} |")


if __name__ == "__main__":
    main()
