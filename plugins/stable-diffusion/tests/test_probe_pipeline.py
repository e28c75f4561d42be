"""A probe of bad inputs and injected faults across generating (text-to-image, image-to-image, inpainting), building
a pipeline and `difframe generate`, run as a new user would. Each case is classified by what actually happened:

- before: a clear error (the expected type, a message naming the problem) before any weight is read (CLI, build)
  or before any model runs (a call on a loaded pipeline);
- during: a clear error after some work (a NaN that appears while denoising, a full disk while saving);
- survived: no error, and nothing lost or wrong (the right image, no half-written file, honest parameters);
- crash (a raw or unclear error) and silent (no error where one was due): failures.

The goal (docs/reliability.md, "Pipelines"): no crash, no silent result, at least 95% of bad inputs answered
before any weight is read. `pytest -s` prints the table.
"""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from difframe.errors import DifframeError
from PIL import Image

CLEAR = (ValueError, TypeError, OSError, DifframeError)


@dataclass
class Case:
    name: str
    kind: str  # a call on a loaded pipeline ("api", "i2i", "inpaint"), "build", "cli", "legal" or "fault"
    run: Callable[[Any], Any]
    match: str = ""  # what the message must say
    expect: str = "before"


def call(pipeline: str = "t2i", **kwargs: Any) -> Callable[[Any], Any]:
    def run(env: Any) -> Any:
        base = {"prompt": "a cat", "num_inference_steps": 2}
        if pipeline != "t2i":
            base["image"] = env.image
        if pipeline == "inpaint":
            base["mask_image"] = env.mask
        return env.pipes[pipeline](**{**base, **kwargs})

    return run


def single(env: Any, **options: Any) -> Any:
    """A build from the single-file copy of the tiny model (whose architecture is named by its folder)."""
    options.setdefault("config", str(env.model))
    return env.framework.build("stable-diffusion", model=str(options.pop("model", env.single)), **options)


def build(**options: Any) -> Callable[[Any], Any]:
    return lambda env: env.framework.build("stable-diffusion", model=options.pop("model", env.model), **options)


def cli(*argv: str) -> Callable[[Any], Any]:
    return lambda env: env.cli(*[env.fill(a) for a in argv])


NAN_ARRAY = np.full((32, 32, 3), 0.5, dtype=np.float32)
NAN_ARRAY[1, 2, 0] = np.nan
NAN_MASK = np.zeros((32, 32), dtype=np.float32)
NAN_MASK[0, 0] = np.nan

