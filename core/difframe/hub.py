"""Model references: a local folder, or a Hugging Face hub id resolved through the shared cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import ModelLoadError

KNOWN_VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema")
NEVER_NEEDED = ("*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.pb", "*.xml", "*.mlmodel*", "*.ot")


def _looks_like_path(reference: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else is meant as a folder."""
    return reference.startswith((".", "/", "~")) or "\\" in reference or reference.count("/") > 1


def weight_patterns(prefix: str = "", *, variant: str | None = None, allow_pickle: bool = False) -> dict:
    """allow/ignore patterns that fetch configs, tokenizer files and the weights of one variant."""
    allow = [f"{prefix}*.json", f"{prefix}*.txt", f"{prefix}*.model", f"{prefix}*.safetensors"]
    if allow_pickle:
        allow += [f"{prefix}*.bin", f"{prefix}*.ckpt", f"{prefix}*.pt"]
    ignore = [*NEVER_NEEDED, *(f"*.{other}.*" for other in KNOWN_VARIANTS if other != variant)]
    return {"allow_patterns": allow, "ignore_patterns": ignore}


def resolve(
    reference: str | os.PathLike[str],
    *,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Return a local folder for ``reference``, downloading only the matching files of a hub repository.

    Downloads go to the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE), so models another tool fetched are
    reused. HF_HUB_OFFLINE=1 or ``local_files_only=True`` uses the cache alone.
    """
    path = Path(os.path.expanduser(os.fspath(reference)))
    if path.is_dir():
        return path
    text = os.fspath(reference)
    if isinstance(reference, os.PathLike) or path.exists() or _looks_like_path(text):
        hidden = path.with_name(f".{path.name}.previous")
        raise ModelLoadError(
            f"model folder {text!r} does not exist (or is not a folder). Pass an existing folder that holds "
            "model_index.json or config.json, or a hub id such as 'org/name'."
            + (
                f" A save that was interrupted left the previous copy at {hidden}: the next save to {text!r} "
                "puts it back, or rename it yourself."
                if hidden.is_dir()
                else ""
            )
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                text,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                allow_patterns=list(allow_patterns) if allow_patterns else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
                token=token,
            )
        )
    except HFValidationError as error:
        raise ModelLoadError(f"{text!r} is neither a local folder nor a valid hub id ('org/name'): {error}") from None
    except LocalEntryNotFoundError:
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
            "1",
            "true",
            "yes",
            "on",
        )
        why = "downloads are off (HF_HUB_OFFLINE or local_files_only)" if offline else "the hub could not be reached"
        raise ModelLoadError(
            f"model {text!r} is not in the Hugging Face cache and {why}. Download it once where the hub is "
            "reachable (it lands in the shared cache, HF_HUB_CACHE), or pass a local folder instead."
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise ModelLoadError(
            f"hub repository {text!r} was not found or needs access: {error}. Check the id, or log in "
            "with `hf auth login` for gated models."
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"revision {revision!r} of {text!r} does not exist") from None
