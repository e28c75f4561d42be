"""The Stable Diffusion UNet (SD 1.x / 2.x) as a difframe plugin. Import the model from difframe_sd_unet.unet."""
