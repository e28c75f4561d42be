"""ModelMixin: a torch module with a config, safetensors save/load and memory-friendly construction."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .atomic import atomic_directory
from .configuration import ConfigMixin
from .errors import ConfigError, DifframeError, ModelLoadError
from .weights import find_weights, read_state_dict, write_state_dict

M = TypeVar("M", bound="ModelMixin")
DEFAULT_SHARD_BYTES = 10 * 1024**3


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory, no random init); buffers stay real.

    Non-persistent buffers (computed in __init__, absent from weights files) so keep their values.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)I?B\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size must be bytes or like '5GB' / '500MB', got {size!r}")
    return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " "))


class ModelMixin(nn.Module, ConfigMixin):
    """Base of difframe networks. Subclasses keep the parameter names of the shared checkpoint layout."""

    config_name: ClassVar[str] = "config.json"
    weights_name: ClassVar[str] = "diffusion_pytorch_model.safetensors"
    supports_gradient_checkpointing: ClassVar[bool] = False
    keep_in_fp32: ClassVar[tuple[str, ...]] = ()  # parameter-name patterns that stay fp32 under torch_dtype

    # --- properties ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # --- gradient checkpointing ---------------------------------------------------------------------------------
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in the backward pass: less memory, same gradients."""
        if not self.supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, value: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = value

    # --- CPU inference ------------------------------------------------------------------------------------------
    def enable_prepacked_convolutions(self) -> None:
        """Inference on the CPU in float32 reuses each convolution's weight reordered once for oneDNN instead of
        reordering it on every call: faster where feature maps are small. Training and other devices are unchanged.
        """
        from .prepacking import prepack_convolutions

        prepack_convolutions(self, True)

    def disable_prepacked_convolutions(self) -> None:
        from .prepacking import prepack_convolutions

        prepack_convolutions(self, False)

    # --- attention ----------------------------------------------------------------------------------------------
    def set_attention(self, processor: Any, framework: Any = None, **options: Any) -> None:
        """Choose the attention of every attention module, or per module with ``{module_name: processor}``.

        ``processor``: a registered name ("auto", "sdpa", "sliced", "reference", a plugin's), a backend or add-on
        object, or ``None`` to remove add-ons; ``options`` go to the named processor (``slice_size=4``).
        """
        from .attention import set_attention

        set_attention(self, processor, framework=framework, **options)

    # --- saving -------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        folder: str | os.PathLike[str],
        *,
        variant: str | None = None,
        max_shard_size: int | str = DEFAULT_SHARD_BYTES,
        atomic: bool = True,
    ) -> Path:
        """Write config.json and safetensors weights; replaces an existing save only once all is written."""
        folder = Path(folder)
        context = atomic_directory(folder) if atomic else contextlib.nullcontext(folder)
        with context as staging:
            staging.mkdir(parents=True, exist_ok=True)
            self.save_config(staging)
            write_state_dict(self.state_dict(), staging, self.weights_name, variant, _parse_size(max_shard_size))
        return folder

    # --- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls: type[M],
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **config_overrides: Any,
    ) -> M:
        """Load from a folder (or hub id): build on the meta device, then take the weights memory-mapped."""
        from .hub import resolve, weight_patterns
        from .paths import check_subfolder, check_variant, contained
        from .placement import check_device, check_dtype

        check_subfolder(subfolder)
        check_variant(variant)
        torch_dtype, device = check_dtype(torch_dtype), check_device(device)
        cls.check_option_names(config_overrides)
        prefix = f"{subfolder}/" if subfolder else ""
        root = resolve(
            reference,
            **weight_patterns(prefix, variant=variant, allow_pickle=allow_pickle),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        folder = contained(root, subfolder, named_by="subfolder") if subfolder else root
        config = cls.load_config(folder)
        files = find_weights(folder, cls.weights_name, variant, allow_pickle)
        model = cls._skeleton(config, folder, **config_overrides)
        model.load_weights(read_state_dict(files), source=folder, dtype=torch_dtype)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def _skeleton(cls: type[M], config: dict[str, Any], folder: Path, **overrides: Any) -> M:
        """The model built from its config on the meta device (no weights); any failure is a ConfigError."""
        try:
            with parameters_on_meta(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Initializing zero-element tensors")
                model = cls.from_config(config, **overrides)
            empty = [name for name, parameter in model.named_parameters() if parameter.numel() == 0]
            if empty:
                raise ValueError(f"parameters {', '.join(empty[:4])} would have no elements (a size of 0)")
            return model
        except DifframeError:
            raise
        except (RuntimeError, ValueError, TypeError, ZeroDivisionError, IndexError, KeyError) as error:
            values = {**config, **overrides}
            suspects = [
                f"{name}={value!r}"
                for name, value in values.items()
                if _has_non_positive(value) and name in cls.config_schema().model_fields
            ]
            hint = f" Likely culprits: {', '.join(suspects)}." if suspects else ""
            raise ConfigError(
                f"{folder / cls.config_name} does not describe a {cls.__name__} that can be built: "
                f"{type(error).__name__}: {error}.{hint} Channel counts and sizes must be positive; fix the value, "
                "or save the model again."
            ) from None

    @classmethod
    def check_pretrained(
        cls,
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        torch_dtype: torch.dtype | None = None,
        weights: bool = True,
        **_: Any,
    ) -> None:
        """Everything ``from_pretrained`` checks, without reading a weight: paths, config, and (``weights``) that the
        weights files are present."""
        from .paths import check_subfolder, check_variant, contained
        from .placement import check_dtype

        check_subfolder(subfolder)
        check_variant(variant)
        check_dtype(torch_dtype)
        root = Path(reference)
        folder = contained(root, subfolder, named_by="subfolder") if subfolder else root
        config = cls.load_config(folder)
        if weights:
            find_weights(folder, cls.weights_name, variant, allow_pickle)
        cls._skeleton(config, folder)

    def load_weights(
        self,
        state: dict[str, torch.Tensor],
        *,
        source: object = "state dict",
        dtype: torch.dtype | None = None,
    ) -> None:
        """Take every parameter and buffer from ``state``; any missing, unexpected or misshapen key is an error."""
        expected = self.state_dict()
        missing = sorted(expected.keys() - state.keys())
        unexpected = sorted(state.keys() - expected.keys())
        misshapen = [
            f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
            for key in sorted(expected.keys() & state.keys())
            if state[key].shape != expected[key].shape
        ]
        if missing or unexpected or misshapen:
            raise ModelLoadError(_mismatch_message(type(self).__name__, source, missing, unexpected, misshapen))
        keep = [re.compile(pattern) for pattern in self.keep_in_fp32]
        converted = {}
        for key, tensor in state.items():
            target = expected[key].dtype if dtype is None else dtype
            if tensor.is_floating_point():
                if any(p.search(key) for p in keep):
                    target = torch.float32
                converted[key] = tensor if tensor.dtype == target else tensor.to(target)
            else:
                converted[key] = tensor
        self.load_state_dict(converted, strict=True, assign=True)


def _has_non_positive(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_non_positive(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value <= 0


def _mismatch_message(
    model: str, source: object, missing: list[str], unexpected: list[str], misshapen: list[str]
) -> str:
    def listed(title: str, keys: list[str]) -> str:
        head = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        return f"\n  {title} ({len(keys)}): {head}"

    text = f"the weights in {source} do not match {model}:"
    if missing:
        text += listed("missing from the checkpoint", missing)
    if unexpected:
        text += listed("unexpected in the checkpoint", unexpected)
    if misshapen:
        text += listed("wrong shape", misshapen)
    return text + "\nCheck that config.json describes the architecture these weights were trained with."
