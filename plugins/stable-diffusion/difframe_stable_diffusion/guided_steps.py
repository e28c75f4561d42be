"""Guiders and inference hooks in the Stable Diffusion pipelines: choosing them, and one guided denoiser step."""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from difframe.guidance import ClassifierFreeGuidance, Guider, StepContext
from difframe.inference_hooks import HookSet, InferenceHook, at_step

HookRequest = str | InferenceHook | dict[str, Any] | tuple[str, dict[str, Any]]


def _declared_options(factory: Any) -> set[str] | None:
    """The keyword options a factory takes (None: it takes any)."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}


def create_checked(framework: Any, kind: str, name: str, options: dict[str, Any]) -> Any:
    """Build a guider or hook by name; options it does not declare are refused with the ones it does."""
    registration = framework.get(kind, name)  # unknown: the error lists the installed ones
    factory = framework.first_working(framework.registry.candidates(kind, name))[1]
    declared = _declared_options(factory)
    unknown = sorted(set(options) - declared) if declared is not None else []
    label = kind.replace("_", " ")
    if unknown:
        raise TypeError(
            f"{label} {registration.name!r} has no option(s) {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(declared)) if declared else 'no options'}"
        )
    try:
        json.dumps(options, allow_nan=True)
    except TypeError as error:
        raise TypeError(
            f"{label} {registration.name!r}: options must be JSON values (numbers, text, lists, dicts), because the "
            f"PNG parameters record them; {error}"
        ) from None
    built = framework.create(kind, name, **options)
    built.name = registration.name
    built.options = dict(options)
    built.record_options = {**_default_options(factory), **registration.spec.options, **options}
    return built


def _default_options(factory: Any) -> dict[str, Any]:
    """The keyword options' defaults that are JSON values: written with the given ones, so a PNG says every setting
    and a later release's other default does not change what ``--from-png`` makes."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    defaults = {}
    for p in parameters:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty and p.name != "self":
            try:
                json.dumps(p.default)
            except (TypeError, ValueError):
                continue
            defaults[p.name] = p.default
    return defaults


def recorded_entry(component: Any) -> tuple[str, dict[str, Any]]:
    """(name, options) as the PNG records a guider or hook. One built from an object, not by its registered name,
    has no recorded options: it is written ``<module.Class>``, which ``--from-png`` refuses with what to do."""
    if getattr(component, "name", "") and hasattr(component, "record_options"):
        return component.name, dict(component.record_options)
    kind = type(component)
    return f"<{kind.__module__}.{kind.__qualname__}>", {}


def parse_hook_request(request: HookRequest) -> tuple[str, dict[str, Any]]:
    if isinstance(request, str):
        return request, {}
    if isinstance(request, tuple) and len(request) == 2:
        return request[0], dict(request[1])
    if isinstance(request, dict) and isinstance(request.get("name"), str):
        return request["name"], {k: v for k, v in request.items() if k != "name"}
    raise TypeError(f"a hook is a name, (name, options), {{'name': ..., **options}} or an object; got {request!r}")


def check_compatible(framework: Any, guider: Any, hooks: list[Any]) -> None:
    """Refuse the pairs a hook's registration says it cannot run with."""
    names = [getattr(guider, "name", ""), *(getattr(h, "name", "") for h in hooks)]
    for hook in hooks:
        if not getattr(hook, "name", ""):
            continue
        spec = framework.get("inference_hook", hook.name).spec
        clash = sorted(set(spec.incompatible) & set(names))
        if clash:
            raise ValueError(
                f"inference hook {hook.name!r} cannot run with {', '.join(map(repr, clash))} (its plugin says so); "
                "drop one of them"
            )


