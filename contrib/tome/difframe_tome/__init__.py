"""difframe-tome: token merging for Stable Diffusion as an inference hook (the hook lives in .hook)."""
