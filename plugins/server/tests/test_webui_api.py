"""The web UI's API, driven by its published Python client (webuiapi, written by others), against a direct
Framework().build(...) call with the same settings."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
from difframe_server.testing import assert_same_image, decode
from difframe_stable_diffusion.metadata import GenerationParameters
from PIL import Image, ImageDraw, ImageFilter, ImageOps

webuiapi = pytest.importorskip("webuiapi")

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def client(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_txt2img_equals_a_direct_call(client, reference):
    result = client.txt2img(
        prompt=PROMPT,
        negative_prompt="green",
        seed=7,
        steps=4,
        width=64,
        height=64,
        batch_size=2,
        cfg_scale=6.5,
        sampler_name="Euler a",
    )
    reference.set_scheduler("euler_a")
    direct = reference(
        PROMPT,
        negative_prompt="green",
        seed=7,
        num_inference_steps=4,
        width=64,
        height=64,
        num_images_per_prompt=2,
        guidance_scale=6.5,
    )
    assert len(result.images) == 2
    for served, expected in zip(result.images, direct.images):
        assert_same_image(served, expected)
    # "info" is JSON as the web UI writes it; each infotext is the PNG "parameters" text and parses back
    assert result.info["all_seeds"] == [7, 8]
    assert result.info["sampler_name"] == "Euler a"
    assert result.info["sd_model_name"] == "difframe-shapes"
    assert result.images[1].info["parameters"] == result.info["infotexts"][1]
    parsed = GenerationParameters.from_text(result.info["infotexts"][1])
    assert (parsed.seed, parsed.steps, parsed.scheduler, parsed.guidance_scale) == (8, 4, "euler_a", 6.5)
    assert parsed.negative_prompt == "green"
    assert result.parameters["prompt"] == PROMPT


def test_img2img_equals_a_direct_call(client, framework):
    init = Image.new("RGB", (64, 64), "blue")
    ImageDraw.Draw(init).ellipse((16, 16, 48, 48), fill="red")
    result = client.img2img(
        images=[init],
        prompt=PROMPT,
        seed=3,
        steps=6,
        width=64,
        height=64,
        denoising_strength=0.5,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
    )
    direct_pipe = framework.build("stable-diffusion-img2img", scheduler="dpmpp_2m_karras")
    direct = direct_pipe(PROMPT, image=init, strength=0.5, seed=3, num_inference_steps=6, guidance_scale=7.0)
    assert_same_image(result.image, direct.images[0])
    assert result.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    assert result.parameters["init_images"] is None  # as the web UI: not echoed unless include_init_images


@pytest.mark.parametrize("mode", [1, 2])
def test_img2img_resize_modes_equal_a_direct_call_on_the_fitted_image(client, framework, mode):
    from difframe_server.images import fit_image

    init = Image.new("RGB", (96, 48), "blue")
    ImageDraw.Draw(init).rectangle((0, 0, 10, 47), fill="red")  # a left edge that crop cuts off and fill stretches
    result = client.img2img(
        images=[init], prompt=PROMPT, seed=5, steps=2, width=64, height=64, resize_mode=mode, sampler_name="Euler"
    )
    fitted = fit_image(init, 64, 64, mode)
    assert fitted.size == (64, 64)
    if mode == 1:  # cover and crop: the centre of the image, the red edge gone
        assert fitted.getpixel((0, 32)) == (0, 0, 255)
    else:  # fit and fill: the margins above and below repeat the outer rows, red at the left
        assert fitted.getpixel((1, 0))[0] > 200 and fitted.getpixel((60, 63)) == (0, 0, 255)
    direct_pipe = framework.build("stable-diffusion-img2img", scheduler="euler")
    direct = direct_pipe(PROMPT, image=fitted, strength=0.75, seed=5, num_inference_steps=2, guidance_scale=7.0)
    assert_same_image(result.image, direct.images[0])


def _inpainting_inputs():
    init = Image.new("RGB", (64, 64), "blue")
    ImageDraw.Draw(init).ellipse((8, 8, 56, 56), fill="red")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 24, 47, 39), fill=255)
    return init, mask


def test_inpainting_equals_a_direct_call_laid_over_the_init_image(client, framework):
    init, mask = _inpainting_inputs()
    options = dict(prompt=PROMPT, seed=2, steps=2, width=64, height=64, sampler_name="Euler", denoising_strength=0.75)
    exact = dict(mask_blur=0, inpainting_fill=1, inpaint_full_res=False)  # as a direct call does
    result = client.img2img(images=[init], mask_image=mask, **options, **exact)
    pipe = framework.build("stable-diffusion-inpaint", scheduler="euler")
    direct = pipe(PROMPT, image=init, mask_image=mask, strength=0.75, seed=2, num_inference_steps=2, guidance_scale=7)
    assert_same_image(result.image, Image.composite(direct.images[0], init, mask))
    served, original, repaint = (np.asarray(i, dtype=int) for i in (result.image.convert("RGB"), init, mask))
    assert (served[repaint == 0] == original[repaint == 0]).all()  # outside the mask: the init image, exactly
    assert abs(served[repaint == 255] - original[repaint == 255]).mean() > 5  # inside: repainted
    assert result.parameters["mask"] is None  # not echoed, as the web UI
    # an inverted mask with inpainting_mask_invert is the same request
    inverted = client.img2img(
        images=[init], mask_image=ImageOps.invert(mask), inpainting_mask_invert=1, **options, **exact
    )
    assert_same_image(inverted.image, result.image)


def test_inpainting_with_the_clients_defaults_only_changes_the_masked_region(client):
    init, mask = _inpainting_inputs()  # webuiapi's defaults: blur 4, fill, only masked ("full res")
    result = client.img2img(images=[init], mask_image=mask, prompt=PROMPT, seed=2, steps=2, width=64, height=64,
                            sampler_name="Euler")  # fmt: skip
    served, original = np.asarray(result.image.convert("RGB"), dtype=int), np.asarray(init, dtype=int)
    far = np.asarray(mask.filter(ImageFilter.MaxFilter(25))) == 0  # beyond the blur's reach
    assert (served[far] == original[far]).all()
    assert abs(served[24:40, 16:48] - original[24:40, 16:48]).mean() > 5
    assert result.info["infotexts"][0].count("Denoising strength: 0.75") == 1


def test_png_info_reads_what_txt2img_wrote(client):
    result = client.txt2img(prompt="a fox\nNegative prompt: not one", negative_prompt="blur", seed=4, steps=1,
                            width=64, height=64, sampler_name="Euler")  # fmt: skip
    info = client.png_info(result.image)
    assert info.info == result.info["infotexts"][0]
    fields = info.parameters
    assert (fields["Prompt"], fields["Negative prompt"]) == ("a fox\nNegative prompt: not one", "blur")
    assert (fields["Steps"], fields["Seed"], fields["Size-1"], fields["Size-2"]) == ("1", "4", "64", "64")
    assert client.png_info(Image.new("RGB", (8, 8))).json == {"info": "", "items": {}, "parameters": {}}


def test_options_clip_skip_and_model(client, server, reference):
    assert client.get_options()["sd_model_checkpoint"] == "difframe-shapes"
    assert client.util_get_current_model() == "difframe-shapes"
    client.util_set_model("difframe-shapes")
    client.set_options({"CLIP_stop_at_last_layers": 2})
    try:
        assert client.get_options()["CLIP_stop_at_last_layers"] == 2
        result = client.txt2img(prompt=PROMPT, seed=5, steps=2, width=64, height=64, sampler_name="Euler")
    finally:
        client.set_options({"CLIP_stop_at_last_layers": 1})
    reference.set_scheduler("euler")
    direct = reference(PROMPT, seed=5, num_inference_steps=2, guidance_scale=7.0, clip_skip=1)
    assert_same_image(result.image, direct.images[0])
    assert result.info["clip_skip"] == 2 and "Clip skip: 2" in result.info["infotexts"][0]


def test_listings(client):
    samplers = {s["name"]: s for s in client.get_samplers()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"} <= samplers.keys()
    assert "euler_a" in samplers["Euler a"]["aliases"]
    assert client.util_get_scheduler_names() == ["automatic", "karras"]
    assert client.util_get_model_names() == ["difframe-shapes"]


def test_progress_shows_the_current_image_and_interrupt_stops_within_a_step(server):
    url = server.url + "/sdapi/v1"
    answer: dict = {}

    def generate() -> None:
        payload = {"prompt": PROMPT, "steps": 150, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}
        answer["response"] = requests.post(url + "/txt2img", json=payload, timeout=600)

    worker = threading.Thread(target=generate)
    worker.start()
    deadline = time.monotonic() + 300
    progress: dict = {}
    while time.monotonic() < deadline:
        progress = requests.get(url + "/progress", timeout=30).json()
        if progress["state"]["sampling_step"] >= 2 and progress["current_image"]:
            break
        time.sleep(0.05)
    assert progress["state"]["sampling_steps"] == 150 and 0 < progress["progress"] < 1
    assert decode(progress["current_image"]).size == (64, 64)
    assert requests.post(url + "/interrupt", timeout=30).json() == {}
    worker.join(300)
    response = answer["response"]
    assert response.status_code == 200
    assert len(response.json()["images"]) == 1  # the web UI answers an interrupted job with what it has
    job = requests.get(server.url + "/api/v1/status", timeout=30).json()["recent"][-1]
    assert job["state"] == "interrupted"
    assert job["steps_run"] - job["stop_requested_at_step"] <= 1, job  # at most the step that was running
    assert job["steps_run"] < 150
    assert requests.get(url + "/progress", timeout=30).json()["progress"] == 0  # idle again


def test_auth_like_the_web_ui(engine, framework):
    from difframe_server.settings import ServerSettings
    from difframe_server.testing import serve_in_thread

    settings = ServerSettings(api_auth={"alice": "s3cret"})
    with serve_in_thread(settings, engine=engine, framework=framework) as running:
        anonymous = requests.get(running.url + "/sdapi/v1/options", timeout=30)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Basic"
        wrong = requests.get(running.url + "/api/v1/status", auth=("alice", "nope"), timeout=30)
        assert wrong.status_code == 401
        assert requests.get(running.url + "/", timeout=30).status_code == 401
        client = webuiapi.WebUIApi(port=running.port, username="alice", password="s3cret")
        assert client.get_options()["sd_model_checkpoint"] == "difframe-shapes"
