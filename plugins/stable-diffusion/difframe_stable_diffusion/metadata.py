"""Generation parameters as PNG text, in the format AUTOMATIC1111's web UI writes (and ComfyUI, InvokeAI and
civitai read): a tEXt chunk named "parameters" holding

    a watercolor fox
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 7, Size: 512x512, Model: sd15

No torch here: reading metadata back is cheap.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PNG_KEY = "parameters"
ATTENTION_KEY = "Attention"  # the UNet's attention backends, then the add-ons: "sdpa + NAME {options} add-on"
GUIDER_KEY = "Guider"  # a guider other than plain cfg, with its options: 'apg {"eta": 0.0, ...}'
HOOKS_KEY = "Hooks"  # inference hooks in the order they run: 'deepcache {"interval": 3, ...}, tome {...}'

# The web UI's default schedule ("Automatic") of a sampler, from version 1.9 on; the others use the model's sigmas.
DEFAULT_SCHEDULES_1_9 = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2S a": "Karras",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "Restart": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 3M SDE": "Exponential",
}
WEB_UI_SCHEDULES = (
    "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
    "Simple", "Normal", "DDIM", "Beta",
)  # fmt: skip


@dataclass(frozen=True)
class WebUISamplers:
    """The registered schedulers' web-UI labels (``SchedulerSpec.label`` and ``schedule_type``), both ways."""

    by_name: Mapping[str, tuple[str, str | None]]  # scheduler name -> (label, Schedule type)
    aliases: Mapping[str, str]  # any registered name or alias, lower case -> scheduler name

    @classmethod
    def of(cls, framework: Any) -> WebUISamplers:
        by_name, aliases = {}, {}
        for registration in framework.registry.all("scheduler"):
            spec = registration.spec
            for alias in (spec.name, *spec.aliases):
                aliases.setdefault(alias.lower(), spec.name)
            if spec.label and spec.name not in by_name:
                by_name[spec.name] = (spec.label, spec.schedule_type)
        return cls(by_name, aliases)

    def name(self, text: str) -> str:
        return self.aliases.get(text.lower(), text)

    def base(self, label: str) -> str | None:
        """The name whose label is ``label`` with no schedule of its own (Uniform or none), else any with it."""
        matches = [n for n, (lab, _) in self.by_name.items() if lab.lower() == label.lower()]
        plain = [n for n in matches if self.by_name[n][1] in (None, "Uniform")]
        return (plain or matches or [None])[0]


def web_ui_samplers(framework: Any = None) -> WebUISamplers:
    """The web-UI labels of the installed schedulers (or of ``framework``'s): a plugin extends them by registering
    a scheduler with ``label=`` (and ``schedule_type=``)."""
    if framework is not None:
        return WebUISamplers.of(framework)
    plugins = (os.environ.get("DIFFRAME_LOAD_PLUGINS"), os.environ.get("DIFFRAME_DISABLE_PLUGINS"))
    return _installed_samplers(tuple(sys.path), plugins)


@functools.lru_cache(maxsize=4)
def _installed_samplers(path: tuple[str, ...], plugins: tuple[str | None, str | None]) -> WebUISamplers:
    # keyed by what decides which plugins are installed and loaded, so an installed plugin is seen at once
    from difframe import Framework

    return WebUISamplers.of(Framework())


def sampler_label(scheduler_name: str | None, framework: Any = None) -> str:
    """The web-UI label of a difframe scheduler name or alias; a name without one is written as it is."""
    if not scheduler_name:
        return "unknown"
    samplers = web_ui_samplers(framework)
    return samplers.by_name.get(samplers.name(scheduler_name), (scheduler_name, None))[0]


def schedule_type(scheduler_name: str | None, framework: Any = None) -> str | None:
    """The web UI's "Schedule type" of a difframe scheduler name (None: the sampler has none there)."""
    samplers = web_ui_samplers(framework)
    return samplers.by_name.get(samplers.name(scheduler_name or ""), (None, None))[1]