CASES = [
    # sizes
    Case("height=0", "api", call(height=0), "height must be a positive integer"),
    Case("width=0", "api", call(width=0), "width must be a positive integer"),
    Case("height=-32", "api", call(height=-32), "positive integer"),
    Case("height=30 (not a multiple)", "api", call(height=30), "multiples of"),
    Case("height=32.0", "api", call(height=32.0), "positive integer"),
    Case("height='32'", "api", call(height="32"), "positive integer"),
    Case("100000x100000", "api", call(height=100_000, width=100_000), "needs at least .* GiB"),
    # steps, guidance
    Case("steps=0", "api", call(num_inference_steps=0), "at least 1"),
    Case("steps=-1", "api", call(num_inference_steps=-1), "at least 1"),
    Case("steps=2.5", "api", call(num_inference_steps=2.5), "integer"),
    Case("steps=True", "api", call(num_inference_steps=True), "integer"),
    Case("steps=1001", "api", call(num_inference_steps=1001), "cannot exceed num_train_timesteps"),
    Case("guidance=nan", "api", call(guidance_scale=float("nan")), "guidance_scale"),
    Case("guidance=inf", "api", call(guidance_scale=float("inf")), "guidance_scale"),
    Case("guidance=1e6", "api", call(guidance_scale=1e6), "at most 100"),
    Case("guidance='7'", "api", call(guidance_scale="7"), "guidance_scale must be a number"),
    Case("guidance_rescale=2", "api", call(guidance_rescale=2.0), r"\[0, 1\]"),
    Case("guidance_rescale=-0.1", "api", call(guidance_rescale=-0.1), r"\[0, 1\]"),
    Case("num_images_per_prompt=0", "api", call(num_images_per_prompt=0), "at least 1"),
    Case("num_images_per_prompt=1.5", "api", call(num_images_per_prompt=1.5), "integer"),
    Case("num_images_per_prompt=10**12", "api", call(num_images_per_prompt=10**12), "all held until the call"),
    # seeds and generators
    Case("seed=2**40", "api", call(seed=2**40), "out of range"),
    Case("seeds=[2**32]", "api", call(seeds=[2**32]), "out of range"),
    Case("seed=-1", "api", call(seed=-1), "out of range"),
    Case("seed=1.5", "api", call(seed=1.5), "seed must be an integer"),
    Case("seed='7'", "api", call(seed="7"), "seed must be an integer"),
    Case("seeds for 2 of 1 images", "api", call(seeds=[1, 2]), "2 seeds for 1 images"),
    Case("seed and seeds", "api", call(seed=1, seeds=[1]), "not both"),
    Case("generator=5", "api", call(generator=5), "torch.Generator"),
    Case("3 generators for 1 image", "api", call(generator=[torch.Generator()] * 3), "3 generators"),
    Case("seed and generator", "api", call(seed=1, generator=torch.Generator()), "not both"),
    # prompts and embeddings
    Case("prompt=None", "api", call(prompt=None), "pass a prompt"),
    Case("prompt=123", "api", call(prompt=123), "string or a list of strings"),
    Case("prompt=[]", "api", call(prompt=[]), "empty list"),
    Case("prompt=['a', 3]", "api", call(prompt=["a", 3]), "string or a list of strings"),
    Case("3 negatives for 2 prompts", "api", call(prompt=["a", "b"], negative_prompt=["x"] * 3), "3 entries"),
    Case("prompt and prompt_embeds", "api", call(prompt_embeds=torch.zeros(1, 77, 32)), "not both"),
    Case("prompt_embeds 2-D", "api", call(prompt=None, prompt_embeds=torch.zeros(77, 32)), "batch, tokens, dim"),
    Case("prompt_embeds width 768", "api", call(prompt=None, prompt_embeds=torch.zeros(1, 77, 768)), "width 768"),
    Case(
        "prompt_embeds NaN",
        "api",
        call(prompt=None, prompt_embeds=torch.full((1, 77, 32), float("nan"))),
        "NaN or infinite",
    ),
    Case(
        "negative_prompt_embeds shape",
        "api",
        call(prompt=None, prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(2, 77, 32)),
        "negative_prompt_embeds has shape",
    ),
    Case("latents wrong shape", "api", call(latents=torch.zeros(1, 4, 8, 8)), "latents must be"),
    Case("latents NaN", "api", call(latents=torch.full((1, 4, 16, 16), float("nan"))), "NaN or infinite"),
    Case("clip_skip=-1", "api", call(clip_skip=-1), "non-negative"),
    Case("clip_skip=99", "api", call(clip_skip=99), "leaves no layer"),
    Case("clip_skip=1.5", "api", call(clip_skip=1.5), "non-negative integer"),
    # outputs, callbacks, budgets
    Case("output_type='jpeg'", "api", call(output_type="jpeg"), "output_type"),
    Case("cross_attention_kwargs=5", "api", call(cross_attention_kwargs=5), "must be a dict"),
    Case("cross_attention_kwargs, no add-on", "api", call(cross_attention_kwargs={"scale": 0.5}), "would be ignored"),
    Case("callback not callable", "api", call(callback_on_step_end=5), "callable"),
    Case(
        "callback returns a list",
        "api",
        call(callback_on_step_end=lambda *a: [1]),
        "must return a dict",
        expect="during",
    ),
    Case(
        "callback returns other-shaped latents",
        "api",
        call(callback_on_step_end=lambda p, i, t, x: {"latents": torch.zeros(1, 4, 2, 2)}),
        "must keep the shape",
        expect="during",
    ),
    Case("memory_budget='lots'", "api", call(memory_budget="lots"), "memory budget"),
    Case("memory_budget=0", "api", call(memory_budget=0), "positive"),
    Case("memory_budget=-5", "api", call(memory_budget=-5), "positive"),
    # image-to-image
    Case("image=None", "i2i", call("i2i", image=None), "image is required"),
    Case("image='file.png' (a string)", "i2i", call("i2i", image="file.png"), "PIL image"),
    Case("image=[]", "i2i", call("i2i", image=[]), "empty list"),
    Case("strength=1.5", "i2i", call("i2i", strength=1.5), r"\[0, 1\]"),
    Case("strength=-0.1", "i2i", call("i2i", strength=-0.1), r"\[0, 1\]"),
    Case("strength='0.5'", "i2i", call("i2i", strength="0.5"), r"\[0, 1\]"),
    Case("strength x steps < 1", "i2i", call("i2i", strength=0.1, num_inference_steps=5), "no denoising step"),
    Case("NaN pixel", "i2i", call("i2i", image=NAN_ARRAY), "NaN or infinite"),
    Case("int32 array", "i2i", call("i2i", image=np.zeros((32, 32, 3), dtype=np.int32)), "int32"),
    Case("float array in 0-255", "i2i", call("i2i", image=np.full((32, 32, 3), 200.0)), r"values in \[0, 1\]"),
    Case(
        "images of two sizes",
        "i2i",
        call("i2i", prompt=["a", "b"], image=[np.zeros((32, 32, 3)), np.zeros((64, 64, 3))]),
        "different sizes",
    ),
    Case("2 images for 3 prompts", "i2i", call("i2i", prompt=["a", "b", "c"], image=[NAN_ARRAY] * 2), "2 images"),
    Case("a 2x2 init image", "i2i", call("i2i", image=np.zeros((2, 2, 3))), "smaller than the model's size step"),
    Case("image of a dict", "i2i", call("i2i", image={"a": 1}), "PIL image"),
    # inpainting
    Case("mask of another size", "inpaint", call("inpaint", mask_image=np.zeros((64, 64))), "same size"),
    Case("mask_image=None", "inpaint", call("inpaint", mask_image=None), "mask_image is required"),
    Case("NaN in the mask", "inpaint", call("inpaint", mask_image=NAN_MASK), "NaN or infinite"),
    Case("2 masks for 1 prompt", "inpaint", call("inpaint", mask_image=[NAN_MASK] * 2), "2 mask_images"),
    # building a pipeline (before any weight is read)
    Case("scheduler='warp'", "build", build(scheduler="warp"), "no scheduler named 'warp'"),
    Case("attention='flashy'", "build", build(attention="flashy"), "no attention processor named 'flashy'"),
    Case("dtype='float7'", "build", build(dtype="float7"), "unknown dtype"),
    Case("dtype='int8'", "build", build(dtype="int8"), "int8"),
    Case("cpu_offload='bogus'", "build", build(cpu_offload="bogus"), "unknown device 'bogus'"),
    Case("memory_budget='lots'", "build", build(memory_budget="lots"), "memory budget"),
    Case("prepacked_convolutions='yes'", "build", build(prepacked_convolutions="yes"), "prepacked_convolutions"),
    Case("scaling_factor 0 in vae/config.json", "build", lambda env: build(model=env.zero_scale)(env), "scaling_f"),
    Case("a missing model folder", "build", build(model="/no/such/model"), "does not exist"),
    # building from a single-file checkpoint (before any tensor of the file is read)
    Case("file: scheduler='warp'", "build", lambda env: single(env, scheduler="warp"), "no scheduler named 'warp'"),
    Case("file: misspelt option", "build", lambda env: single(env, atention="sdpa"), "unknown option.*attention"),
    Case("file: dtype='int8'", "build", lambda env: single(env, dtype="int8"), "int8"),
    Case("file: device='bogus'", "build", lambda env: single(env, device="bogus"), "not a device name"),
    Case("file: variant='fp16'", "build", lambda env: single(env, variant="fp16"), "not to the file"),
    Case("file: config='sd9'", "build", lambda env: single(env, config="sd9"), "sd9"),
    Case("file: truncated", "build", lambda env: single(env, model=env.truncated), "damaged or truncated"),
    Case("file: .ckpt without allow_pickle", "build", lambda env: single(env, model=env.pickle), "allow_pickle"),
    Case("file: a .txt", "build", lambda env: single(env, model=env.tmp / "notes.txt"), "unknown checkpoint type"),
    Case("file: lora_dir missing", "build", lambda env: single(env, lora_dir="/no/such"), "not a folder"),
    # difframe generate (before any weight is read)
    Case("--steps 0", "cli", cli("a cat", "--steps", "0"), "--steps must be a positive integer"),
    Case("--steps -3", "cli", cli("a cat", "--steps", "-3"), "--steps"),
    Case("--guidance nan", "cli", cli("a cat", "--guidance", "nan"), "guidance_scale"),
    Case("--guidance 1e9", "cli", cli("a cat", "--guidance", "1e9"), "at most 100"),
    Case("--guidance-rescale 3", "cli", cli("a cat", "--guidance-rescale", "3"), "guidance-rescale"),
    Case("--seed 2**40", "cli", cli("a cat", "--seed", str(2**40)), "out of range"),
    Case("--seed -5", "cli", cli("a cat", "--seed", "-5"), "out of range"),
    Case("--size 0", "cli", cli("a cat", "--size", "0"), "usage"),
    Case("--size abc", "cli", cli("a cat", "--size", "abc"), "usage"),
    Case("--size 30", "cli", cli("a cat", "--size", "30"), "multiples of 4"),
    Case("--size 100000", "cli", cli("a cat", "--size", "100000"), "needs at least .* GiB"),
    Case("--batch 0", "cli", cli("a cat", "--batch", "0"), "--batch"),
    Case("--batch 10**12", "cli", cli("a cat", "--batch", str(10**12)), "all held until the call"),
    Case("--clip-skip -1", "cli", cli("a cat", "--clip-skip", "-1"), "--clip-skip"),
    Case("--strength 1.5", "cli", cli("a cat", "--image", "{image}", "--strength", "1.5"), r"\[0, 1\]"),
    Case("--strength without --image", "cli", cli("a cat", "--strength", "0.5"), "--strength needs --image"),
    Case("--mask without --image", "cli", cli("a cat", "--mask", "{mask}"), "--mask needs --image"),
    Case("--image missing", "cli", cli("a cat", "--image", "{tmp}/none.png"), "--image"),
    Case("--image not an image", "cli", cli("a cat", "--image", "{tmp}/notes.txt"), "not a readable image"),
    Case("--mask of another size", "cli", cli("a cat", "--image", "{image}", "--mask", "{big_mask}"), "same size"),
    Case("--sampler warp", "cli", cli("a cat", "-s", "warp"), "no scheduler named 'warp'"),
    Case("--attention flashy", "cli", cli("a cat", "--attention", "flashy"), "flashy"),
    Case("--memory-budget lots", "cli", cli("a cat", "--memory-budget", "lots"), "memory budget"),
    Case("--device bogus", "cli", cli("a cat", "--device", "bogus"), "unknown device 'bogus'"),
    Case("-o is a file", "cli", cli("a cat", "-o", "{tmp}/notes.txt"), "is a file"),
    Case("--from-png of an unfinished image", "cli", cli("--from-png", "{unfinished}"), "unfinished image"),
    Case("--from-png without parameters", "cli", cli("--from-png", "{image}"), "no 'parameters'"),
    Case("no prompt", "cli", cli(), "give a prompt"),
    Case("-m missing folder", "cli", cli("a cat", "-m", "/no/such/model"), "does not exist"),
    Case("-m with scaling_factor 0", "cli", cli("a cat", "-m", "{zero_scale}"), "scaling_factor"),
    # inputs that are legal but easy to get wrong: a right result, with a warning where it may not be meant
    Case("16-bit grey init image", "legal", lambda env: env.sixteen_bit(), expect="survived"),
    Case("uint8 array init image", "legal", call("i2i", image=np.full((32, 32, 3), 128, np.uint8)), expect="survived"),
    Case("guidance 50 (warned)", "legal", call(guidance_scale=50.0), expect="survived"),
    Case("black mask (warned)", "legal", call("inpaint", mask_image=np.zeros((32, 32))), expect="survived"),
    # faults
    Case("4 threads on one pipeline", "fault", lambda env: env.threads(), expect="survived"),
    Case("set_scheduler during a call", "fault", lambda env: env.swap_sampler_mid_call(), expect="survived"),
    Case(
        "disk full while saving",
        "fault",
        lambda env: env.failing_save(OSError(errno.ENOSPC, "No space left on device")),
        match="No space left",
        expect="during",
    ),
    Case("Ctrl-C while saving", "fault", lambda env: env.failing_save(KeyboardInterrupt()), expect="survived"),
    Case("interrupt() after 1 of 3 steps", "fault", lambda env: env.interrupted(), expect="survived"),
    Case("Ctrl-C while denoising (CLI)", "fault", lambda env: env.cli_ctrl_c(), expect="survived"),
    Case("disk full while saving (CLI)", "fault", lambda env: env.cli_disk_full(), expect="survived"),
    Case("NaN from the UNet", "fault", lambda env: env.nan_unet(), "at step 2 of 2 .* UNet output", "during"),
]


