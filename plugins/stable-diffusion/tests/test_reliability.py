"""Reliability of the pipelines: several threads on one pipeline, outputs that are never half-written, interrupted
runs that say so, seeds that do not collide, inputs that would silently give wrong images, NaN during denoising."""

from __future__ import annotations

import errno
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

STEPS = 3


@pytest.fixture(scope="module")
def pipe(h, framework, tiny_model):
    return h.build(framework, tiny_model, scheduler="euler_a")


def run_in_threads(function, arguments, workers=4):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, arguments))


# --- threads ---------------------------------------------------------------------------------------------------------
def test_concurrent_calls_give_the_sequential_images(pipe):
    # a stochastic sampler (its steps draw from the images' generators), chunked batches, different step counts
    calls = [
        dict(prompt="a cat", seed=1, num_inference_steps=3),
        dict(prompt=["a dog", "a bird"], seeds=[5, 6], num_inference_steps=4, memory_budget=1),
        dict(prompt="a fox", seed=2, num_inference_steps=2, guidance_scale=1.0),
        dict(prompt="a cat", seed=9, num_inference_steps=5, num_images_per_prompt=2),
    ] * 2

    def one(kwargs):
        return pipe(output_type="np", **kwargs).images

    sequential = [one(kwargs) for kwargs in calls]
    concurrent = run_in_threads(one, calls)
    for alone, together in zip(sequential, concurrent):
        assert np.array_equal(alone, together)


def test_concurrent_image_to_image_and_inpainting(h, framework, tiny_model):
    for name in ("stable-diffusion-img2img", "stable-diffusion-inpaint"):
        pipe = h.build(framework, tiny_model, name, scheduler="dpmpp")
        extra = {"mask_image": h.make_mask(32)} if name.endswith("inpaint") else {}
        calls = [dict(seed=s, strength=0.5 + 0.1 * s, num_inference_steps=4) for s in range(4)]

        def one(kwargs, pipe=pipe, extra=extra):
            return pipe("a cat", image=h.make_image(32), output_type="np", **extra, **kwargs).images

        sequential = [one(kwargs) for kwargs in calls]
        assert all(np.array_equal(a, b) for a, b in zip(sequential, run_in_threads(one, calls)))


def test_offloaded_calls_take_turns(h, framework, tiny_model):
    pipe = h.build(framework, tiny_model, scheduler="dpmpp", cpu_offload="cpu")
    calls = [dict(seed=s, num_inference_steps=2 + s % 2) for s in range(4)]

    def one(kwargs):
        def nested(p, step, timestep, tensors):  # a call made from a callback must not wait for its caller
            if step == 0 and kwargs["seed"] == 0:
                p("a bird", seed=9, num_inference_steps=1, output_type="latent")
            return {}

        return pipe("a cat", output_type="np", callback_on_step_end=nested, **kwargs).images

    sequential = [one(kwargs) for kwargs in calls]
    assert all(np.array_equal(a, b) for a, b in zip(sequential, run_in_threads(one, calls)))
    assert pipe._active_module is None


def test_a_call_keeps_its_sampler_when_another_thread_swaps_it(h, framework, tiny_model):
    pipe = h.build(framework, tiny_model, scheduler="dpmpp")
    kwargs = dict(prompt="a cat", seed=4, num_inference_steps=4, output_type="np")
    baseline = pipe(**kwargs).images
    paused, resume = threading.Event(), threading.Event()

    def pause_once(p, step, timestep, tensors):
        if step == 1 and not paused.is_set():
            paused.set()
            assert resume.wait(30)
        return {}

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(pipe, callback_on_step_end=pause_once, **kwargs)
        assert paused.wait(30)
        pipe.set_scheduler("euler")  # does not wait: the running call sampled with its own copy
        resume.set()
        out = running.result()
    assert np.array_equal(out.images, baseline) and out.parameters[0].scheduler == "dpmpp_2m"
    assert pipe(**kwargs).parameters[0].scheduler == "euler"


def test_model_changes_wait_for_running_calls(h, framework, tiny_model):
    pipe = h.build(framework, tiny_model, scheduler="ddim", attention="sdpa")
    kwargs = dict(prompt="a cat", seed=4, num_inference_steps=3, output_type="np")
    baseline = pipe(**kwargs).images
    paused, resume, changed = threading.Event(), threading.Event(), threading.Event()

    def pause_once(p, step, timestep, tensors):
        if step == 1 and not paused.is_set():
            paused.set()
            assert resume.wait(30)
        return {}

    def change():
        pipe.set_attention("reference")
        pipe.enable_vae_slicing()
        changed.set()

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(pipe, callback_on_step_end=pause_once, **kwargs)
        assert paused.wait(30)
        changer = pool.submit(change)
        assert not changed.wait(0.5)  # the change waits for the call in progress
        resume.set()
        out = running.result()
        changer.result()
    assert changed.is_set() and np.array_equal(out.images, baseline)
    assert np.abs(pipe(**kwargs).images - baseline).max() < 1e-4  # later calls run with the change


