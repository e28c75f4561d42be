"""Train an image encoder and an IP-Adapter for the built-in shapes model (its UNet, VAE and text encoder frozen).

Two phases, as the published IP-Adapter was made (a CLIP image encoder pretrained on its own, then frozen while the
adapter learns):

1. The image encoder, a small transformers CLIPVisionModelWithProjection (64x64 images, 8x8 patches, width 64, two
   layers, projection 64), is pretrained contrastively against the captions, as CLIP's is: its image embedding is
   matched with a learned projection of the frozen text encoder's features of every caption of the shapes domain
   (cross-entropy over the captions; the caption set is small enough to be the whole set of negatives).
2. With the encoder frozen, the plain IP-Adapter (ImageProjModel: 4 tokens, and to_k_ip / to_v_ip on each
   cross-attention layer, initialised from that layer's to_k / to_v) is trained with the diffusion loss: the image
   prompt is the training image itself, the text is its caption half of the time and the empty prompt otherwise;
   10% of image prompts are dropped (zero embedding, the unconditional image input of guidance).

The result is written in the published layout:

    python -m difframe_ip_adapter.shapes.train --out plugins/ip-adapter/difframe_ip_adapter/shapes/ip-adapter-shapes

(``models/ip-adapter_shapes.safetensors`` and ``models/image_encoder/``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VISION = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=64,
    patch_size=8,
    projection_dim=64,
)


def pretrain_encoder(
    encoder: torch.nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    caption_features: torch.Tensor,
    args: argparse.Namespace,
    generator: torch.Generator,
) -> None:
    """Phase 1: CLIP's objective with every caption as a candidate; ``targets[i]`` is image i's caption row."""
    text_projection = torch.nn.Linear(caption_features.shape[1], VISION["projection_dim"], bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
    trained = [*encoder.parameters(), *text_projection.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    log, hits = [], []
    for step in range(args.encoder_steps):
        index = torch.randint(0, len(pixels), (args.encoder_batch,), generator=generator)
        images = F.normalize(encoder(pixels[index]).image_embeds, dim=-1)
        texts = F.normalize(text_projection(caption_features), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * images @ texts.T
        loss = F.cross_entropy(logits, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append(loss.item())
        hits.append((logits.argmax(-1) == targets[index]).float().mean().item())
        if step % 100 == 0 or step == args.encoder_steps - 1:
            entry = {"encoder_step": step, "loss": round(float(np.mean(log[-100:])), 4)}
            print(json.dumps({**entry, "caption_accuracy": round(float(np.mean(hits[-100:])), 3)}), flush=True)
    encoder.requires_grad_(False).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (models/... inside)")
    parser.add_argument("--encoder-steps", type=int, default=3000, help="phase 1: contrastive encoder steps")
    parser.add_argument("--encoder-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2500, help="phase 2: adapter steps (encoder frozen)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from difframe import Framework
    from difframe_shapes_model.data import make_dataset
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..adapter import IPAdapterWeights, attach, cross_attention_layers
    from ..projection import ImageProjModel

    begin = time.perf_counter()
    pipe = Framework().build("stable-diffusion", prepacked_convolutions=False)
    unet, vae = pipe.unet.float().eval(), pipe.vae.float().eval()
    for model in (unet, vae, pipe.text_encoder):
        model.requires_grad_(False)
    pixels_uint8, scenes = make_dataset(args.images, args.data_seed)
    processor = CLIPImageProcessor(size=64, crop_size=64)
    clip_pixels = processor(list(pixels_uint8), return_tensors="pt").pixel_values
    with torch.no_grad():
        images = torch.from_numpy(pixels_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = torch.cat([vae.encode(images[i : i + 256]).mean for i in range(0, len(images), 256)])
        latents = latents * vae.config.scaling_factor
        captions = sorted({scene.caption for scene in scenes} | {""})
        text = pipe.encode_prompt(captions).float()
    caption_index = torch.tensor([captions.index(scene.caption) for scene in scenes])
    empty = captions.index("")
    print(json.dumps({"prepared_s": round(time.perf_counter() - begin, 1)}), flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))
    named = [i for i, caption in enumerate(captions) if caption]  # the empty prompt is no image's caption
    rows_of_named = torch.full((len(captions),), -1, dtype=torch.long)
    rows_of_named[named] = torch.arange(len(named))
    pretrain_encoder(encoder, clip_pixels, rows_of_named[caption_index], text[named].mean(1), args, generator)
    with torch.no_grad():
        image_embeds = torch.cat([encoder(clip_pixels[i : i + 500]).image_embeds for i in range(0, len(images), 500)])
    print(json.dumps({"encoder_s": round(time.perf_counter() - begin)}), flush=True)

    width = unet.config.cross_attention_dim
    projection = ImageProjModel(VISION["projection_dim"], width, tokens=4)
    to_k, to_v = {}, {}
    for name, attn in cross_attention_layers(unet):
        for target, source in ((to_k, attn.to_k), (to_v, attn.to_v)):
            linear = torch.nn.Linear(width, source.weight.shape[0], bias=False)
            linear.weight.data.copy_(source.weight.data)
            target[name] = linear
    adapter = IPAdapterWeights("ip-adapter_shapes", projection, to_k, to_v)
    attach(unet, [adapter])
    trained = list(adapter.parameters())
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alphas = torch.cumprod(1 - betas, dim=0)
    log = []
    for step in range(args.steps):
        index = torch.randint(0, len(latents), (args.batch,), generator=generator)
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (args.batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        use_caption = torch.rand(args.batch, generator=generator) < 0.5
        rows = torch.where(use_caption, caption_index[index], torch.full_like(index, empty))
        keep_image = (torch.rand(args.batch, generator=generator) >= 0.1).float().view(-1, 1)
        tokens = projection(image_embeds[index] * keep_image)[:, None]
        prediction = unet(noisy, t, text[rows], cross_attention_kwargs={"ip_hidden_states": [tokens]})
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        log.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            entry = {"step": step, "loss": round(float(np.mean(log[-100:])), 5)}
            print(json.dumps({**entry, "s": round(time.perf_counter() - begin)}), flush=True)

    models = args.out / "models"
    models.mkdir(parents=True, exist_ok=True)
    state = {f"image_proj.{k}": v.detach().contiguous() for k, v in projection.state_dict().items()}
    for number, (name, _) in zip(range(1, 2 * len(to_k), 2), cross_attention_layers(unet)):
        state[f"ip_adapter.{number}.to_k_ip.weight"] = to_k[name].weight.detach().contiguous()
        state[f"ip_adapter.{number}.to_v_ip.weight"] = to_v[name].weight.detach().contiguous()
    partial = models / "ip-adapter_shapes.safetensors.partial"
    recipe = {k: str(v) for k, v in vars(args).items()}
    save_file(state, partial, metadata={"recipe": json.dumps(recipe)})
    partial.replace(models / "ip-adapter_shapes.safetensors")
    encoder.save_pretrained(models / "image_encoder")
    processor.save_pretrained(models / "image_encoder")
    summary = {**recipe, "final_loss_100": float(np.mean(log[-100:])), "wall_s": round(time.perf_counter() - begin)}
    (args.out / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"wrote": str(models), "s": round(time.perf_counter() - begin)}), flush=True)


if __name__ == "__main__":
    main()
