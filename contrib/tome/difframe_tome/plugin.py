"""What this plugin adds to difframe. Kept free of torch imports: difframe reads it just to list plugins."""

from __future__ import annotations

from typing import Any

import difframe


@difframe.hookimpl
def register_inference_hook(register: Any) -> None:
    register(
        name="tome",
        factory="difframe_tome.hook:TokenMerging",
        aliases=("token-merging",),
        description="token merging (ToMe for SD): similar tokens merged before attention, unmerged after",
    )
