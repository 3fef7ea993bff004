"""The web page in headless Chromium: paste a key and generate at once, pick a model, class and controls
(a diffusion model's too), like, more like these, download; and a phone-width window.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright's Python package, which drives the
installed browser (``playwright install`` is not used: it downloads browsers). The screenshot is written
into the test's temporary directory and its path printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (.ci/run does)", allow_module_level=True)

import uvicorn  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import genforge  # noqa: E402
from genforge.generation import make_grid, sample  # noqa: E402
from genforge.serve.app import Served, ServeConfig, create_app  # noqa: E402
from genforge.serve.connections import uvicorn_config  # noqa: E402
from genforge.serve.keys import KeyStore  # noqa: E402
from genforge.training import train  # noqa: E402

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory, digits_npz):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": "cdcgan", "batch_size": 16, "max_steps": 2, "checkpoint_every": 2,
                     "sample_every": 0, "tensorboard": False, "grid_n": 4, "base_channels": 4}, "test")
    path = tmp_path_factory.mktemp("cdcgan") / "run"
    train(cfg, path, quiet=True)
    return path


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, digits_npz):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": "ddpm", "batch_size": 16, "max_steps": 2, "checkpoint_every": 2,
                     "sample_every": 0, "tensorboard": False, "grid_n": 4, "base_channels": 4}, "test")
    path = tmp_path_factory.mktemp("ddpm") / "run"
    train(cfg, path, quiet=True)
    return path


@contextlib.contextmanager
def browser_page(tmp_path, width: int = 1100, height: int = 800):
    """A headless Chromium page; yields (page, problems: console errors and page errors seen)."""
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / f"profile-{width}"), executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS,
            accept_downloads=True, viewport={"width": width, "height": height})
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page, problems
        finally:
            browser.close()


@contextlib.contextmanager
def serving(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def shown_images(page) -> np.ndarray:
    sources = [img.get_attribute("src") for img in page.locator("#grid img").all()]
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))) for s in sources])


def test_page_generates_likes_and_downloads(cond_run, tmp_path):
    model = genforge.load(cond_run)
    store = KeyStore(tmp_path / "keys.json")
    key, _ = store.create("generator", "browser")
    app = create_app({"digits": Served("digits", model, lambda: genforge.load(cond_run))}, ServeConfig(rate=0), store)
    with serving(app) as url, browser_page(tmp_path) as (page, problems):
        page.goto(url)
        expect(page.locator("#empty")).to_contain_text("Paste an API key")  # the empty state says what to do
        page.fill("#key", key)  # an input event; the models load without leaving the field
        # locators and expect(), not wait_for_function: the page's Content-Security-Policy forbids eval
        expect(page.locator("#model option")).to_have_count(1)
        expect(page.locator("#empty")).to_be_hidden()
        assert not page.is_hidden("#class-row")  # a conditional model: the class picker shows
        page.select_option("#class", "7")
        page.fill("#seed", "7")
        page.fill("#n", "4")
        slider = page.locator("#control-truncation input")
        expect(page.locator("#control-truncation output")).to_have_text("1.000")  # the label is the knob's value
        slider.fill("0.7")
        expect(page.locator("#control-truncation output")).to_have_text("0.700")
        page.click("#generate")
        expect(page.locator("#grid img")).to_have_count(4)
        expect(page.locator("#caption")).to_have_text("4 images from digits, seed 7")
        np.testing.assert_array_equal(shown_images(page), sample(model, 4, seed=7, classes=7, truncation=0.7).x)

        page.click("#grid img >> nth=0")
        page.click("#grid img >> nth=2")
        assert page.inner_text("#liked-count") == "2"
        expect(page.locator("#grid img.liked")).to_have_count(2)
        page.click("#more")
        # the exact text: a new random seed may begin with 7 ("seed 797817870")
        expect(page.locator("#caption")).to_have_text(re.compile(r"^4 images like the 2 you liked, from digits, "
                                                                 r"seed \d+$"))
        expect(page.locator("#grid img")).to_have_count(4)
        alts = [img.get_attribute("alt") for img in page.locator("#grid img").all()]
        assert all(alt.endswith("class 7") for alt in alts)  # more like the liked sevens
        more = shown_images(page)

        with page.expect_download() as download:
            page.click("#download")
        saved = tmp_path / "download.png"
        download.value.save_as(saved)
        np.testing.assert_array_equal(np.asarray(Image.open(saved)), make_grid(more, model.num_classes))

        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the genforge page: {shot}")
        assert shot.stat().st_size > 1000
        assert page.inner_text("#error") == ""
    assert problems == []


def test_paste_key_and_generate_at_once_with_diffusion_controls(cond_run, ddpm_run, tmp_path):
    """The first-click path of issue 19: paste the key and click Generate straight away."""
    models = {"digits": genforge.load(cond_run), "noise": genforge.load(ddpm_run)}
    store = KeyStore(tmp_path / "keys.json")
    key, _ = store.create("generator", "browser")
    app = create_app({n: Served(n, m, lambda m=m: m) for n, m in models.items()}, ServeConfig(rate=0), store)
    with serving(app) as url, browser_page(tmp_path) as (page, problems):
        page.goto(url)
        page.fill("#seed", "3")
        page.fill("#n", "2")
        page.fill("#key", key)
        page.click("#generate")  # at once: the model list has not loaded yet (the click is the key's "change")
        expect(page.locator("#grid img")).to_have_count(2)
        expect(page.locator("#caption")).to_have_text("2 images from digits, seed 3")
        assert page.inner_text("#error") == ""
        np.testing.assert_array_equal(shown_images(page), sample(models["digits"], 2, seed=3).x)

        page.select_option("#model", "noise")  # a diffusion model: its steps and sampler, from /v1/models
        expect(page.locator("#control-steps input")).to_be_visible()
        expect(page.locator("#control-sampler select option")).to_have_count(3)  # ddim, dpm++2m, dpm++2m-sde
        expect(page.locator("#control-truncation")).to_have_count(0)
        expect(page.locator("#control-guidance")).to_have_count(0)  # unconditional: no guidance
        assert page.is_hidden("#class-row")
        page.fill("#control-steps input", "3")
        page.select_option("#control-sampler select", "dpm++2m")
        page.click("#generate")
        expect(page.locator("#caption")).to_have_text("2 images from noise, seed 3")
        np.testing.assert_array_equal(shown_images(page),
                                      sample(models["noise"], 2, seed=3, steps=3, sampler="dpm++2m").x)
        page.select_option("#control-sampler select", "dpm++2m-sde")  # stochastic: the same pixels as the API's
        page.fill("#seed", "4")  # a new caption to wait for
        page.click("#generate")
        expect(page.locator("#caption")).to_have_text("2 images from noise, seed 4")
        np.testing.assert_array_equal(shown_images(page),
                                      sample(models["noise"], 2, seed=4, steps=3, sampler="dpm++2m-sde").x)
    assert problems == []


def test_page_at_phone_width(cond_run, tmp_path):
    model = genforge.load(cond_run)
    store = KeyStore(tmp_path / "keys.json")
    key, _ = store.create("generator", "browser")
    app = create_app({"digits": Served("digits", model, lambda: model)}, ServeConfig(rate=0), store)
    with serving(app) as url, browser_page(tmp_path, width=420, height=900) as (page, problems):
        page.goto(url)
        page.fill("#key", key)
        page.fill("#n", "8")
        page.click("#generate")
        expect(page.locator("#grid img")).to_have_count(8)
        boxes = [img.bounding_box() for img in page.locator("#grid img").all()]
        columns = {round(b["x"]) for b in boxes}
        rows = {round(b["y"]) for b in boxes}
        assert len(columns) >= 2 and len(rows) >= 2  # the images wrap in rows, not one squeezed column
        assert all(b["x"] + b["width"] <= 420 for b in boxes)  # nothing off the right edge
        form = page.locator("#controls").bounding_box()
        assert form["x"] >= 0 and form["x"] + form["width"] <= 420
        page.screenshot(path=str(tmp_path / "serve-page-420.png"), full_page=True)
    assert problems == []
