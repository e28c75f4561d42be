"""Train the built-in model from scratch: the VAE first, then the text encoder and UNet together.

    python -m difframe_shapes_model.train --out runs/shapes          # the shipped recipe
    python -m difframe_shapes_model.train --out runs/test --tiny --vae-steps 20 --unet-steps 20

Seeded and resumable: every random draw of step n comes from a generator seeded with (seed, stage, n), and a
checkpoint (written atomically every few minutes) holds the networks, optimisers and EMA weights; run the same
command again to go on from it, or with a larger --unet-steps to extend a finished run (the learning rate does not
depend on the planned length). Ends by writing the pipeline folder (fp16 safetensors) to <out>/model;
--snapshot-every n also exports <out>/snapshots/unet-<step> every n UNet steps, to choose where to stop.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .architecture import SCHEDULE, configs
from .data import make_dataset

STAGES = ("vae", "unet", "done")


@dataclass
class Recipe:
    seed: int = 0
    images: int = 40_000
    vae_steps: int = 2_000
    vae_batch: int = 16
    vae_crop: int = 32  # the autoencoder is convolutional: 32x32 crops teach it the same at a quarter of the cost
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_edge_weight: float = 0.5
    unet_steps: int = 10_000
    unet_batch: int = 32
    lr: float = 5e-4
    warmup_steps: int = 500
    caption_dropout: float = 0.1
    # From UNet step caption_noise_from on, this fraction of pairs get another image's caption, as web-scraped
    # pairs often do: the model then samples from a broad p(image | caption) and needs guidance, as SD does.
    caption_noise: float = 0.0
    caption_noise_from: int = 0
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16"] = "no"
    tiny: bool = False


def _generator(recipe: Recipe, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(recipe.seed * 1_000_003 + STAGES.index(stage) * 100_000_007 + step)


def _same_past(saved: dict[str, Any], recipe: Recipe, unet_step: int) -> bool:
    """Whether `recipe` trains the first `unet_step` UNet steps as the `saved` recipe did. The planned length and a
    caption-noise phase that has not begun change nothing before them, so a run may be extended with either."""

    def past(values: dict[str, Any]) -> dict[str, Any]:
        values = {**dataclasses.asdict(Recipe()), **values, "unet_steps": 0}  # fields added later: their defaults
        if values["caption_noise"] == 0 or values["caption_noise_from"] >= unet_step:
            values.update(caption_noise=0.0, caption_noise_from=0)
        return values

    return past(saved) == past(dataclasses.asdict(recipe))


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


class Trainer:
    def __init__(self, out: Path, recipe: Recipe, progress: bool = True, snapshot_every: int = 0) -> None:
        from difframe_clip.vocab import write_tokenizer_folder
        from difframe_sd_unet.unet import UNet2DConditionModel
        from difframe_vae.autoencoder_kl import AutoencoderKL
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        self.out, self.recipe, self.progress, self.snapshot_every = out, recipe, progress, snapshot_every
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(recipe.seed)
        vae_config, unet_config, text_config = configs(recipe.tiny)
        self.vae = AutoencoderKL(**vae_config)
        self.unet = UNet2DConditionModel(**unet_config)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
        self.tokenizer_folder = write_tokenizer_folder(out / "tokenizer")
        self.tokenizer = CLIPTokenizer.from_pretrained(self.tokenizer_folder)
        if recipe.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
            self.unet.enable_gradient_checkpointing()
            self.text_encoder.gradient_checkpointing_enable()
        images, scenes = make_dataset(recipe.images, recipe.seed)
        self.images = torch.from_numpy(images)
        self.ids = self._tokenize([scene.caption for scene in scenes])
        self.empty_ids = self._tokenize([""])
        betas = torch.linspace(SCHEDULE["beta_start"] ** 0.5, SCHEDULE["beta_end"] ** 0.5, 1000) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=recipe.vae_lr)
        self.parameters = [*self.unet.parameters(), *self.text_encoder.parameters()]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=recipe.lr, weight_decay=0.01)
        self.ema = [p.detach().clone() for p in self.parameters]
        self.stage, self.step, self.scaling_factor = "vae", 0, 1.0
        self.latents: torch.Tensor | None = None
        self._resume()

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids as the pipeline makes them: padded to 77 with <|endoftext|>, no attention mask."""
        return self.tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids

    # --- state -------------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _resume(self) -> None:
        if not self.checkpoint_path.is_file():
            return
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if not _same_past(state["recipe"], self.recipe, state["step"] if state["stage"] != "vae" else 0):
            raise ValueError(
                f"{self.checkpoint_path} was written with another recipe ({state['recipe']}); use another --out "
                "folder or delete the checkpoint to start over"
            )
        if state["stage"] != "vae" and state["step"] > self.recipe.unet_steps:
            raise ValueError(
                f"{self.checkpoint_path} is already at UNet step {state['step']}, past --unet-steps "
                f"{self.recipe.unet_steps}; a run cannot go back: export a snapshot (--snapshot-every) or use another "
                "--out folder"
            )
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        for mine, saved in zip(self.ema, state["ema"]):
            mine.copy_(saved)
        self.stage, self.step, self.scaling_factor = state["stage"], state["step"], state["scaling_factor"]
        if self.stage == "done" and self.step < self.recipe.unet_steps:
            self.stage = "unet"
        self._forget_log_after_checkpoint()

    def _forget_log_after_checkpoint(self) -> None:
        """Drop log rows written after the checkpoint: those steps run again, and would be logged twice."""
        log = self.out / "log.jsonl"
        if not log.is_file():
            return

        def position(line: str) -> tuple[int, int]:
            row = json.loads(line)
            return STAGES.index(row["stage"]), row["step"]

        rows = [line for line in log.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if position(line) <= (STAGES.index(self.stage), self.step)]
        if len(kept) < len(rows):
            partial = log.with_suffix(".jsonl.partial")
            partial.write_text("".join(line + "\n" for line in kept))
            os.replace(partial, log)

    def save_checkpoint(self) -> None:
        state = {
            "recipe": dataclasses.asdict(self.recipe),
            "stage": self.stage,
            "step": self.step,
            "scaling_factor": self.scaling_factor,
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
        }
        partial = self.checkpoint_path.with_suffix(".pt.partial")
        torch.save(state, partial)
        os.replace(partial, self.checkpoint_path)

    def log(self, **values: Any) -> None:
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps({"stage": self.stage, "step": self.step, **values}) + "\n")

    # --- stages ------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        started = time.monotonic()
        if self.stage == "vae":
            self._loop(self.recipe.vae_steps, self._vae_step, "autoencoder")
            self.stage, self.step = "unet", 0
            self.save_checkpoint()
        self._encode_dataset()
        if self.stage == "unet":
            self._loop(self.recipe.unet_steps, self._unet_step, "unet + text encoder")
            self.stage = "done"
            self.save_checkpoint()
        model = self.export(self.out / "model")
        self.log(event="exported", seconds=round(time.monotonic() - started, 1))
        return model

    def _loop(self, steps: int, step_fn: Any, label: str) -> None:
        last_save, window = time.monotonic(), []
        bar = tqdm(total=steps, initial=self.step, desc=label, disable=not self.progress, dynamic_ncols=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.recipe.mixed_precision == "bf16")
        while self.step < steps:
            with autocast:
                loss = step_fn(_generator(self.recipe, self.stage, self.step), steps)
            self.step += 1
            window.append(loss)
            bar.update(1)
            if self.step % self.recipe.log_every == 0 or self.step == steps:
                self.log(loss=round(sum(window) / len(window), 5))
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                window = []
            if self.stage == "unet" and self.snapshot_every and self.step % self.snapshot_every == 0:
                self.export(self.out / "snapshots" / f"unet-{self.step:05d}")
            if time.monotonic() - last_save > self.recipe.checkpoint_minutes * 60:
                self.save_checkpoint()
                last_save = time.monotonic()
        bar.close()

    def _vae_step(self, generator: torch.Generator, steps: int) -> float:
        index = torch.randint(len(self.images), (self.recipe.vae_batch,), generator=generator)
        pixels = _to_pixels(self.images[index])
        crop = self.recipe.vae_crop
        if crop < pixels.shape[-1]:
            top, left = (int(v) for v in torch.randint(0, pixels.shape[-1] - crop + 1, (2,), generator=generator))
            pixels = pixels[..., top : top + crop, left : left + crop]
        posterior = self.vae.encode(pixels)
        reconstruction = self.vae.decode(posterior.sample(generator=generator)).float()
        loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)
        loss = loss + self.recipe.vae_edge_weight * sum(
            F.l1_loss(a, b) for a, b in zip(_edges(reconstruction), _edges(pixels))
        )
        loss = loss + self.recipe.vae_kl_weight * posterior.kl().float().mean()
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_optimizer.step()
        return loss.item()

    @torch.no_grad()
    def _encode_dataset(self) -> None:
        """Mean latents of every image, scaled to unit variance (the scaling_factor of the shipped VAE)."""
        self.vae.eval()
        parts = [self.vae.encode(_to_pixels(self.images[i : i + 256])).mode() for i in range(0, len(self.images), 256)]
        latents = torch.cat(parts)
        if self.stage == "unet" and self.step == 0:
            self.scaling_factor = float(1 / latents.std())
        self.latents = latents * self.scaling_factor

    def _learning_rate(self) -> float:
        """Linear warm-up, then constant: the weights after n steps do not depend on the planned total, so a run
        stopped early is reproduced exactly by the same recipe with --unet-steps n."""
        return self.recipe.lr * min(1.0, (self.step + 1) / self.recipe.warmup_steps)

    def _unet_step(self, generator: torch.Generator, steps: int) -> float:
        batch = self.recipe.unet_batch
        index = torch.randint(len(self.latents), (batch,), generator=generator)
        latents = self.latents[index]
        ids = self.ids[index].clone()
        dropped = torch.rand(batch, generator=generator) < self.recipe.caption_dropout
        ids[dropped] = self.empty_ids
        timesteps = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        if self.recipe.caption_noise and self.step >= self.recipe.caption_noise_from:
            # drawn after everything else, so the clean steps before this phase draw exactly what they always did
            mismatched = (torch.rand(batch, generator=generator) < self.recipe.caption_noise) & ~dropped
            others = torch.randint(len(self.ids), (batch,), generator=generator)
            ids[mismatched] = self.ids[others[mismatched]]
        alpha = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        context = self.text_encoder(ids).last_hidden_state
        prediction = self.unet(noisy, timesteps, context).float()
        snr = (alpha / (1 - alpha)).view(-1)
        weight = snr.clamp(max=self.recipe.min_snr_gamma) / snr  # min-SNR weighting (Hang et al. 2023)
        loss = (weight * (prediction - noise).square().mean(dim=(1, 2, 3))).mean()
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        decay = min(self.recipe.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.parameters], 1 - decay)
        return loss.item()

    # --- the result --------------------------------------------------------------------------------------------
    def export(self, folder: Path) -> Path:
        """The pipeline folder in the shared layout, fp16 safetensors, EMA weights for the UNet and text encoder."""
        from difframe import Framework
        from difframe_stable_diffusion.text_to_image import StableDiffusionPipeline

        unet, text_encoder, vae = (copy.deepcopy(m) for m in (self.unet, self.text_encoder, self.vae))
        for target, ema in zip([*unet.parameters(), *text_encoder.parameters()], self.ema):
            target.data.copy_(ema)
        vae.register_to_config(scaling_factor=self.scaling_factor)
        scheduler = Framework().scheduler("dpmpp", SCHEDULE)
        pipeline = StableDiffusionPipeline(
            vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=self.tokenizer, unet=unet.half(),
            scheduler=scheduler,
        )  # fmt: skip
        pipeline.save_pretrained(folder)
        shutil.copy(self.out / "log.jsonl", folder / "training_log.jsonl") if (
            self.out / "log.jsonl"
        ).exists() else None
        # the recipe that reproduces these weights: a run stopped early is the same run with fewer UNet steps
        recipe = dataclasses.replace(self.recipe, unet_steps=self.step) if self.stage == "unet" else self.recipe
        (folder / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
        return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, log, and model/")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--export-only", action="store_true", help="write <out>/model from the last checkpoint, without training"
    )
    parser.add_argument(
        "--snapshot-every", type=int, default=0, help="also export <out>/snapshots/unet-<step> every n UNet steps"
    )
    for field in dataclasses.fields(Recipe):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=field.default)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=field.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = Trainer(args.out, recipe, progress=not args.no_progress, snapshot_every=args.snapshot_every)
    if args.export_only:
        model = trainer.export(args.out / "model")
    else:
        model = trainer.run()
    print(model)


if __name__ == "__main__":
    main()
