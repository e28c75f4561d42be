"""Generation parameters as PNG text, in the format AUTOMATIC1111's web UI writes (and ComfyUI, InvokeAI and
civitai read): a tEXt chunk named "parameters" holding

    a watercolor fox
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 7, Size: 512x512, Model: sd15

No torch here: reading metadata back is cheap.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PNG_KEY = "parameters"

# difframe scheduler name -> the sampler label the web UIs show. The reverse map also takes the newer
# "Sampler: DPM++ 2M, Schedule type: Karras" spelling.
SAMPLER_LABELS: dict[str, str] = {
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PNDM",
    "plms": "PLMS",
    "lms": "LMS",
    "lms_karras": "LMS Karras",
    "euler": "Euler",
    "euler_karras": "Euler Karras",
    "euler_a": "Euler a",
    "heun": "Heun",
    "heun_karras": "Heun Karras",
    "dpm2": "DPM2",
    "dpm2_karras": "DPM2 Karras",
    "dpm2_a": "DPM2 a",
    "dpm2_a_karras": "DPM2 a Karras",
    "dpmpp": "DPM++ 2M",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_karras": "DPM++ SDE Karras",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_3m_sde_karras": "DPM++ 3M SDE Karras",
    "unipc": "UniPC",
    "unipc_karras": "UniPC Karras",
    "deis": "DEIS",
    "lcm": "LCM",
}
_PREFERRED = {"DPM++ 2M": "dpmpp"}
LABEL_TO_SCHEDULER: dict[str, str] = {
    label.lower(): _PREFERRED.get(label, name) for name, label in reversed(SAMPLER_LABELS.items())
}


def sampler_label(scheduler_name: str | None) -> str:
    """The web-UI label of a difframe scheduler name; unknown names are written as they are."""
    if not scheduler_name:
        return "unknown"
    return SAMPLER_LABELS.get(scheduler_name, scheduler_name)


def scheduler_from_label(label: str, schedule_type: str | None = None) -> str:
    """The difframe scheduler name for a web-UI sampler label (the inverse of sampler_label)."""
    text = label.strip()
    kind = (schedule_type or "").strip()
    if kind.lower() not in ("automatic", "uniform", "") and not text.lower().endswith(kind.lower()):
        text = f"{text} {kind}"
    return LABEL_TO_SCHEDULER.get(text.lower(), text)


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
        """The web-UI "parameters" string."""
        pairs: list[tuple[str, Any]] = [
            ("Steps", self.steps),
            ("Sampler", sampler_label(self.scheduler)),
            ("CFG scale", _number(self.guidance_scale)),
        ]
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
        pairs.extend(self.extra.items())
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs))
        return "\n".join(lines)

    # --- reading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str) -> GenerationParameters:
        """Parse a web-UI "parameters" string (ours, or one AUTOMATIC1111 wrote)."""
        lines = text.strip("\n").split("\n")
        settings: dict[str, str] = {}
        if lines and _looks_like_settings(lines[-1]):
            settings = parse_settings(lines.pop())
        prompt_lines, negative_lines, target = [], [], None
        for line in lines:
            if line.startswith("Negative prompt:"):
                target = negative_lines
                line = line[len("Negative prompt:") :].lstrip()
            (target if target is not None else prompt_lines).append(line)
        known: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
        extra = dict(settings)

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
        schedule_type = extra.pop("Schedule type", None)
        if sampler is not None:
            known["scheduler"] = scheduler_from_label(sampler, schedule_type)
        return cls(**known, extra=extra)

    def replace(self, **changes: Any) -> GenerationParameters:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return GenerationParameters(**{**values, **changes})


def _number(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else f"{float(value):.1f}"


def _quote(value: str) -> str:
    """Values with a comma, colon or newline are JSON strings, as the web UI writes them."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


_SETTING = re.compile(r'\s*(\w[\w ()\-+/.]*?):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _looks_like_settings(line: str) -> bool:
    return bool(re.match(r"\s*Steps:\s*\d+", line)) or len(_SETTING.findall(line)) >= 3


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


# --- PNG files --------------------------------------------------------------------------------------------------
def png_info(parameters: GenerationParameters | str) -> Any:
    """A PIL PngInfo with the "parameters" tEXt chunk, for ``image.save(path, pnginfo=...)``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    text = parameters if isinstance(parameters, str) else parameters.to_text()
    info.add_text(PNG_KEY, text)  # tEXt when the text is Latin-1, as the web UI writes it
    return info


def save_png(image: Any, path: str | os.PathLike[str], parameters: GenerationParameters | str) -> Path:
    """Save a PIL image as PNG with its generation parameters embedded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=png_info(parameters))
    return path


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
