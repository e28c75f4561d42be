"""The text conditioner of the Stable Diffusion pipelines, chosen by name through the registry like a sampler.

The pipelines import no model plugin: the conditioner is the one registered under ``conditioner_name`` with
``register_conditioner`` (default "clip-text", from difframe-clip), built with the pipeline's tokenizer and text
encoder. The protocol a conditioner follows (every method these pipelines call) is in docs/hooks.md.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_CONDITIONER = "clip-text"
CONDITIONER_KEY = "Conditioner"  # the PNG parameters' key


def parse_conditioner_metadata(value: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME {json options}`` (as conditioner_metadata writes it) -> (name, options)."""
    name, _, options = value.strip().partition(" ")
    try:
        parsed = json.loads(options) if options.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed {CONDITIONER_KEY} value {value!r}: its options are not JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"malformed {CONDITIONER_KEY} value {value!r}: its options must be a JSON object")
    return name, parsed


class ConditionerMixin:
    """``build(..., conditioner=NAME, conditioner_options={...})`` and ``pipe.set_conditioner(NAME, **options)``."""

    conditioner_name: str | None = None  # None: DEFAULT_CONDITIONER where installed
    conditioner_options: dict[str, Any] | None = None  # the conditioner's constructor options
    _conditioner_cache: tuple[Any, Any, Any] | None = None  # (tokenizer, text_encoder, conditioner)

    @classmethod
    def from_pretrained(cls, reference: Any, **options: Any) -> Any:
        """A conditioner name is checked before any weight loads."""
        if options.get("conditioner") is not None:
            framework = options.get("framework")
            if framework is None:
                from difframe.framework import Framework

                framework = options["framework"] = Framework()
            _check_name(framework, options["conditioner"])
        return super().from_pretrained(reference, **options)  # type: ignore[misc]

    def apply_options(
        self, conditioner: str | None = None, conditioner_options: dict[str, Any] | None = None, **rest: Any
    ) -> None:
        """Build options: ``conditioner`` (a registered conditioner's name) and ``conditioner_options`` (its
        constructor's keyword arguments, e.g. ``{"long_prompts": "truncate"}``)."""
        super().apply_options(**rest)  # type: ignore[misc]
        if conditioner is None and conditioner_options is None:
            return
        self.set_conditioner(conditioner or DEFAULT_CONDITIONER, **(conditioner_options or {}))

    def set_conditioner(self, name: str, /, **options: Any) -> Any:
        """Encode prompts with the conditioner registered as ``name`` (built now, so a bad option fails here)."""
        _check_name(self._framework(), name)  # type: ignore[attr-defined]
        conditioner = self._create_conditioner(name, options)
        self.conditioner_name, self.conditioner_options = name, dict(options)
        self._conditioner_cache = (self.tokenizer, self.text_encoder, conditioner)  # type: ignore[attr-defined]
        return conditioner

    def conditioner_metadata(self) -> dict[str, str]:
        """The PNG's record of a conditioner other than the default: ``Conditioner: NAME`` or ``NAME {options}``."""
        if self.conditioner_name in (None, DEFAULT_CONDITIONER) and not self.conditioner_options:
            return {}
        options = self.conditioner_options or {}
        name = self.conditioner_name or DEFAULT_CONDITIONER
        return {CONDITIONER_KEY: name + (f" {json.dumps(options, sort_keys=True)}" if options else "")}

    @property
    def conditioner(self) -> Any:
        """The conditioner in use (None: no conditioner installed, prompts go straight to the text encoder)."""
        return self._conditioner()

    def _conditioner(self) -> Any:
        tokenizer, encoder = self.tokenizer, self.text_encoder  # type: ignore[attr-defined]
        cache = self._conditioner_cache
        if cache is None or cache[0] is not tokenizer or cache[1] is not encoder:  # components swapped: rebuild
            name = self.conditioner_name
            if name is None:
                framework = self._framework()  # type: ignore[attr-defined]
                name = DEFAULT_CONDITIONER if DEFAULT_CONDITIONER in framework.conditioners else None
            conditioner = None if name is None else self._create_conditioner(name, self.conditioner_options or {})
            cache = self._conditioner_cache = (tokenizer, encoder, conditioner)
        return cache[2]

    def _create_conditioner(self, name: str, options: dict[str, Any]) -> Any:
        framework = self._framework()  # type: ignore[attr-defined]
        return framework.create(
            "conditioner",
            name,
            tokenizer=self.tokenizer,  # type: ignore[attr-defined]
            text_encoder=self.text_encoder,  # type: ignore[attr-defined]
            **options,
        )


def _check_name(framework: Any, name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"conditioner must be a registered conditioner's name (a string), got {name!r}")
    registration = framework.get("conditioner", name)  # an unknown name: the installed ones and the closest match
    if registration.spec.modality != "text":
        text = [n for n in framework.conditioners if framework.get("conditioner", n).spec.modality == "text"]
        raise ValueError(
            f"conditioner {name!r} encodes {registration.spec.modality} prompts, not text; "
            f"text conditioners installed: {', '.join(text) or 'none'}"
        )
