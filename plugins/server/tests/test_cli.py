"""`difframe serve` as a user runs it: a subprocess that binds 127.0.0.1 by default and stops cleanly on Ctrl-C,
even in the middle of a job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ctrl_c_stops_the_server_cleanly_during_a_job():
    port = free_port()
    command = [sys.executable, "-m", "difframe.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if requests.get(url + "/sdapi/v1/options", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        answer: dict = {}
        payload = {"prompt": "x", "steps": 150, "width": 64, "height": 64, "seed": 1}
        client = threading.Thread(
            target=lambda: answer.update(r=requests.post(url + "/sdapi/v1/txt2img", json=payload, timeout=120))
        )
        client.start()
        deadline = time.monotonic() + 120
        while not requests.get(url + "/api/v1/progress", timeout=5).json()["running"]:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        client.join(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "127.0.0.1" in stderr  # bound to loopback unless --host says otherwise
    assert answer["r"].status_code == 200  # the job stopped after its step and answered with what it had
    assert len(answer["r"].json()["images"]) == 1


def test_bad_flags_are_errors_not_tracebacks(tmp_path):
    for flags, message in (
        (["--api-auth", "no-colon"], "--api-auth takes user:password"),
        (["--models-dir", str(tmp_path / "missing")], "is not a directory"),
        (["--model", str(tmp_path / "no-model-here"), "--port", str(free_port())], "no-model-here"),
    ):
        command = [sys.executable, "-m", "difframe.cli", "serve", *flags]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
