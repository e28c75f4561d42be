"""difframe's own API: the plugin listing is `difframe plugins --json`, generation equals a direct call, OpenAPI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import requests
from difframe_server.testing import assert_same_image, decode


def test_plugins_are_listed_as_the_cli_lists_them(server):
    served = requests.get(server.url + "/api/v1/plugins", timeout=60).json()
    printed = subprocess.run(
        [sys.executable, "-m", "difframe.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout
    assert served == json.loads(printed)
    assert any(p["name"] == "difframe-server" for p in served)  # this plugin, with its register_commands hook
    only = requests.get(server.url + "/api/v1/plugins", params={"kind": "scheduler"}, timeout=60).json()
    assert {r["kind"] for p in only for r in p["registrations"]} == {"scheduler"}
    bad = requests.get(server.url + "/api/v1/plugins", params={"kind": "nope"}, timeout=60)
    assert bad.status_code == 422 and "kind" in bad.json()["detail"]


def test_kind_listings(server):
    from difframe.cli import KINDS

    samplers = requests.get(server.url + "/api/v1/samplers", timeout=60).json()
    assert {"euler_a", "dpmpp_2m", "ddim"} <= {s["name"] for s in samplers}
    assert all(s["kind"] == "scheduler" and s["plugin"] for s in samplers)
    conditioners = requests.get(server.url + "/api/v1/conditioners", timeout=60)
    assert conditioners.status_code == 200
    for route, kind in (("guiders", "guider"), ("hooks", "hook")):
        response = requests.get(server.url + f"/api/v1/{route}", timeout=60)
        if kind in KINDS or f"inference_{kind}" in KINDS:
            assert response.status_code == 200
        else:  # this difframe has no such kind yet: said so, with the kinds it has
            assert response.status_code == 404 and "kinds:" in response.json()["detail"]


def test_generate_equals_a_direct_call(server, reference):
    payload = {"prompt": "a blue square", "sampler": "euler", "steps": 3, "seed": 11, "batch": 2, "guidance_scale": 5}
    result = requests.post(server.url + "/api/v1/generate", json=payload, timeout=300).json()
    reference.set_scheduler("euler")
    direct = reference("a blue square", seed=11, num_inference_steps=3, num_images_per_prompt=2, guidance_scale=5)
    assert [item["seed"] for item in result["images"]] == [11, 12]
    for item, expected in zip(result["images"], direct.images):
        assert_same_image(decode(item["image"]), expected)
        assert decode(item["image"]).info["parameters"] == item["parameters"]
    assert result["images"][1]["settings"]["seed"] == 12 and result["interrupted"] is False


def test_openapi_documents_both_apis(server):
    schema = requests.get(server.url + "/openapi.json", timeout=60).json()
    assert {"/api/v1/generate", "/api/v1/plugins", "/sdapi/v1/txt2img", "/sdapi/v1/progress"} <= schema["paths"].keys()
    docs = requests.get(server.url + "/docs", timeout=60)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    page = requests.get(server.url + "/", timeout=60)
    assert page.status_code == 200 and 'id="prompt"' in page.text
