"""The output folder of a job run: PNGs written atomically as they finish, and a manifest that records each one.

``manifest.jsonl`` gets one line per finished image, appended (and synced) only after the PNG is in place under its
final name. A job counts as finished when its line is there and its file still holds the recorded bytes; anything
else (a PNG without a line, a leftover temporary file) is half-done and is made again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from difframe.atomic import atomic_write_bytes, atomic_write_text

from .spec import Job

MANIFEST = "manifest.jsonl"
LOCK = ".difframe-run.lock"


class OutputFolderError(OSError):
    """An output folder that cannot be written."""


class OutputFolder:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self.manifest = self.path / MANIFEST
        self._records: dict[str, dict[str, Any]] = {}
        self._files: dict[str, str] = {}  # file name -> job key, of every recorded image
        self._lock_file: Any = None

    def prepare(self) -> None:
        """Create the folder, prove it writable, drop temporary files an interrupted run left, read the manifest."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".difframe-write-check."):
                pass
        except OSError as error:
            raise OutputFolderError(
                f"output folder {self.path} is not writable ({error.strerror or error}): choose another --out, or "
                "fix its permissions"
            ) from None
        self._lock()
        for leftover in self.path.glob(".*.png.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._records, self._files = {}, {}
        if not self.manifest.exists():
            return
        text = self.manifest.read_text(encoding="utf-8")
        kept = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
                self._records[record["key"]] = record
                self._files[record["file"]] = record["key"]
                kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash: its job is redone
        if text and (not text.endswith("\n") or len(kept) != len(text.splitlines())):
            atomic_write_text(self.manifest, "".join(line + "\n" for line in kept))  # appends start on a clean line

    def _lock(self) -> None:
        """One run per folder at a time: two would write the same files and manifest."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            return
        if self._lock_file is not None:
            return
        handle = open(self.path / LOCK, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputFolderError(
                f"another run is writing to {self.path}: wait for it to end, or choose another --out"
            ) from None
        self._lock_file = handle

    def close(self) -> None:
        """Let another run use the folder."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def is_finished(self, job: Job) -> bool:
        record = self._records.get(job.key)
        if record is None:
            return False
        try:
            data = (self.path / record["file"]).read_bytes()
        except OSError:
            return False
        return hashlib.sha256(data).hexdigest() == record.get("sha256")

    def finished_file(self, job: Job) -> Path:
        return self.path / self._records[job.key]["file"]

    def _target(self, job: Job) -> Path:
        """The job's file name, unless an image of another job already holds it (a changed job file)."""
        candidate, n = self.path / job.file_name(), 1
        while self._files.get(candidate.name, job.key) != job.key:
            candidate = self.path / f"{Path(job.file_name()).stem}_{n}.png"
            n += 1
        return candidate

    def write(self, job: Job, png: bytes, worker: str = "", threads: int = 0) -> Path:
        """The PNG under its final name (whole or not at all), then its manifest line."""
        path = self._target(job)
        atomic_write_bytes(path, png)
        record = {
            "key": job.key,
            "line": job.line,
            "file": path.name,
            "sha256": hashlib.sha256(png).hexdigest(),
            "prompt": job.prompt,
            "seed": job.seed,
            "worker": worker,
            "threads": threads,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(self.manifest, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._records[job.key] = record
        self._files[path.name] = job.key
        return path