def web_ui_version(text: str | None) -> tuple[int, int] | None:
    """(major, minor) of a "Version" field ("v1.10.1", Forge's "f2.0.1v1.10.1-previous-..."); None if absent."""
    match = re.search(r"v(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def scheduler_from_label(
    label: str, schedule_type: str | None = None, version: tuple[int, int] | None = None, framework: Any = None
) -> str:
    """The difframe scheduler name for a web-UI sampler label and "Schedule type", read the way the web UI of
    ``version`` reads them: a schedule in the label wins; "Automatic" (or none, from 1.9 on) is the sampler's
    default schedule. A schedule difframe has no sampler for is an error naming it."""
    samplers = web_ui_samplers(framework)
    text = label.strip()
    schedule = (schedule_type or "").strip()
    for suffix in WEB_UI_SCHEDULES:
        if text.lower().endswith(" " + suffix.lower()):
            text, schedule = text[: -len(suffix) - 1].strip(), suffix
            break
    plain = samplers.base(text)
    if schedule_type and schedule == schedule_type.strip() and plain and samplers.by_name[plain][1] is None:
        schedule = ""  # the web UI's samplers without a schedule (DDIM, PLMS, UniPC) ignore "Schedule type"
    if schedule.lower() in ("", "automatic"):
        new_reader = schedule.lower() == "automatic" or (version is not None and version >= (1, 9))
        schedule = DEFAULT_SCHEDULES_1_9.get(_canonical_label(text), "") if new_reader else ""
    base = samplers.base(text)
    if base is None:
        return label.strip() if not schedule or schedule.lower() == "uniform" else f"{text} {schedule}"
    if not schedule or schedule.lower() == "uniform":
        return base
    name = samplers.base(f"{text} {schedule}")
    if name is None:
        name = next(
            (n for n, (lab, sch) in samplers.by_name.items() if lab.lower() == text.lower() and sch == schedule), None
        )
    if name is None:
        raise ValueError(
            f"PNG parameters: sampler {text!r} with Schedule type {schedule!r} has no difframe sampler; choose one "
            "with --scheduler (schedules here: Uniform, Karras, and Exponential for the DPM++ SDE samplers)"
        )
    return name


def _canonical_label(text: str) -> str:
    return next((label for label in DEFAULT_SCHEDULES_1_9 if label.lower() == text.lower()), text)


# Fields of web-UI images that change the picture in ways difframe cannot reproduce: --from-png refuses them by name.
UNSUPPORTED_FIELDS = (
    "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Refiner", "Variation seed",
    "Face restoration", "Tiling", "ControlNet", "ADetailer", "Hypernet",
)  # fmt: skip


@dataclass
class GenerationParameters:
    """Everything needed to make one image again."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    scheduler: str | None = None  # difframe name; written as the web-UI "Sampler" label
    guidance_scale: float = 7.5
    seed: int | None = None
    width: int = 512
    height: int = 512
    model: str | None = None
    clip_skip: int | None = None
    guidance_rescale: float = 0.0
    strength: float | None = None  # image-to-image / inpainting: "Denoising strength"
    extra: dict[str, str] = field(default_factory=dict)  # other "Key: value" pairs, kept as text

    # --- writing ------------------------------------------------------------------------------------------------
    def to_text(self) -> str:
        """The web-UI "parameters" string. A prompt the web UI's reader would split differently (a line starting
        with "Negative prompt:", surrounding spaces) is also written whole as a quoted "Prompt" / "Negative prompt"
        field, which our reader takes over the text lines (the web UI's ignores it); in the lines, a line starting
        with "Negative prompt:" is joined to the one before by a space, which the CLIP tokenizer reads the same."""
        label, schedule = sampler_label(self.scheduler), schedule_type(self.scheduler)
        if schedule and schedule != "Uniform" and not label.endswith(f" {schedule}"):
            label = f"{label} {schedule}"  # "DPM++ 2M SDE Exponential": a sampler before 1.9, both parts from 1.9
        pairs: list[tuple[str, Any]] = [("Steps", self.steps), ("Sampler", label)]
        if schedule == "Uniform" and DEFAULT_SCHEDULES_1_9.get(label, "Uniform") != "Uniform":
            # from 1.9 the label alone is the sampler's default schedule; 1.6 to 1.8 take "Schedule type" as a
            # setting that knows no Uniform (so it is written only here, where 1.9 needs it)
            pairs.append(("Schedule type", schedule))
        pairs.append(("CFG scale", _number(self.guidance_scale)))
        if self.seed is not None:
            pairs.append(("Seed", self.seed))
        pairs.append(("Size", f"{self.width}x{self.height}"))
        if self.model:
            pairs.append(("Model", self.model))
        if self.strength is not None:
            pairs.append(("Denoising strength", _number(self.strength)))
        if self.clip_skip:
            # the web UI counts the last layer as 1 ("Clip skip: 1" = no skip); the reference library counts 0
            pairs.append(("Clip skip", self.clip_skip + 1))
        if self.guidance_rescale:
            pairs.append(("Guidance rescale", _number(self.guidance_rescale)))
        pairs.extend((k, v) for k, v in self.extra.items() if k not in ("Prompt", "Negative prompt", "Schedule type"))
        lines = [_no_negative_line(self.prompt)]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {_no_negative_line(self.negative_prompt)}")
        settings = ", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs)
        text = "\n".join([*lines, settings])
        prompt, negative, _ = split_parameters(text)
        if (prompt, negative) != (self.prompt, self.negative_prompt):
            exact = f"Prompt: {json.dumps(self.prompt, ensure_ascii=False)}, "
            exact += f"Negative prompt: {json.dumps(self.negative_prompt, ensure_ascii=False)}"
            text = "\n".join([*lines, f"{settings}, {exact}"])
        return text

    # --- reading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str) -> GenerationParameters:
        """Parse a web-UI "parameters" string (ours, or one the web UI wrote), as the web UI's reader does."""
        prompt, negative, settings = split_parameters(text)
        extra = dict(settings)
        if "Prompt" in extra:  # the exact text, where the lines alone would be read differently
            prompt = extra.pop("Prompt")
        if "Negative prompt" in extra:
            negative = extra.pop("Negative prompt")
        known: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}

        def take(key: str, convert: Any) -> Any:
            if key not in extra:
                return None
            raw = extra.pop(key)
            try:
                return convert(raw)
            except ValueError:
                raise ValueError(f"PNG parameters: {key!r} has an unreadable value {raw!r}") from None

        for key, name, convert in (
            ("Steps", "steps", int),
            ("CFG scale", "guidance_scale", float),
            ("Seed", "seed", int),
            ("Model", "model", str),
            ("Denoising strength", "strength", float),
            ("Guidance rescale", "guidance_rescale", float),
        ):
            value = take(key, convert)
            if value is not None:
                known[name] = value
        clip_skip = take("Clip skip", int)
        if clip_skip is not None and clip_skip > 1:
            known["clip_skip"] = clip_skip - 1
        size = take("Size", str)
        if size is not None:
            match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", size)
            if not match:
                raise ValueError(f"PNG parameters: Size must look like 512x768, got {size!r}")
            known["width"], known["height"] = int(match.group(1)), int(match.group(2))
        sampler = take("Sampler", str)
        schedule = extra.pop("Schedule type", None)
        if sampler is not None:
            known["scheduler"] = scheduler_from_label(sampler, schedule, web_ui_version(extra.get("Version")))
        return cls(**known, extra=extra)

    @property
    def lora_hashes(self) -> dict[str, str]:
        """ "Lora hashes": LoRA name -> the first 12 hex digits of its web-UI hash."""
        return parse_hashes(self.extra.get("Lora hashes", ""))

    @property
    def ti_hashes(self) -> dict[str, str]:
        """ "TI hashes": embedding name -> the first 12 hex digits of the sha256 of its file."""
        return parse_hashes(self.extra.get("TI hashes", ""))

    def unsupported_fields(self) -> list[str]:
        """Fields that change the picture in a way difframe does not reproduce (hires fix, refiner, ...)."""
        found = []
        for key, value in self.extra.items():
            if key.startswith(UNSUPPORTED_FIELDS) and value.strip() not in ("", "0", "None", "0.0"):
                found.append(f"{key}: {value}")
        return found

    def replace(self, **changes: Any) -> GenerationParameters:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return GenerationParameters(**{**values, **changes})


