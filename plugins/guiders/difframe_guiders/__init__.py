"""First-party guiders of difframe (see docs/guiders-and-hooks.md)."""
