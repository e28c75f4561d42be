"""Under load: one pipeline serves many clients one job at a time, nothing is lost, a full queue answers 503 with
Retry-After, and a client that leaves takes its work with it. Loopback only, bounded in count and time."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from difframe_server.testing import assert_same_image, decode

CLIENTS = 50
SEEDS = 5  # requests cycle through these seeds, so each answer can be checked against a direct call


def txt2img(url: str, seed: int, steps: int = 2, timeout: float = 600) -> requests.Response:
    payload = {"prompt": "a green triangle", "steps": steps, "width": 64, "height": 64, "seed": seed}
    return requests.post(url + "/sdapi/v1/txt2img", json={**payload, "sampler_name": "Euler"}, timeout=timeout)


def wait_until_running(url: str, min_step: int = 1, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = requests.get(url + "/api/v1/progress", params={"preview": False}, timeout=30).json()
        if progress["running"] and progress["step"] >= min_step:
            return progress
        time.sleep(0.02)
    raise AssertionError("no job started running")


def wait_until_waiting(url: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while requests.get(url + "/api/v1/status", timeout=30).json()["waiting"] < count:
        assert time.monotonic() < deadline, f"{count} jobs never waited"
        time.sleep(0.02)


def wait_until_idle(url: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(url + "/api/v1/status", timeout=30).json()
        if status["running"] is None and status["waiting"] == 0:
            return status
        time.sleep(0.05)
    raise AssertionError("the server did not become idle")


def test_fifty_concurrent_clients_all_answered_correctly(server, reference):
    before = requests.get(server.url + "/api/v1/status", timeout=30).json()["counts"].get("done", 0)
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda i: txt2img(server.url, 100 + i % SEEDS), range(CLIENTS)))
    assert [r.status_code for r in responses] == [200] * CLIENTS
    reference.set_scheduler("euler")
    expected = {
        100 + i: reference("a green triangle", seed=100 + i, num_inference_steps=2, guidance_scale=7.0).images[0]
        for i in range(SEEDS)
    }
    for response in responses:
        body = response.json()
        seed = json.loads(body["info"])["seed"]
        assert_same_image(decode(body["images"][0]), expected[seed])
    status = wait_until_idle(server.url)
    assert status["counts"]["done"] - before == CLIENTS  # none lost, none run twice
    jobs = sorted(status["recent"], key=lambda j: j["id"])  # the last 20
    assert all(j["state"] == "done" for j in jobs)
    assert max(j["batch"] for j in jobs) > 1  # requests that waited together ran as one batch
    assert max(j["batch"] for j in jobs) <= server.state.settings.limits.max_batch


def test_a_full_queue_answers_503_with_retry_after(engine, framework):
    from difframe_server.settings import Limits, ServerSettings
    from difframe_server.testing import serve_in_thread

    with serve_in_thread(ServerSettings(limits=Limits(max_queue=2)), engine=engine, framework=framework) as running:
        long_job = threading.Thread(target=txt2img, args=(running.url, 1, 150))
        long_job.start()
        wait_until_running(running.url)
        with ThreadPoolExecutor(6) as pool:  # one fits beside the running job, the rest are refused
            burst = [pool.submit(txt2img, running.url, 200 + i, 1) for i in range(6)]
            deadline = time.monotonic() + 120
            while requests.get(running.url + "/api/v1/status", timeout=30).json()["counts"].get("rejected", 0) < 5:
                assert time.monotonic() < deadline, "the burst was not refused"
                time.sleep(0.02)
            requests.post(running.url + "/sdapi/v1/interrupt", timeout=30)
            responses = [f.result() for f in burst]
        long_job.join(300)
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] + [503] * 5
        for refused in (r for r in responses if r.status_code == 503):
            assert int(refused.headers["Retry-After"]) >= 1
            assert "queue is full" in refused.json()["detail"]
        assert txt2img(running.url, 7, 1).status_code == 200  # and it keeps serving


def open_request(port: int, seed: int, steps: int = 150) -> socket.socket:
    """A txt2img request on a raw connection, so that the test can hang up while it waits."""
    payload = {"prompt": "x", "steps": steps, "width": 64, "height": 64, "seed": seed, "sampler_name": "Euler"}
    body = json.dumps(payload).encode()
    head = (
        f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(head + body)
    return connection


def read_response(connection: socket.socket) -> dict:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def test_a_client_that_disconnects_leaves_no_work_behind(server):
    """The running job of a client that hangs up stops after its current step; a waiting one never starts."""
    port = server.port

    before = {j["id"] for j in requests.get(server.url + "/api/v1/status", timeout=30).json()["recent"]}
    running = open_request(port, 1)
    wait_until_running(server.url)
    waiting = open_request(port, 2)
    wait_until_waiting(server.url, 1)
    waiting.close()
    running.close()
    status = wait_until_idle(server.url)
    jobs = [j for j in status["recent"] if j["id"] not in before]
    assert [j["state"] for j in jobs] == ["cancelled", "cancelled"], jobs
    first, second = jobs
    assert first["steps_run"] < 150 and first["steps_run"] - first["stop_requested_at_step"] <= 1
    assert second["steps_run"] == 0


def test_a_batch_goes_on_for_the_clients_still_waiting(server, reference):
    """Two waiting requests with equal settings run as one batch; one client leaves mid-batch, the other still gets
    its image, the one it would get alone."""
    before = {j["id"] for j in requests.get(server.url + "/api/v1/status", timeout=30).json()["recent"]}
    blocker = open_request(server.port, 1)
    wait_until_running(server.url)
    leaving = open_request(server.port, 21, steps=12)
    wait_until_waiting(server.url, 1)  # so the queue holds them in this order
    staying = open_request(server.port, 22, steps=12)
    wait_until_waiting(server.url, 2)
    blocker.close()
    deadline = time.monotonic() + 300
    while True:
        running = requests.get(server.url + "/api/v1/status", timeout=30).json()["running"]
        if running and running["batch"] == 2 and running["steps_run"] >= 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    leaving.close()
    answer = read_response(staying)
    reference.set_scheduler("euler")
    alone = reference("x", seed=22, num_inference_steps=12, guidance_scale=7.0).images[0]
    assert_same_image(decode(answer["images"][0]), alone)
    jobs = [j for j in wait_until_idle(server.url)["recent"] if j["id"] not in before]
    assert [(j["state"], j["batch"]) for j in jobs[1:]] == [("cancelled", 2), ("done", 2)], jobs
    assert jobs[1]["steps_run"] == jobs[2]["steps_run"] == 12  # the batch ran on for the client that stayed


def test_concurrent_requests_with_different_samplers_each_get_their_own(server, reference):
    """The worker switches the pipeline's sampler between jobs; requests that wait together never share one."""
    labels = {"Euler": "euler", "DDIM": "ddim", "DPM++ 2M": "dpmpp_2m"}
    asks = [(label, 300 + i) for i, label in enumerate(list(labels) * 3)]

    def ask(item):
        label, seed = item
        payload = {"prompt": "a green triangle", "steps": 2, "width": 64, "height": 64, "seed": seed}
        return requests.post(server.url + "/sdapi/v1/txt2img", json={**payload, "sampler_name": label}, timeout=600)

    with ThreadPoolExecutor(len(asks)) as pool:
        responses = list(pool.map(ask, asks))
    assert [r.status_code for r in responses] == [200] * len(asks)
    for (label, seed), response in zip(asks, responses):
        reference.set_scheduler(labels[label])
        expected = reference("a green triangle", seed=seed, num_inference_steps=2, guidance_scale=7.0).images[0]
        assert_same_image(decode(response.json()["images"][0]), expected)
        assert json.loads(response.json()["info"])["sampler_name"] == label
