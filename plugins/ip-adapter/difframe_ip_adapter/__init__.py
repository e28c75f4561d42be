"""IP-Adapter for difframe: image prompts through an image encoder and decoupled cross-attention."""
