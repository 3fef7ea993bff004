"""The web page with a text model in headless Chromium: the prompt box and the controls from /v1/models, and
the streamed text, equal to genforge sample's for the seed (the same setup as tests/test_serve_browser.py)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (.ci/run does)", allow_module_level=True)

import uvicorn  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import genforge  # noqa: E402
from genforge.config import from_dict  # noqa: E402
from genforge.serve.app import Served, ServeConfig, create_app  # noqa: E402
from genforge.serve.connections import uvicorn_config  # noqa: E402
from genforge.serve.keys import KeyStore  # noqa: E402
from genforge.training import train  # noqa: E402

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORDS = "the king queen lord lady love death night day sword crown heart fair foul sweet".split()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(2)
    for i in range(10):
        (root / f"d{i}.txt").write_text("\n\n".join(f"ROMEO:\n{' '.join(rng.choice(WORDS) for _ in range(6))}"
                                                     for _ in range(20)) + "\n")
    cfg = from_dict({"data": f"text:{root}", "model": "gpt", "text_context": 32, "text_n_layer": 1,
                     "text_n_head": 2, "text_n_embd": 16, "batch_size": 8, "max_steps": 2, "checkpoint_every": 2,
                     "sample_every": 0, "grid_n": 1, "tensorboard": False, "num_threads": 1}, "test")
    path = tmp_path_factory.mktemp("gpt") / "run"
    train(cfg, path, quiet=True)
    return path


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


def test_the_page_streams_text_from_a_prompt(text_run, tmp_path):
    model = genforge.load(text_run)
    store = KeyStore(tmp_path / "keys.json")
    key, _ = store.create("generator", "browser")
    app = create_app({"bard": Served("bard", model, lambda: model)}, ServeConfig(rate=0), store)
    expected = model.sample(2, seed=4, prompt="ROMEO:\n", max_new_tokens=20).texts
    problems = []
    with serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            page.fill("#key", key)
            expect(page.locator("#model option")).to_have_count(1)
            expect(page.locator("#model-info")).to_contain_text("text, context 32 tokens (char)")
            page.fill("#control-prompt textarea", "ROMEO:\n")
            page.fill("#control-max_new_tokens input", "20")
            expect(page.locator("#control-stop input")).to_be_visible()
            page.fill("#seed", "4")
            page.fill("#n", "2")
            page.click("#generate")
            expect(page.locator("#caption")).to_have_text("2 texts from bard, seed 4")
            shown = [pre.inner_text() for pre in page.locator("#texts pre").all()]
            assert page.inner_text("#error") == ""
        finally:
            browser.close()
    assert shown == ["ROMEO:\n" + t for t in expected]
    assert problems == []