class LostSomething(AssertionError):
    """A fault that left something lost or wrong."""


class Env:
    def __init__(self, h, framework, model, tmp_path, monkeypatch, capsys):
        self.h, self.framework, self.model, self.tmp = h, framework, model, tmp_path
        self.monkeypatch, self.capsys = monkeypatch, capsys
        self.pipes = {
            "t2i": h.cached(framework, model, "stable-diffusion", "ddim"),
            "i2i": h.cached(framework, model, "stable-diffusion-img2img", "ddim"),
            "inpaint": h.cached(framework, model, "stable-diffusion-inpaint", "ddim"),
        }
        self.image, self.mask = h.make_image(32), h.make_mask(32)
        self.image.save(tmp_path / "image.png")
        self.mask.save(tmp_path / "mask.png")
        h.make_mask(64).save(tmp_path / "big_mask.png")
        (tmp_path / "notes.txt").write_text("not an image")
        self.zero_scale = tmp_path / "zero-scale"
        shutil.copytree(model, self.zero_scale)
        config = json.loads((self.zero_scale / "vae" / "config.json").read_text())
        (self.zero_scale / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0}))
        stop = self.pipes["t2i"]("a cat", seed=1, num_inference_steps=3, callback_on_step_end=_stop_after_first)
        self.unfinished = stop.save(tmp_path / "unfinished", include_unfinished=True)[0]
        self.single = self.pipes["t2i"].save_single_file(tmp_path / "tiny.safetensors")
        self.truncated = tmp_path / "truncated.safetensors"
        self.truncated.write_bytes(self.single.read_bytes()[:4096])
        self.pickle = tmp_path / "tiny.ckpt"
        self.pickle.write_bytes(b"not looked at")
        self.loaded = False

    def fill(self, text: str) -> str:
        names = {"tmp": self.tmp, "image": self.tmp / "image.png", "mask": self.tmp / "mask.png"}
        names |= {"big_mask": self.tmp / "big_mask.png", "unfinished": self.unfinished, "zero_scale": self.zero_scale}
        return text.format(**{k: str(v) for k, v in names.items()})

    def cli(self, *argv: str) -> None:
        """Run `difframe generate`; a refusal becomes a ValueError carrying its message."""
        from difframe.cli import main

        if argv and "-m" not in argv:
            argv = (*argv, "-m", str(self.model))
        if "--steps" not in argv and "--from-png" not in argv:
            argv = (*argv, "--steps", "1")
        if "-o" not in argv:
            argv = (*argv, "-o", str(self.tmp / "out"))
        self.capsys.readouterr()
        try:
            code = main(["generate", *argv, "--no-progress"])
        except SystemExit as exit:  # argparse's own refusal, with its usage line
            code = exit.code
        err = self.capsys.readouterr().err
        if code != 0:
            raise ValueError(err.strip())

    # --- legal inputs and faults: each raises LostSomething if anything came out wrong ---------------------
    def sixteen_bit(self) -> None:
        from difframe_stable_diffusion.images import preprocess_images

        grey16 = Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16))
        grey8 = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
        if float((preprocess_images([grey16], 32, 32) - preprocess_images([grey8], 32, 32)).abs().max()) > 2 / 255:
            raise LostSomething("a 16-bit mid-grey is not read as mid-grey")
        self.pipes["i2i"]("a cat", image=grey16, num_inference_steps=2, seed=1)

    def threads(self) -> None:
        pipe = self.pipes["t2i"]
        kwargs = [dict(seed=s, num_inference_steps=2 + s % 2, output_type="np") for s in range(4)]
        alone = [pipe("a cat", **k).images for k in kwargs]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda k: pipe("a cat", **k).images, kwargs))
        if not all(np.array_equal(a, b) for a, b in zip(alone, together)):
            raise LostSomething("threads changed the images")

    def swap_sampler_mid_call(self) -> None:
        pipe = self.h.build(self.framework, self.model, scheduler="ddim")
        base = pipe("a cat", seed=2, num_inference_steps=3, output_type="np").images

        def swap(p, step, timestep, tensors):
            if step == 0:
                p.set_scheduler("euler_a")
            return {}

        out = pipe("a cat", seed=2, num_inference_steps=3, output_type="np", callback_on_step_end=swap)
        if not np.array_equal(out.images, base) or out.parameters[0].scheduler != "ddim":
            raise LostSomething("a sampler swapped mid-call changed that call")

    def failing_save(self, exception: BaseException) -> None:
        folder = self.tmp / f"save-{type(exception).__name__}"
        out = self.pipes["t2i"]("a cat", seed=1, num_inference_steps=1, num_images_per_prompt=2)
        original = Image.Image.save

        def half(image, fp, *args, **kwargs):
            buffer = io.BytesIO()
            original(image, buffer, *args, **kwargs)
            fp.write(buffer.getvalue()[:100])
            raise exception

        caught: BaseException | None = None
        with self.monkeypatch.context() as patch:
            patch.setattr(Image.Image, "save", half)
            try:
                out.save(folder)
            except BaseException as error:
                caught = error
        if caught is None or list(folder.iterdir()):
            raise LostSomething(f"no error, or left {[p.name for p in folder.iterdir()]}")
        if isinstance(caught, OSError):
            raise caught  # the disk-full error itself reaches the caller

    def interrupted(self) -> None:
        out = self.pipes["t2i"]("a cat", seed=1, num_inference_steps=3, callback_on_step_end=_stop_after_first)
        params = out.parameters[0]
        if out.finished != [False] or params.steps != 1 or "Interrupted: after 1 of 3 steps" not in params.to_text():
            raise LostSomething(f"an interrupted image claims {params.to_text()!r}")

    def cli_ctrl_c(self) -> None:
        from difframe.cli import main
        from difframe_stable_diffusion.common import StableDiffusionBase

        def ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt

        out = self.tmp / "ctrl-c"
        with self.monkeypatch.context() as patch:
            patch.setattr(StableDiffusionBase, "denoise", ctrl_c)
            code = main(["generate", "a cat", "-m", str(self.model), "--steps", "2", "-o", str(out), "--no-progress"])
        if code != 130 or list(out.glob("*.png")):
            raise LostSomething(f"Ctrl-C: exit {code}, files {list(out.iterdir())}")

    def cli_disk_full(self) -> None:
        from difframe.cli import main

        out = self.tmp / "disk-full"
        original = Image.Image.save

        def full(image, fp, *args, **kwargs):
            original(image, io.BytesIO(), *args, **kwargs)
            fp.write(b"\x89PNG")
            raise OSError(errno.ENOSPC, "No space left on device")

        with self.monkeypatch.context() as patch:
            patch.setattr(Image.Image, "save", full)
            code = main(["generate", "a cat", "-m", str(self.model), "--steps", "1", "-o", str(out), "--no-progress"])
        if code != 2 or list(out.iterdir()) or "No space left" not in self.capsys.readouterr().err:
            raise LostSomething(f"disk full: exit {code}, files {list(out.iterdir())}")

    def nan_unet(self) -> None:
        pipe = self.h.build(self.framework, self.model, scheduler="ddim")
        original, calls = pipe.unet.forward, []

        def forward(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append(1)
            if len(calls) == 2:
                (result[0] if isinstance(result, tuple) else getattr(result, "sample", result)).fill_(float("nan"))
            return result

        pipe.unet.forward = forward
        pipe.timings = {}
        pipe("a cat", seed=1, num_inference_steps=2)


def _stop_after_first(p, step, timestep, tensors):
    p.interrupt()


def classify(case: Case, env: Env) -> tuple[str, str]:
    """What happened: before / during / survived / crash / silent, and the message."""
    env.loaded = False
    for pipe in env.pipes.values():
        pipe.timings = {}
    try:
        case.run(env)
    except LostSomething as error:
        return "crash", f"lost: {error}"
    except CLEAR as error:
        message = str(error)
        if case.match and not re.search(case.match, message, re.S):
            return "crash", f"unclear {type(error).__name__}: {message}"
        if case.kind in ("build", "cli"):
            return ("during" if env.loaded else "before"), message
        ran = any(pipe.timings for pipe in env.pipes.values())
        return ("during" if ran or case.kind == "fault" else "before"), message
    except Exception as error:  # a raw error: the probe's failure
        return "crash", f"{type(error).__name__}: {error}"
    return ("survived" if case.expect == "survived" else "silent"), ""


def test_probe(h, framework, tiny_model, tmp_path, monkeypatch, capsys):
    import difframe.pipeline
    from difframe_stable_diffusion import single_file

    env = Env(h, framework, tiny_model, tmp_path, monkeypatch, capsys)
    load = difframe.pipeline._load_component

    def spy(*args, **kwargs):
        env.loaded = True
        return load(*args, **kwargs)

    monkeypatch.setattr(difframe.pipeline, "_load_component", spy)
    take = single_file.take

    def spy_file(*args, **kwargs):  # the tensors of a single file are read here
        env.loaded = True
        return take(*args, **kwargs)

    monkeypatch.setattr(single_file, "take", spy_file)
    results = []
    with pytest.warns(UserWarning):  # the legal-but-odd inputs warn; the rest must not crash
        for case in CASES:
            outcome, message = classify(case, env)
            results.append((case, outcome, message))
    rows = [f"{outcome:9} {case.kind:7} {case.name:40} {message[:110]}" for case, outcome, message in results]
    counts = Counter(outcome for _, outcome, _ in results)
    inputs = [r for r in results if r[0].kind not in ("fault", "legal")]
    before = sum(outcome == "before" for _, outcome, _ in inputs)
    with capsys.disabled():
        print("\n" + "\n".join(rows))
        kinds = Counter(case.kind for case, _, _ in results)
        print(
            f"\n{len(results)} cases, {len(inputs)} of them bad inputs; by kind {dict(kinds)}; outcomes {dict(counts)}"
        )
        print(f"bad inputs answered before any weight is read / any model runs: {before}/{len(inputs)}")
    failures = [row for row, (case, outcome, _) in zip(rows, results) if outcome != case.expect]
    assert not failures, "\n".join(failures)
    assert counts["crash"] == counts["silent"] == 0
    assert before >= 0.95 * len(inputs)
