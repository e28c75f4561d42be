"""Step-caching accelerators for difframe, built on its public inference-hook API (difframe.inference_hooks).

``deepcache``: reuse the UNet's deep features for ``interval - 1`` steps out of every ``interval``.
``first-block-cache``: run the first down block; when its residual barely changed since the last full step, reuse
the residual of the rest of the network instead of running it.
"""
