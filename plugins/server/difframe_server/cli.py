"""`difframe serve`: start the server (uvicorn). Ctrl-C interrupts the running job after its current step, answers
the waiting ones 503, and exits. Importing this module imports neither torch nor the web framework."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any


def add_serve_command(cli: Any) -> None:
    parser = cli.add_parser(
        "serve",
        help="serve the web UI's HTTP API, a native API and a web page",
        description="Serve Stable Diffusion over HTTP: the web UI's API at /sdapi/v1 (its clients work unchanged), "
        "difframe's API at /api/v1 (OpenAPI at /docs) and a page at /. Binds 127.0.0.1 unless --host says otherwise.",
    )
    parser.add_argument("-m", "--model", help="model folder or hub id (default: the built-in model)")
    parser.add_argument("--models-dir", type=Path, help="folder of model folders clients may choose by name")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860, the web UI's)")
    parser.add_argument("--api-auth", help="user:password[,user2:password2]: HTTP basic auth on every route")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    parser.add_argument("--max-queue", type=int, default=64, help="jobs waiting or running before 503 (default 64)")
    parser.add_argument(
        "--max-batch", type=int, default=16, help="images of waiting requests run as one batch (default 16; 1: none)"
    )
    parser.add_argument("--max-steps", type=int, default=150, help="steps per request (default 150)")
    parser.add_argument("--max-side", type=int, default=2048, help="largest width or height (default 2048)")
    parser.add_argument("--max-images", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--max-upload-mb", type=float, default=20, help="largest request body in MB (default 20)")
    parser.set_defaults(func=run_serve)


def settings_from_args(args: argparse.Namespace) -> Any:
    from .settings import Limits, ServerSettings, parse_api_auth

    limits = Limits(
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_steps=args.max_steps,
        max_side=args.max_side,
        max_images=args.max_images,
        max_upload_bytes=int(args.max_upload_mb * 1_000_000),
    )
    return ServerSettings(
        host=args.host,
        port=args.port,
        model=args.model,
        models_dir=args.models_dir,
        api_auth=parse_api_auth(args.api_auth),
        device=args.device,
        dtype=args.dtype,
        limits=limits,
    )


def run_serve(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except (ValueError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return serve(settings)


def serve(settings: Any) -> int:
    import uvicorn

    from .app import create_app
    from .engine import ModelUnavailable
    from .state import ServerState

    state = ServerState.create(settings)
    # load the startup model before accepting requests: a bad --model fails here, not on the first request
    try:
        state.queue.submit("load", lambda jobs: [state.engine.load(state.options.model)]).future.result()
    except ModelUnavailable as error:
        print(f"error: {error.__cause__}", file=sys.stderr)
        state.queue.shutdown()
        return 2
    app = create_app(settings, state)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=30)
    server = make_server(config, state)
    print(f"difframe serving {state.options.model.title} at http://{settings.host}:{settings.port}/", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled, after shutting down
        server.run()
    print("difframe serve: stopped", file=sys.stderr)
    return 0


def make_server(config: Any, state: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """Ctrl-C also stops the job in progress (after its current step) and fails the waiting ones, so the
        graceful shutdown does not wait for work nobody will collect."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.queue.shutdown()
            super().handle_exit(sig, frame)

    return Server(config)
