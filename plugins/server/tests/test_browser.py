"""The page at `/` in a real headless Chromium (Debian's package, driven by Selenium through chromedriver): load it,
watch the progress of a long job and interrupt it, generate with the built-in model, see the image and its
parameters, reuse them. Chromium is installed with apt-get when this runs as root and it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from difframe_server.testing import assert_same_image, decode

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _find_browser() -> tuple[str | None, str | None]:
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    browser, driver = _find_browser()
    if (browser is None or driver is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        browser, driver = _find_browser()
    if browser is None or driver is None:
        pytest.skip("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver, as root)")
    return browser, driver


@pytest.fixture
def page(chromium, server):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements-test.txt)")
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(server.url + "/")
        yield driver
    finally:
        driver.quit()


def test_generate_in_the_page(page, reference):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(page, 300)

    def field(name: str):
        return page.find_element(By.ID, name)

    def fill(name: str, value: object) -> None:
        field(name).clear()
        field(name).send_keys(str(value))

    wait.until(lambda d: len(Select(field("sampler")).options) > 5)  # samplers come from /api/v1/samplers
    Select(field("sampler")).select_by_value("euler")
    fill("prompt", "a red circle on a blue background")
    fill("seed", 5)

    # a long job: its progress and preview show while it runs; the Interrupt button stops it
    fill("steps", 150)
    field("generate").click()
    wait.until(lambda d: field("step").text.startswith("step "))
    wait.until(lambda d: field("preview").get_attribute("hidden") is None)
    field("interrupt").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.result")) == 1)

    # a short job: the image, its parameters, and reusing them
    fill("steps", 6)
    fill("guidance_scale", 6)
    field("generate").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.result")) == 2)
    newest = page.find_elements(By.CSS_SELECTOR, "figure")[0]
    image = newest.find_element(By.CSS_SELECTOR, "img.result")
    assert page.execute_script("return arguments[0].naturalWidth", image) == 64
    parameters = newest.find_element(By.TAG_NAME, "pre").text
    assert "Steps: 6" in parameters and "Seed: 5" in parameters and "Sampler: Euler," in parameters
    assert field("error").text == ""

    reference.set_scheduler("euler")
    direct = reference("a red circle on a blue background", seed=5, num_inference_steps=6, guidance_scale=6)
    assert_same_image(decode(image.get_attribute("src").split(",", 1)[1]), direct.images[0])

    fill("steps", 30)
    fill("seed", 99)
    newest.find_element(By.CSS_SELECTOR, "button.reuse").click()
    assert field("steps").get_attribute("value") == "6"
    assert field("seed").get_attribute("value") == "5"
    assert field("guidance_scale").get_attribute("value") == "6"
