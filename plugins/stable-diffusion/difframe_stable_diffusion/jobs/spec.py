"""The job file: one image per line, validated with line numbers before any worker starts. A line is a JSON object
of settings, or (when it does not start with "{" or "[") a plain prompt:

    {"prompt": "a red circle", "seed": 7}
    {"prompt": "a blue square", "negative_prompt": "blurry", "seed": 8, "steps": 30, "sampler": "euler_a"}
    a green triangle

Options missing from a line come from the command line (or ``defaults``); ``seed`` may come from a base seed
(job i gets base + i). Every job ends up with a fixed seed, so each image can be made again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ..cli import package_folder

MAX_SEED = 2**32 - 1  # as request.MAX_SEED: the noise generator keeps 32 bits, larger seeds would collide
# what decides the pipeline a worker builds; the rest of a job's settings apply per call
PIPELINE_FIELDS = ("model", "dtype", "attention")
PER_IMAGE_FIELDS = ("prompt", "negative_prompt", "seed", "name")


class JobFileError(ValueError):
    """A job file that cannot run: every problem found, each with its line number."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Job(BaseModel):
    """One image: its prompt and seed, and the settings it is made with."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    prompt: str
    negative_prompt: str = Field("", validation_alias=AliasChoices("negative_prompt", "negative"))
    seed: int = Field(ge=0, le=MAX_SEED)
    steps: int = Field(25, ge=1, validation_alias=AliasChoices("steps", "num_inference_steps"))
    sampler: str = Field("dpmpp", min_length=1, validation_alias=AliasChoices("sampler", "scheduler"))
    guidance: float = Field(7.5, allow_inf_nan=False, validation_alias=AliasChoices("guidance", "guidance_scale"))
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0)
    width: int | None = Field(None, gt=0, multiple_of=8)
    height: int | None = Field(None, gt=0, multiple_of=8)
    clip_skip: int | None = Field(None, ge=0)
    model: str | None = None  # folder or hub id; None: the pipeline's built-in model
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    attention: str = "auto"
    name: str | None = Field(None, pattern=r"^[\w][\w.\- ]{0,120}$")  # output file stem; default <line>-<seed>

    _line: int = PrivateAttr(0)

    @model_validator(mode="before")
    @classmethod
    def _size(cls, data: Any) -> Any:
        """``"size": "768x512"`` (width x height) or ``"size": 512`` is shorthand for width and height."""
        if not isinstance(data, dict) or "size" not in data:
            return data
        data = dict(data)
        size = data.pop("size")
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", str(size)) if isinstance(size, (int, str)) else None
        if not match or isinstance(size, bool):
            raise ValueError(f"size must look like 512 or '768x512' (width x height), got {size!r}")
        data["width"], data["height"] = int(match.group(1)), int(match.group(2) or match.group(1))
        return data

    @property
    def line(self) -> int:
        """The job file line this job came from (0 for jobs made in Python)."""
        return self._line

    @property
    def key(self) -> str:
        """Identifies the image this job makes (everything but its file name): the manifest's key."""
        settings = self.model_dump(exclude={"name"})
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def settings_key(self) -> tuple[Any, ...]:
        """Jobs with equal settings may share one pipeline call."""
        return tuple(sorted(self.model_dump(exclude=set(PER_IMAGE_FIELDS)).items()))

    @property
    def pipeline_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in PIPELINE_FIELDS)

    @property
    def label(self) -> str:
        return f"line {self.line}" if self.line else f"job {self.name or self.key}"

    def file_name(self) -> str:
        return f"{self.name or f'{self.line:05d}-{self.seed}'}.png"


_CANONICAL = {
    alias: name
    for name, f in Job.model_fields.items()
    if isinstance(f.validation_alias, AliasChoices)
    for alias in f.validation_alias.choices
    if isinstance(alias, str)
}
_KNOWN = sorted({*Job.model_fields, *_CANONICAL, "size"})


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, _KNOWN, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(_KNOWN)}"
        return f"unknown option {where!r}{hint}"
    if error["type"] == "missing":
        return f"{where!r} is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _model_reference(model: Any, unfound: dict[str, tuple[str, list[int]]], number: int) -> Any:
    """A local model folder is passed on as an absolute path (workers may run in another directory). PACKAGE:FOLDER,
    a folder inside an installed package (read as ``difframe generate --model`` reads it), is checked here and
    passed on as it is: each worker finds it in its own installation. A folder or package folder that does not
    exist is noted with its line (hub ids, "org/name", are left to the workers)."""
    if not isinstance(model, str) or not model:
        return model
    try:
        folder = package_folder(model)
    except (ValueError, OSError) as error:
        unfound.setdefault(model, (str(error), []))[1].append(number)
        return model
    if folder != model:
        return model
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    if model.startswith(("/", ".", "~")) or ":\\" in model:
        unfound.setdefault(model, (f"model folder {model} does not exist", []))[1].append(number)
    return model