class GuidanceMixin:
    """``guider=``/``guider_options=``/``hooks=`` build options, ``set_guider``, ``add_hook``, ``remove_hook``."""

    @classmethod
    def from_pretrained(cls, reference: Any, **options: Any) -> Any:
        framework = options.get("framework")
        if framework is not None:  # names and options checked before any weight loads
            guider = _guider_from(framework, options.get("guider"), options.get("guider_options"))
            hooks = [_hook_from(framework, request) for request in options.get("hooks") or ()]
            check_compatible(framework, guider, hooks)
        return super().from_pretrained(reference, **options)  # type: ignore[misc]

    def apply_options(
        self,
        guider: str | Guider | None = None,
        guider_options: dict[str, Any] | None = None,
        hooks: list[HookRequest] | None = None,
        **rest: Any,
    ) -> None:
        """Build options: ``guider`` (a registered name or object; default "cfg") with ``guider_options``, and
        ``hooks`` (inference hooks: names, ``(name, options)`` pairs or objects, applied in that order)."""
        super().apply_options(**rest)  # type: ignore[misc]
        if guider is not None or guider_options:
            self.set_guider(guider or "cfg", **(guider_options or {}))
        for request in hooks or ():
            self.add_hook(request)

    @property
    def guider(self) -> Guider:
        return self.__dict__.get("_guider") or ClassifierFreeGuidance()

    @property
    def hooks(self) -> list[InferenceHook]:
        return list(self._hook_set().hooks)

    def set_guider(self, guider: str | Guider = "cfg", **options: Any) -> None:
        """The guider later calls use: a registered name (with its options) or a Guider object."""
        if isinstance(guider, str):
            guider = _guider_from(self._framework(), guider, options)  # type: ignore[attr-defined]
        elif options:
            raise TypeError("options go with a guider name, not with a guider object")
        check_compatible(self._framework(), guider, self.hooks)  # type: ignore[attr-defined]
        hooks = self._hook_set()
        with self._gate.exclusive("set_guider"):  # type: ignore[attr-defined]
            for hook in self.__dict__.pop("_guider_hooks", []):
                hooks.remove(hook)
            self.__dict__["_guider_hooks"] = required = guider.required_hooks()
            for hook in required:
                hooks.add(self.unet, hook)  # type: ignore[attr-defined]
            self.__dict__["_guider"] = guider

    def add_hook(self, hook: HookRequest, **options: Any) -> InferenceHook:
        """Wrap modules of the UNet with an inference hook (a registered name with options, or an object). Hooks
        run in the order they are added. Returns the hook, for ``remove_hook``."""
        framework = self._framework()  # type: ignore[attr-defined]
        if not isinstance(hook, InferenceHook):
            name, given = parse_hook_request(hook)
            hook = create_checked(framework, "inference_hook", name, {**given, **options})
        check_compatible(framework, self.guider, [*self.hooks, hook])
        with self._gate.exclusive("add_hook"):  # type: ignore[attr-defined]
            self._hook_set().add(self.unet, hook)  # type: ignore[attr-defined]
        return hook

    def remove_hook(self, hook: InferenceHook | str) -> None:
        """Remove a hook (the object ``add_hook`` returned, or its registered name)."""
        hooks = self._hook_set()
        found = [h for h in hooks.hooks if h is hook or (isinstance(hook, str) and h.name == hook)]
        if not found:
            raise ValueError(
                f"no such hook on this pipeline; it has {[h.name or type(h).__name__ for h in hooks.hooks]}"
            )
        with self._gate.exclusive("remove_hook"):  # type: ignore[attr-defined]
            hooks.remove(found[0])

    def _hook_set(self) -> HookSet:
        if "_hooks" not in self.__dict__:
            self.__dict__["_hooks"] = HookSet()
            self.__dict__["_hooks_lock"] = threading.Lock()
        return self.__dict__["_hooks"]

    @contextlib.contextmanager
    def hooked_call(self) -> Iterator[None]:
        """One call: run one at a time when a hook keeps state across steps (the loop resets them per chunk)."""
        hooks = self._hook_set()
        lock = self.__dict__["_hooks_lock"] if hooks.stateful else contextlib.nullcontext()
        with lock:
            yield

    def guidance_record(self) -> dict[str, Any]:
        """The guider (when not plain cfg) and the hooks as chosen, with the options given; the PNG fields, with
        every option, are ``guidance_metadata()``."""
        record: dict[str, Any] = {}
        guider = self.guider
        name = getattr(guider, "name", "cfg")
        options = {**getattr(guider, "options", {})}
        if name != "cfg" or options:
            record["guider"] = {"name": name, **options}
        own = [h for h in self.hooks if h not in self.__dict__.get("_guider_hooks", [])]
        if own:
            record["hooks"] = [{"name": h.name or type(h).__name__, **getattr(h, "options", {})} for h in own]
        return record

    def guidance_metadata(self) -> dict[str, str]:
        """The PNG fields of the guider and the hooks: ``Guider`` when it is not plain cfg with its defaults, and
        ``Hooks`` (the hooks added, not those a guider brings, in the order they run), each with all its options."""
        from .metadata import GUIDER_KEY, HOOKS_KEY, format_component_record

        fields: dict[str, str] = {}
        guider = self.__dict__.get("_guider")
        if guider is not None and not _is_plain_cfg(guider):
            fields[GUIDER_KEY] = format_component_record([recorded_entry(guider)])
        own = [h for h in self.hooks if h not in self.__dict__.get("_guider_hooks", [])]
        if own:
            fields[HOOKS_KEY] = format_component_record([recorded_entry(h) for h in own])
        return fields


def _is_plain_cfg(guider: Guider) -> bool:
    """The default: classifier-free guidance with its default settings (by name or as the object)."""
    if type(guider) is not ClassifierFreeGuidance:
        return False
    defaults = _default_options(ClassifierFreeGuidance)
    if hasattr(guider, "record_options"):
        return guider.record_options == defaults
    return all(getattr(guider, key, None) == value for key, value in defaults.items())


def _guider_from(framework: Any, guider: Any, options: dict[str, Any] | None) -> Guider:
    if guider is None and not options:
        return ClassifierFreeGuidance()
    if isinstance(guider, Guider):
        return guider
    return create_checked(framework, "guider", guider or "cfg", dict(options or {}))


def _hook_from(framework: Any, request: HookRequest) -> InferenceHook:
    if isinstance(request, InferenceHook):
        return request
    name, options = parse_hook_request(request)
    return create_checked(framework, "inference_hook", name, options)


def guided_prediction(
    guider: Guider,
    *,
    index: int,
    total: int,
    timestep: Any,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    guided: bool,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    run_denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guidance_scale: float,
    guidance_rescale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's denoiser run over the guider's branches and their combination. ``embeds`` holds the call's rows
    ([uncond..., cond...] when ``guided``); ``prepare`` scales the stacked latents (and adds model inputs).
    Returns (raw denoiser output, combined prediction)."""
    rows = latents.shape[0]
    by_branch = {"cond": embeds[rows:] if guided else embeds}
    if guided:
        by_branch["uncond"] = embeds[:rows]
    branches = guider.branches(index, total, guided)
    step = StepContext(index=index, total=total, timestep=timestep, branches=branches, rows=rows)
    batch_embeds = torch.cat([by_branch.get(b, by_branch["cond"]) for b in branches])
    model_input = prepare(torch.cat([latents] * len(branches)))
    with at_step(step):
        output = run_denoiser(model_input, batch_embeds)
    predictions = dict(zip(branches, output.chunk(len(branches))))
    return output, guider.combine(predictions, step, guidance_scale, guidance_rescale)