def _no_negative_line(text: str) -> str:
    """The web UI's reader starts the negative prompt at any line that starts with "Negative prompt:"."""
    return re.sub(r"\s*\n(?=[^\S\n]*Negative prompt:)", " ", text)


def _number(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else f"{float(value):.1f}"


def _quote(value: str) -> str:
    """Values with a comma, colon or newline are JSON strings, as the web UI writes them."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


_SETTING = re.compile(r'\s*(\w[\w ()\-+/.]*?):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def split_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, settings) exactly as the web UI's reader splits a "parameters" text: the last line
    holds the settings if it has at least 3 "key: value" pairs; every line is stripped; a line starting with
    "Negative prompt:" starts the negative prompt."""
    *lines, last = text.strip().split("\n")
    if len(_SETTING.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            target, line = negative, line[len("Negative prompt:") :].strip()
        target.append(line)
    return _join(prompt), _join(negative), parse_settings(last) if last else {}


def _join(lines: list[str]) -> str:
    """Lines as the web UI joins them: a newline only after some text (leading empty lines vanish)."""
    text = ""
    for line in lines:
        text = f"{text}\n{line}" if text else line
    return text


def parse_hashes(text: str) -> dict[str, str]:
    """'name: 0123abcd, other: 4567ef01' -> {'name': '0123abcd', 'other': '4567ef01'}."""
    result = {}
    for part in text.split(","):
        name, _, value = part.rpartition(":")
        if name.strip():
            result[name.strip()] = value.strip()
    return result


def format_hashes(hashes: dict[str, str]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in hashes.items())


def model_hash(path: str | os.PathLike[str]) -> str:
    """The web UI's "Model hash" of a single-file checkpoint: the first 10 hex digits of its sha256."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def parse_settings(line: str) -> dict[str, str]:
    """'Steps: 20, Sampler: Euler a, ...' -> {'Steps': '20', 'Sampler': 'Euler a', ...} (quoted values unescaped)."""
    settings = {}
    for key, value in _SETTING.findall(line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value[1:-1]
        settings[key.strip()] = value
    return settings


def format_attention_record(backends: list[str], addons: list[tuple[str, dict[str, Any]]]) -> str:
    """The "Attention" value: backends, then add-ons as ``NAME add-on`` or ``NAME {json options} add-on``, joined by
    " + " ("sliced", "sdpa + scale-attention {\"factor\": 0.5} add-on")."""
    written = [
        f"{name} {json.dumps(options, sort_keys=True)} add-on" if options else f"{name} add-on"
        for name, options in addons
    ]
    return " + ".join([*backends, *written])


def parse_attention_record(value: str) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """An "Attention" value, as format_attention_record writes it -> (backends, [(add-on, options)])."""
    backends: list[str] = []
    addons: list[tuple[str, dict[str, Any]]] = []
    rest = value.strip()
    if not rest:
        raise ValueError(f"PNG parameters: {ATTENTION_KEY} is empty; it names the attention an image was made with")
    while rest:
        name, _, rest = rest.partition(" ")
        options: Any = {}
        rest = rest.lstrip()
        if rest.startswith("{"):
            try:
                options, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"PNG parameters: {ATTENTION_KEY} {value!r} has options that are not JSON ({error})"
                ) from None
            rest = rest[end:].lstrip()
            if not isinstance(options, dict) or not rest.startswith("add-on"):
                raise ValueError(f"PNG parameters: {ATTENTION_KEY} {value!r}: only an add-on has options")
        if rest.startswith("add-on"):
            addons.append((name, options))
            rest = rest[len("add-on") :].lstrip()
        else:
            backends.append(name)
        if rest and not rest.startswith("+ "):
            raise ValueError(
                f"PNG parameters: {ATTENTION_KEY} {value!r} is not 'BACKEND + ... + NAME add-on' (unexpected {rest!r})"
            )
        rest = rest[2:].lstrip()
    return backends, addons


def format_component_record(entries: list[tuple[str, dict[str, Any]]]) -> str:
    """The "Guider" and "Hooks" values: ``NAME`` or ``NAME {json options}``, joined by ", "."""
    return ", ".join(f"{name} {json.dumps(options, sort_keys=True)}" if options else name for name, options in entries)


def parse_component_record(key: str, value: str) -> list[tuple[str, dict[str, Any]]]:
    """A "Guider" or "Hooks" value, as format_component_record writes it -> [(name, options)]."""
    entries: list[tuple[str, dict[str, Any]]] = []
    rest = value.strip()
    if not rest:
        raise ValueError(f"PNG parameters: {key} is empty; it names what the image was made with")
    while rest:
        match = re.match(r"[^\s,{]+", rest)
        if match is None:
            raise ValueError(f"PNG parameters: {key} {value!r} is not 'NAME {{options}}, ...' (at {rest!r})")
        name, rest = match.group(0), rest[match.end() :].lstrip()
        options: Any = {}
        if rest.startswith("{"):
            try:
                options, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError as error:
                raise ValueError(f"PNG parameters: {key} {value!r} has options that are not JSON ({error})") from None
            rest = rest[end:].lstrip()
        entries.append((name, options))
        if rest and not rest.startswith(","):
            raise ValueError(f"PNG parameters: {key} {value!r} is not 'NAME {{options}}, ...' (unexpected {rest!r})")
        rest = rest[1:].lstrip()
    return entries


# --- PNG files --------------------------------------------------------------------------------------------------
def png_info(parameters: GenerationParameters | str) -> Any:
    """A PIL PngInfo with the "parameters" tEXt chunk, for ``image.save(path, pnginfo=...)``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    text = parameters if isinstance(parameters, str) else parameters.to_text()
    info.add_text(PNG_KEY, text)  # tEXt when the text is Latin-1, as the web UI writes it
    return info


def save_png(image: Any, path: str | os.PathLike[str], parameters: GenerationParameters | str) -> Path:
    """Save a PIL image as PNG with its generation parameters embedded; the file appears complete or not at all
    (written under a temporary name, then renamed over ``path``)."""
    from .saving import replace_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_png(image, path, png_info(parameters))


def read_parameters(path_or_image: Any) -> GenerationParameters:
    """The generation parameters stored in a PNG (ours or AUTOMATIC1111's)."""
    from PIL import Image

    if isinstance(path_or_image, (str, os.PathLike)):
        with Image.open(path_or_image) as image:
            image.load()
            text = image.info.get(PNG_KEY)
    else:
        text = path_or_image.info.get(PNG_KEY)
    if not text:
        raise ValueError(
            f"{path_or_image if isinstance(path_or_image, (str, os.PathLike)) else 'the image'} has no "
            f"{PNG_KEY!r} text chunk: it was not saved with its generation parameters"
        )
    return GenerationParameters.from_text(text)