def parse_jobs(
    lines: Iterable[str],
    *,
    source: str = "jobs",
    defaults: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> list[Job]:
    """Validate every line (blank lines are skipped); raise JobFileError listing every bad line."""
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    jobs: list[Job] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    unfound_models: dict[str, tuple[str, list[int]]] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if text.lstrip()[:1] not in ("{", "["):  # a plain line is a prompt, with the command line's settings
            text = json.dumps({"prompt": text.strip()})
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            problems.append(
                f"{source} line {number}: not JSON ({error.msg} at column {error.colno}); each line is one object, "
                'e.g. {"prompt": "a red fox", "seed": 7}'
            )
            continue
        if not isinstance(data, dict):
            problems.append(f"{source} line {number}: a JSON object is expected, got {type(data).__name__}")
            continue
        canonical = {_CANONICAL.get(key, key) for key in data}
        if len(canonical) < len(data):
            twice = sorted(
                {key for key in data if sum(_CANONICAL.get(k, k) == _CANONICAL.get(key, key) for k in data) > 1}
            )
            problems.append(f"{source} line {number}: {' and '.join(map(repr, twice))} name the same option; keep one")
            continue
        data = {_CANONICAL.get(key, key): value for key, value in data.items()}
        if "seed" not in data and seed is not None:
            data = {**data, "seed": seed + len(jobs)}
        if "seed" not in data:
            problems.append(
                f'{source} line {number}: no seed: give "seed" on the line, or a base seed (--seed S gives job i '
                "the seed S+i), so that every image can be made again"
            )
            continue
        data = {**defaults, **data}
        if "model" in data:
            data["model"] = _model_reference(data["model"], unfound_models, number)
        try:
            job = Job.model_validate(data)
        except ValidationError as error:
            problems.extend(f"{source} line {number}: {_describe(e)}" for e in error.errors())
            continue
        job._line = number
        if job.key in first_line:
            problems.append(
                f"{source} line {number}: the same job as line {first_line[job.key]} (prompt, seed and settings); "
                "it would make the same image twice"
            )
            continue
        first_line[job.key] = number
        jobs.append(job)
    names: dict[str, int] = {}
    for job in jobs:
        if job.file_name() in names:
            problems.append(
                f"{source} line {job.line}: name {job.name!r} is also used on line {names[job.file_name()]}"
            )
        names[job.file_name()] = job.line
    for reason, numbers in unfound_models.values():  # one problem per model, not one per job
        where = f"line {numbers[0]}" if len(numbers) == 1 else f"lines {', '.join(map(str, numbers[:10]))}"
        more = ", ..." if len(numbers) > 10 else ""
        problems.append(f"{source}: {reason} ({where}{more})")
    if problems:
        raise JobFileError(problems)
    if not jobs:
        raise JobFileError([f"{source}: no jobs (one JSON object per line)"])
    return jobs


def load_jobs(path: str | os.PathLike[str], **options: Any) -> list[Job]:
    """Read and validate a job file (JSON lines); see parse_jobs."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError([f"job file {path} does not exist"]) from None
    except UnicodeDecodeError as error:
        raise JobFileError([f"{path} is not UTF-8 text: {error}"]) from None
    return parse_jobs(text.splitlines(), source=str(path), **options)


def make_jobs(items: Iterable[Job | Mapping[str, Any]], **options: Any) -> list[Job]:
    """Jobs from Python: Job objects, or dicts validated like job file lines (numbered from 1)."""
    lines = [json.dumps(item.model_dump() if isinstance(item, Job) else dict(item)) for item in items]
    return parse_jobs(lines, **{"source": "job", **options})


def group_batches(jobs: Iterable[Job], batch_size: int) -> list[list[Job]]:
    """Jobs with the same settings, in file order, in batches of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.settings_key, []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
