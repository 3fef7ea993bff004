"""The web page in headless Chromium: pick a model and class, generate, like, more like these, download.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright's Python package, which drives the
installed browser (``playwright install`` is not used: it downloads browsers). The screenshot is written
into the test's temporary directory and its path printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
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


@contextlib.contextmanager
def serving(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
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
    problems = []
    with serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS,
            accept_downloads=True, viewport={"width": 1100, "height": 800})
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            page.fill("#key", key)
            page.dispatch_event("#key", "change")
            # locators and expect(), not wait_for_function: the page's Content-Security-Policy forbids eval
            expect(page.locator("#model option")).to_have_count(1)
            assert not page.is_hidden("#class-row")  # a conditional model: the class picker shows
            page.select_option("#class", "7")
            page.fill("#seed", "7")
            page.fill("#n", "4")
            page.fill("#noise", "0.7")  # truncation slider
            page.click("#generate")
            expect(page.locator("#grid img")).to_have_count(4)
            expect(page.locator("#caption")).to_contain_text("seed 7")
            np.testing.assert_array_equal(shown_images(page), sample(model, 4, seed=7, classes=7, truncation=0.7).x)

            page.click("#grid img >> nth=0")
            page.click("#grid img >> nth=2")
            assert page.inner_text("#liked-count") == "2"
            expect(page.locator("#grid img.liked")).to_have_count(2)
            page.click("#more")
            expect(page.locator("#caption")).not_to_contain_text("seed 7")
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
        finally:
            browser.close()
    assert problems == []