def test_rewiring_the_models_from_a_callback_is_refused(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, scheduler="ddim")

    def rewire(p, step, timestep, tensors):
        p.enable_attention_slicing()

    with pytest.raises(RuntimeError, match="cannot run inside a call of this pipeline"):
        pipe("a cat", seed=1, num_inference_steps=2, callback_on_step_end=rewire)
    pipe("a cat", seed=1, num_inference_steps=1)  # the gate was released


def test_interrupt_from_another_thread_stops_every_call(pipe):
    started = threading.Barrier(3)

    def wait_then_go(p, step, timestep, tensors):
        if step == 0:
            started.wait(30)
        return {}

    with ThreadPoolExecutor(2) as pool:
        running = [
            pool.submit(pipe, "a cat", seed=s, num_inference_steps=20, callback_on_step_end=wait_then_go)
            for s in (1, 2)
        ]
        started.wait(30)
        pipe.interrupt()
        outs = [r.result() for r in running]
    assert all(o.interrupted and not o.finished[0] for o in outs)
    assert not pipe("a cat", seed=1, num_inference_steps=2).interrupted  # the next call starts afresh


# --- outputs on disk -------------------------------------------------------------------------------------------------
def _failing_save(exception, calls_before_failure=0):
    original = Image.Image.save
    count = {"n": 0}

    def save(self, fp, *args, **kwargs):
        count["n"] += 1
        if count["n"] <= calls_before_failure:
            return original(self, fp, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        original(self, buffer, *args, **kwargs)
        fp.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half the file is on disk when it fails
        raise exception

    return save


@pytest.mark.parametrize(
    "exception", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"]
)
def test_a_failed_save_leaves_no_partial_png(pipe, tmp_path, monkeypatch, exception):
    out = pipe("a cat", seed=3, num_inference_steps=1, num_images_per_prompt=3)
    first = out.save(tmp_path)  # earlier images of the folder must survive
    monkeypatch.setattr(Image.Image, "save", _failing_save(exception, calls_before_failure=1))
    with pytest.raises(type(exception)):
        out.save(tmp_path)
    monkeypatch.undo()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and not any(n.startswith(".") for n in names)  # 3 first + 1 complete; no temporaries
    for path in tmp_path.iterdir():
        with Image.open(path) as image:
            image.load()  # complete PNGs only
    assert all(p.exists() for p in first)


@pytest.mark.parametrize(
    "exception", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"]
)
def test_save_png_replaces_a_file_whole_or_not_at_all(tmp_path, monkeypatch, exception):
    from difframe_stable_diffusion.metadata import GenerationParameters, read_parameters, save_png

    old = GenerationParameters(prompt="old", steps=2, scheduler="ddim", seed=1, width=8, height=8)
    path = save_png(Image.new("RGB", (8, 8), "red"), tmp_path / "a.png", old)
    monkeypatch.setattr(Image.Image, "save", _failing_save(exception))
    with pytest.raises(type(exception)):
        save_png(Image.new("RGB", (8, 8), "blue"), path, GenerationParameters(prompt="new", steps=3, seed=1))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary left
    assert read_parameters(path) == old  # the old file, complete
    new = GenerationParameters(prompt="new", steps=3, scheduler="ddim", seed=1, width=8, height=8)
    assert read_parameters(save_png(Image.new("RGB", (8, 8), "blue"), path, new)) == new  # replaced when it works
    with pytest.raises(IsADirectoryError, match="folder"):
        save_png(Image.new("RGB", (8, 8)), tmp_path, new)


def test_concurrent_saves_into_one_folder_never_share_a_name(pipe, tmp_path):
    out = pipe("a cat", seed=3, num_inference_steps=1, num_images_per_prompt=2)
    paths = [p for group in run_in_threads(lambda _: out.save(tmp_path), range(8)) for p in group]
    assert len(set(paths)) == 16 == len(list(tmp_path.glob("*.png")))


def test_interrupted_images_record_the_steps_they_ran(pipe, tmp_path):
    from difframe_stable_diffusion.metadata import read_parameters

    def stop_after_two(p, step, timestep, tensors):
        if step == 1:
            p.interrupt()

    out = pipe("a cat", seed=7, num_inference_steps=5, callback_on_step_end=stop_after_two)
    assert out.interrupted and out.finished == [False]
    params = out.parameters[0]
    assert params.steps == 2 and params.extra["Interrupted"] == "after 2 of 5 steps"
    assert "Steps: 2," in out.images[0].info["parameters"]
    with pytest.warns(UserWarning, match="cut short by interrupt"):
        assert out.save(tmp_path) == []
    [path] = out.save(tmp_path, include_unfinished=True)
    assert path.name == "00000-7-unfinished.png"
    assert read_parameters(path).extra["Interrupted"] == "after 2 of 5 steps"

    def stop_at_the_end(p, step, timestep, tensors):
        if step == 4:
            p.interrupt()

    done = pipe("a cat", seed=7, num_inference_steps=5, callback_on_step_end=stop_at_the_end)
    assert done.finished == [True] and done.parameters[0].steps == 5 and not done.parameters[0].extra


# --- seeds -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [2**32, 2**40, 2**63, -1, 1.5, "7", True])
def test_seeds_the_generator_cannot_keep_are_refused(pipe, bad):
    for kwargs in (dict(seed=bad), dict(seeds=[bad])):
        with pytest.raises(ValueError, match="seed"):
            pipe("a cat", num_inference_steps=1, output_type="latent", **kwargs)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_seed_and_seeds_record_and_make_the_same_image(pipe, seed):
    kwargs = dict(num_inference_steps=1, output_type="latent", guidance_scale=1.0)
    one = pipe("a cat", seed=np.int64(seed), **kwargs)
    listed = pipe("a cat", seeds=[seed], **kwargs)
    assert one.seeds == listed.seeds == [seed] and one.parameters[0].seed == listed.parameters[0].seed == seed
    assert torch.equal(one.images, listed.images)
    other = pipe("a cat", seed=(seed + 1) % 2**32, **kwargs)
    assert not torch.equal(one.images, other.images)


def test_consecutive_seeds_wrap_and_are_recorded_as_used(pipe):
    out = pipe("a cat", seed=2**32 - 1, num_images_per_prompt=2, num_inference_steps=1, output_type="latent")
    assert out.seeds == [2**32 - 1, 0] and [p.seed for p in out.parameters] == [2**32 - 1, 0]
    zero = pipe("a cat", seed=0, num_inference_steps=1, output_type="latent")
    assert torch.allclose(out.images[1:], zero.images, atol=1e-5)  # second in a batch: float rounding may differ


# --- inputs that would give silently wrong images --------------------------------------------------------------------
@pytest.mark.parametrize("size", [dict(height=0), dict(width=0), dict(height=-32), dict(width=32.0)])
def test_zero_or_negative_sizes_are_refused(pipe, size):
    with pytest.raises(ValueError, match="must be a positive integer"):
        pipe("a cat", num_inference_steps=1, **size)


def test_guidance_scale_limits(pipe):
    for huge in (1e6, float("inf"), -500.0):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number of at most 100"):
            pipe("a cat", num_inference_steps=1, guidance_scale=huge)
    with pytest.warns(UserWarning, match="saturate"):
        pipe("a cat", seed=1, num_inference_steps=1, guidance_scale=50.0, output_type="latent")
    with pytest.warns(UserWarning, match="negative prompt is ignored"):
        pipe("a cat", negative_prompt="ugly", seed=1, num_inference_steps=1, guidance_scale=1.0, output_type="latent")


def _grey(value: float, mode: str) -> Image.Image:
    scale = {"I;16": 65535, "I": 65535, "F": 1.0}[mode]
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    return Image.fromarray((np.full((32, 32), value * scale)).astype(dtype), mode=None)


@settings(max_examples=25, deadline=None)
@given(value=st.floats(0.0, 1.0), mode=st.sampled_from(["I;16", "I", "F"]))
def test_high_bit_depth_images_are_rescaled(value, mode):
    from difframe_stable_diffusion.images import preprocess_images, preprocess_masks

    image = _grey(value, mode)
    assert image.mode == mode
    pixels = (preprocess_images([image], 32, 32) + 1) / 2
    assert float((pixels - value).abs().max()) <= 1 / 65535 + 1e-6
    mask = preprocess_masks([image], 32, 32)
    expected = 1.0 if round(value * 65535) / 65535 >= 0.5 else 0.0
    assert mode == "F" or float(mask.mean()) == expected or abs(value - 0.5) < 1e-4


@settings(max_examples=25, deadline=None)
@given(value=st.integers(0, 65535), kind=st.sampled_from(["numpy", "torch"]))
def test_uint16_arrays_and_tensors_are_rescaled(value, kind):
    from difframe_stable_diffusion.images import preprocess_images

    array = np.full((32, 32, 3), value, dtype=np.uint16)
    image = array if kind == "numpy" else torch.from_numpy(array.astype(np.int32)).to(torch.uint16).permute(2, 0, 1)
    pixels = (preprocess_images([image], 32, 32) + 1) / 2
    assert abs(float(pixels.mean()) - value / 65535) < 1e-6


def test_uint8_arrays_and_odd_dtypes(h):
    from difframe_stable_diffusion.images import preprocess_images, preprocess_masks

    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert abs(float((preprocess_images([grey], 32, 32) + 1).mean() / 2) - 128 / 255) < 1e-6
    with pytest.warns(UserWarning, match="only 0 and 1"):
        preprocess_masks([np.ones((32, 32), dtype=np.uint8)], 32, 32)
    with pytest.raises(TypeError, match="int32"):
        preprocess_images([np.zeros((32, 32, 3), dtype=np.int32)], 32, 32)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        preprocess_images([np.full((32, 32, 3), 2.0, dtype=np.float32)], 32, 32)


@pytest.mark.parametrize("kind", ["numpy", "torch", "mask"])
def test_nan_pixels_are_refused_before_any_model_runs(h, framework, tiny_model, kind):
    pipe = h.cached(framework, tiny_model, "stable-diffusion-inpaint", "ddim")
    pipe.timings = {}
    array = np.asarray(h.make_image(32), dtype=np.float32) / 255
    array[3, 4, 1] = np.nan
    image = torch.from_numpy(array).permute(2, 0, 1) if kind == "torch" else array
    kwargs = dict(image=image, mask_image=h.make_mask(32))
    if kind == "mask":
        mask = np.zeros((32, 32), dtype=np.float32)
        mask[0, 0] = np.inf
        kwargs = dict(image=h.make_image(32), mask_image=mask)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipe("a cat", num_inference_steps=2, **kwargs)
    assert not pipe.timings


@pytest.mark.parametrize("factor", [0.0, float("nan"), -0.18215])
def test_a_broken_vae_scaling_factor_is_refused(h, framework, tiny_model, tmp_path, factor):
    import json
    import shutil
    from types import SimpleNamespace

    pipe = h.build(framework, tiny_model)
    # our VAE refuses such a config itself; a plugin's VAE swapped in on a loaded pipeline may not
    foreign = SimpleNamespace(
        scale_factor=2, config=SimpleNamespace(**{**dict(pipe.vae.config), "scaling_factor": factor})
    )
    pipe.vae = foreign
    pipe.timings = {}
    with pytest.raises(ValueError, match="scaling_factor must be a positive finite number"):
        pipe("a cat", num_inference_steps=1)
    assert not pipe.timings
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    config = json.loads((broken / "vae" / "config.json").read_text())
    config["scaling_factor"] = factor
    (broken / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vae/config.json: the VAE's scaling_factor"):
        framework.build("stable-diffusion", model=broken)


# --- NaN during denoising --------------------------------------------------------------------------------------------
def _nan_from_call(module, call_index):
    original = module.forward
    count = {"n": 0}

    def forward(*args, **kwargs):
        result = original(*args, **kwargs)
        count["n"] += 1
        if count["n"] == call_index:
            first = result[0] if isinstance(result, tuple) else getattr(result, "sample", result)
            first[-1].view(-1)[0] = float("nan")  # the last image of the batch
        return result

    return forward


def test_nan_in_the_unet_stops_at_that_step(h, framework, tiny_model, monkeypatch):
    from difframe_stable_diffusion.numerics import NonFiniteError

    pipe = h.build(framework, tiny_model, scheduler="ddim", reproducible=False)  # the two images in each call
    monkeypatch.setattr(pipe.unet, "forward", _nan_from_call(pipe.unet, 2))
    steps = []
    with pytest.raises(NonFiniteError, match=r"at step 2 of 4 .* in the UNet output for image\(s\) 1 \(seed 6\)"):
        pipe(
            "a cat",
            seeds=[5, 6],
            num_images_per_prompt=2,
            num_inference_steps=4,
            callback_on_step_end=lambda p, i, t, x: steps.append(i) or {},
        )
    assert steps == [0]  # nothing after the step that made NaN


def test_on_accelerators_nan_is_read_back_every_few_steps_but_reported_where_it_began():
    from difframe_stable_diffusion.numerics import FiniteWatch, NonFiniteError

    watch = FiniteWatch(steps=10, image_offset=4, context={"seeds": [None] * 4 + [11, 12]}, interval=8)
    latents = torch.zeros(2, 4, 8, 8)
    for step in range(8):
        bad = latents.clone()
        if step >= 2:
            bad[1, 0, 0, 0] = float("inf")  # from step 3 on, in the second image of a chunk that starts at 4
        watch.record(step, 999 - step, "UNet output", torch.cat([latents, latents]), images=2)
        watch.record(step, 999 - step, "sampler step", bad, images=2)
        if step < 7:
            watch.end_step(step)  # nothing read back yet: no sync
            assert len(watch._pending) == 2 * (step + 1)
    with pytest.raises(
        NonFiniteError, match=r"at step 3 of 10 \(timestep 997\) in the sampler step for image\(s\) 5 \(seed 12\)"
    ):
        watch.end_step(7)


def test_nan_from_a_callback_and_the_decoder_are_named(h, framework, tiny_model, monkeypatch):
    from difframe_stable_diffusion.numerics import NonFiniteError

    pipe = h.build(framework, tiny_model, scheduler="ddim")

    def poison(p, step, timestep, tensors):
        return {"latents": tensors["latents"] * float("inf")} if step == 2 else {}

    with pytest.raises(NonFiniteError, match="at step 3 of 3 .* in the callback"):
        pipe("a cat", seed=1, num_inference_steps=3, callback_on_step_end=poison)
    original = pipe.vae.decode

    def decode(latents, *args, **kwargs):
        result = original(latents, *args, **kwargs)
        sample = getattr(result, "sample", result[0] if isinstance(result, tuple) else result)
        sample.fill_(float("nan"))
        return result

    monkeypatch.setattr(pipe.vae, "decode", decode)
    with pytest.raises(NonFiniteError, match="VAE decoder"):
        pipe("a cat", seed=1, num_inference_steps=1)


# --- raw tracebacks ------------------------------------------------------------------------------------------------
def test_a_huge_request_is_refused_with_a_memory_estimate(pipe):
    pipe.timings = {}
    with pytest.raises(ValueError, match=r"100000x100000 image needs at least [\d.]+ GiB .* free"):
        pipe("a cat", height=100_000, width=100_000, num_inference_steps=1)
    assert not pipe.timings
    pipe.timings = None


@pytest.mark.parametrize(
    ("device", "message"),
    [("bogus", "unknown device 'bogus'"), ("cuda:99" if torch.cuda.is_available() else "cuda", "device 'cuda")],
)
def test_offload_device_errors_are_clear(h, framework, tiny_model, device, message):
    with pytest.raises(ValueError, match=message):
        framework.build("stable-diffusion", model=tiny_model, cpu_offload=device)
    pipe = h.cached(framework, tiny_model)
    with pytest.raises(ValueError, match=message):
        pipe.enable_model_cpu_offload(device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipe("a cat", seed=1, num_inference_steps=1, output_type="latent").images.shape[0] == 1


# --- any argument: an image, or a clear error before any model runs --------------------------------------------------
ODD_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.one_of(st.none(), st.sampled_from([0, 4, 30, 32, -32]), ODD_NUMBERS),
    steps=st.one_of(st.integers(-2, 3), ODD_NUMBERS),
    guidance=st.one_of(st.floats(-200, 200), ODD_NUMBERS),
    seed=st.one_of(st.none(), st.integers(-5, 2**33), ODD_NUMBERS, st.lists(st.integers(-1, 3), max_size=2)),
    images=st.one_of(st.integers(-1, 2), ODD_NUMBERS),
)
def test_any_arguments_give_an_image_or_a_clear_error_before_any_model_runs(
    pipe, height, steps, guidance, seed, images
):
    from difframe.errors import DifframeError

    pipe.timings = {}
    kwargs = dict(height=height, num_inference_steps=steps, guidance_scale=guidance, seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = pipe("a cat", num_images_per_prompt=images, output_type="latent", **kwargs)
    except (ValueError, TypeError, DifframeError) as error:
        assert str(error) and not pipe.timings, f"{type(error).__name__} after a model ran: {error}"
    else:
        assert out.images.shape[0] == images and torch.isfinite(out.images).all()
        assert [p.seed for p in out.parameters] == out.seeds and all(0 <= s < 2**32 for s in out.seeds)
    finally:
        pipe.timings = None
