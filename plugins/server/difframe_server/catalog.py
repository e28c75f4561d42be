"""The models a client may choose, by title. A request names a title, never a path: titles come from the model the
server was started with and from the sub-folders of the configured models folder, so no request parameter reaches
the filesystem except through that folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class UnknownModel(LookupError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    title: str
    reference: str | None  # folder or hub id; None: the pipeline's built-in model
    filename: str


class ModelCatalog:
    def __init__(self, startup_model: str | None, models_dir: Path | None, builtin_title: str) -> None:
        self.models_dir = models_dir
        if startup_model is None:
            self.default = ModelEntry(builtin_title, None, builtin_title)
        else:
            self.default = ModelEntry(_title(startup_model), startup_model, startup_model)

    def entries(self) -> list[ModelEntry]:
        """The startup model, then each model folder (one holding model_index.json) of the models folder."""
        found = [self.default]
        if self.models_dir is not None:
            root = self.models_dir.resolve()
            for folder in sorted(root.iterdir()):
                real = folder.resolve()
                inside = real.parent == root  # a link out of the models folder is not offered
                if inside and (real / "model_index.json").is_file() and folder.name != self.default.title:
                    found.append(ModelEntry(folder.name, str(real), str(real)))
        return found

    def resolve(self, title: str) -> ModelEntry:
        """The entry with this title (a trailing '.safetensors' or ' [hash]' as web-UI clients write is ignored)."""
        wanted = title.strip()
        wanted = wanted.split(" [", 1)[0].removesuffix(".safetensors").removesuffix(".ckpt")
        entries = self.entries()
        for entry in entries:
            if entry.title == wanted:
                return entry
        raise UnknownModel(
            f"model {title!r} is not available; choose one of: {', '.join(e.title for e in entries)} "
            "(models are offered from the server's models folder only)"
        )


def _title(reference: str) -> str:
    path = Path(os.path.expanduser(reference))
    return path.resolve().name if path.is_dir() else reference
