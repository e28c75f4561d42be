"""What a server is started with: where it listens, who may use it, which models it may load, and the limits every
request is held to. Validated once at start-up, so a bad flag stops `difframe serve` before any weight is read."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Limits(BaseModel):
    """Bounds on one request (4xx naming the field when exceeded) and on the queue (503 when full)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(150, ge=1, description="denoising steps per request (the web UI's slider stops at 150)")
    max_side: int = Field(2048, ge=8, description="largest width or height in pixels")
    max_images: int = Field(16, ge=1, description="images per request (batch_size x n_iter)")
    max_upload_bytes: int = Field(20_000_000, ge=1024, description="largest request body (base64 images included)")
    max_upload_pixels: int = Field(4096 * 4096, ge=64, description="largest uploaded image, width x height")
    max_queue: int = Field(64, ge=1, description="jobs waiting or running; more are answered 503 with Retry-After")
    max_batch: int = Field(16, ge=1, description="images of waiting requests with equal settings run as one batch")


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    model: str | None = None  # folder or hub id given by the operator; None: the built-in model
    models_dir: Path | None = None  # the only place request parameters may pick models from
    api_auth: dict[str, str] = Field(default_factory=dict)  # user -> password; empty: no authentication
    device: str | None = None
    dtype: str | None = None
    limits: Limits = Field(default_factory=Limits)

    @field_validator("models_dir")
    @classmethod
    def _models_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"models folder {value} is not a directory")
        return value.resolve() if value is not None else None


def parse_api_auth(text: str | None) -> dict[str, str]:
    """'user:pass' or 'u1:p1,u2:p2' (the web UI's --api-auth) -> {user: password}."""
    if not text:
        return {}
    credentials = {}
    for pair in text.split(","):
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth takes user:password (several separated by commas), got {pair.strip()!r}")
        credentials[user] = password
    return credentials
