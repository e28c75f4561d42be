"""Job files: one JSON line per image, run by an engine ("local" in this process, "ray" across a cluster), written
as they finish into an output folder with a manifest that makes the run resumable.

``run_jobs(jobs, engine="local", out=...)`` is the Python API; ``difframe generate --prompts FILE`` the command.
Nothing here imports torch until a worker builds its pipeline.
"""

from .runner import RunSummary, run_jobs
from .spec import Job, JobFileError, load_jobs, parse_jobs

__all__ = ["Job", "JobFileError", "RunSummary", "load_jobs", "parse_jobs", "run_jobs"]
