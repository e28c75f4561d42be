"""Bad input gets a 4xx naming the field, never a traceback, and the server keeps serving; request parameters never
reach the filesystem except through the models folder."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image

SMALL = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}


def png_base64(size: tuple[int, int] = (64, 64)) -> str:
    return _png(Image.new("RGB", size, "blue"))


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server, path: str, payload=None, **kwargs) -> requests.Response:
    return requests.post(server.url + path, json=payload, timeout=120, **kwargs)


def assert_refused(response: requests.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert field in body["detail"], body
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**SMALL, "steps": "many"}, "steps"),
        ({**SMALL, "width": "wide"}, "width"),
        ({**SMALL, "cfg_scale": [7]}, "cfg_scale"),
        ({**SMALL, "prompt": {"text": 1}}, "prompt"),
        ({**SMALL, "sampler_name": "Nonexistent"}, "sampler_name"),
        ({**SMALL, "scheduler": "exponential"}, "scheduler"),
        ({**SMALL, "steps": 0}, "steps"),
        ({**SMALL, "steps": 201}, "steps"),
        ({**SMALL, "width": 4096}, "width"),
        ({**SMALL, "height": 60}, "height"),
        ({**SMALL, "width": -64}, "width"),
        ({**SMALL, "batch_size": 5, "n_iter": 2}, "batch_size"),
        ({**SMALL, "enable_hr": True}, "enable_hr"),
        ({**SMALL, "subseed_strength": 0.5}, "subseed_strength"),
        ({**SMALL, "restore_faces": True}, "restore_faces"),
        ({**SMALL, "alwayson_scripts": {"ControlNet": {"args": []}}}, "alwayson_scripts"),
        ({**SMALL, "sampler_name": "DDIM", "eta": 1.0}, "eta"),
        ({**SMALL, "override_settings": {"eta_noise_seed_delta": 31337}}, "override_settings.eta_noise_seed_delta"),
        ({**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 40}}, "CLIP_stop_at_last_layers"),
        ({**SMALL, "styles": ["Cinematic"]}, "styles"),
        ({**SMALL, "tiling": True}, "tiling"),
        ({**SMALL, "s_churn": 0.5}, "s_churn"),
        ({**SMALL, "s_noise": 1.1}, "s_noise"),
        ({**SMALL, "seed_resize_from_w": 128}, "seed_resize_from_w"),
        ({**SMALL, "refiner_checkpoint": "other"}, "refiner_checkpoint"),
        ({**SMALL, "script_name": "x/y/z plot"}, "script_name"),
        ({**SMALL, "infotext": "a cat\nSteps: 30, Sampler: Euler, CFG scale: 7, Seed: 1"}, "infotext"),
        ({**SMALL, "prompt": "a cat <lora::0.5>"}, "prompt"),
        ({**SMALL, "prompt": "a cat <lora:../../etc/passwd:1>"}, "prompt"),
        ({**SMALL, "negative_prompt": "<lora:ink:0.5>"}, "prompt"),
    ],
)
def test_txt2img_refuses_with_the_field_named(server, payload, field):
    assert_refused(post(server, "/sdapi/v1/txt2img", payload), 422, field)


def test_malformed_json_and_wrong_body(server):
    raw = requests.post(
        server.url + "/sdapi/v1/txt2img", data="{'prompt': ", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_refused(raw, 422, "malformed JSON")
    assert_refused(post(server, "/sdapi/v1/txt2img", [1, 2]), 422, "body")
    assert_refused(post(server, "/api/v1/generate", {"prompt": "x", "stepz": 3}), 422, "stepz")  # native: strict


@pytest.mark.parametrize(
    ("init", "field"),
    [
        ("not base64 at all!", "init_images[0]"),
        (base64.b64encode(b"plain text, not an image").decode(), "init_images[0]"),
        ("http://127.0.0.1:1/x.png", "init_images[0]"),
        (png_base64((300, 300)), "init_images[0]"),  # over the test server's pixel limit
    ],
)
def test_img2img_refuses_what_is_not_an_image(server, init, field):
    assert_refused(post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [init]}), 422, field)


def test_img2img_other_refusals(server):
    image = png_base64()
    assert_refused(post(server, "/sdapi/v1/img2img", {**SMALL}), 422, "init_images")
    assert_refused(post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [image], "mask": image}), 422, "mask")
    white = _png(Image.new("L", (64, 64), 255))
    for extra, field in [
        ({"mask": _png(Image.new("L", (32, 64), 255))}, "mask"),  # not the init image's size
        ({"mask": "not base64!"}, "mask"),
        ({"mask": white, "inpainting_fill": 2}, "inpainting_fill"),  # latent noise
        ({"mask": white, "inpainting_fill": 3}, "inpainting_fill"),  # latent nothing
        ({"mask": white, "mask_blur": -1}, "mask_blur"),
        ({"mask": white, "inpaint_full_res_padding": -8}, "inpaint_full_res_padding"),
        ({"mask": white, "mask_round": False}, "mask_round"),
    ]:
        assert_refused(post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [image], **extra}), 422, field)
    for mode in (3, 7, -1):
        refused = post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [image], "resize_mode": mode})
        assert_refused(refused, 422, "resize_mode")
    assert_refused(post(server, "/sdapi/v1/png-info", {"image": "not an image"}), 422, "image")
    assert_refused(post(server, "/sdapi/v1/png-info", {}), 422, "image")
    bad_strength = {**SMALL, "init_images": [image], "denoising_strength": 1.5}
    assert_refused(post(server, "/sdapi/v1/img2img", bad_strength), 422, "denoising_strength")


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    huge = {**SMALL, "init_images": ["A" * 3_000_000]}
    assert_refused(post(server, "/sdapi/v1/img2img", huge), 413, "max_upload_bytes")


def test_lora_tags_without_extra_networks_are_taken_out_as_the_web_ui_does(server):
    plain = post(server, "/sdapi/v1/txt2img", SMALL)
    tagged = {**SMALL, "prompt": "a red circle<lora:ink:0.8>", "disable_extra_networks": True}
    response = post(server, "/sdapi/v1/txt2img", tagged)
    assert response.status_code == 200, response.text
    assert response.json()["images"] == plain.json()["images"]  # the tag changed nothing


def test_unknown_fields_are_ignored_like_the_web_ui_and_the_server_keeps_serving(server):
    response = post(server, "/sdapi/v1/txt2img", {**SMALL, "some_extension_field": {"a": 1}, "do_not_save_grid": 1})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_an_internal_error_leaks_no_traceback(server, monkeypatch):
    def broken(jobs):
        raise RuntimeError("secret detail at /home/someone/model.safetensors")

    monkeypatch.setattr(server.state.engine, "run", broken)
    response = post(server, "/sdapi/v1/txt2img", SMALL)
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["error"] == "InternalError"


@pytest.mark.parametrize("title", ["../difframe-shapes", "/etc/passwd", "..", "outside", "~/models/x", "C:\\x"])
def test_model_names_never_reach_the_filesystem(models_server, title):
    """Only titles from /sd-models are accepted; the link that leads out of the models folder is not offered."""
    titles = [m["title"] for m in requests.get(models_server.url + "/sdapi/v1/sd-models", timeout=30).json()]
    assert titles == ["difframe-shapes", "inside"]
    assert_refused(post(models_server, "/sdapi/v1/options", {"sd_model_checkpoint": title}), 404, "sd_model_checkpoint")
    override = {**SMALL, "override_settings": {"sd_model_checkpoint": title}}
    assert_refused(post(models_server, "/sdapi/v1/txt2img", override), 404, "sd_model_checkpoint")
    assert_refused(post(models_server, "/api/v1/generate", {"prompt": "x", "model": title}), 404, "model")


@pytest.fixture(scope="module")
def models_server(engine, framework, tmp_path_factory):
    from difframe.framework import packaged_folder
    from difframe_server.settings import ServerSettings
    from difframe_server.testing import serve_in_thread

    builtin = Path(packaged_folder(framework.get("pipeline", "stable-diffusion").spec.default_model))
    root = tmp_path_factory.mktemp("served")
    models = root / "models"
    models.mkdir()
    (models / "inside").mkdir()
    shutil.copy(builtin / "model_index.json", models / "inside" / "model_index.json")
    outside = root / "outside-model"
    shutil.copytree(builtin, outside, ignore=shutil.ignore_patterns("*.safetensors"))
    (models / "outside").symlink_to(outside, target_is_directory=True)
    with serve_in_thread(ServerSettings(models_dir=models), engine=engine, framework=framework) as running:
        yield running


def test_a_model_that_fails_to_load_is_reported_without_its_paths(models_server):
    """ "inside" is offered (it has model_index.json) but holds no weights: the request fails with a message that
    names the model and not the server's folders, and the server serves the next request."""
    assert post(models_server, "/sdapi/v1/options", {"sd_model_checkpoint": "inside"}).status_code == 200
    try:
        response = post(models_server, "/sdapi/v1/txt2img", SMALL)
        assert response.status_code == 500
        assert "'inside' could not be loaded" in response.json()["detail"]
        assert str(models_server.state.settings.models_dir) not in response.text and "Traceback" not in response.text
    finally:
        post(models_server, "/sdapi/v1/options", {"sd_model_checkpoint": "difframe-shapes"})
    assert post(models_server, "/sdapi/v1/txt2img", SMALL).status_code == 200
