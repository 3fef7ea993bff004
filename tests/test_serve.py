"""The HTTP service: same pixels as genforge sample, keys and roles, limits, micro-batching, audit, export."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import genforge  # noqa: E402
from genforge.cli import main  # noqa: E402
from genforge.errors import GenforgeError, ModelFileError  # noqa: E402
from genforge.generation import sample  # noqa: E402
from genforge.serve.app import Served, ServeConfig, create_app  # noqa: E402
from genforge.serve.audit import AuditLog  # noqa: E402
from genforge.serve.audit import verify as verify_audit  # noqa: E402
from genforge.serve.batching import Batcher, QueueFull  # noqa: E402
from genforge.serve.cli import is_loopback, parse_model_specs  # noqa: E402
from genforge.serve.connections import uvicorn_config  # noqa: E402
from genforge.serve.keys import KeyStore  # noqa: E402
from genforge.serve.limits import RateLimiter  # noqa: E402
from genforge.training import train  # noqa: E402

AUDIT_KEY = "a1" * 32


def _run(tmp_path_factory, digits_npz, model, **extra):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": model, "batch_size": 16, "max_steps": 2, "checkpoint_every": 2,
                     "sample_every": 0, "tensorboard": False, "grid_n": 4, "base_channels": 4, **extra}, "test")
    path = tmp_path_factory.mktemp(model) / "run"
    train(cfg, path, quiet=True)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_npz):
    return {"dc": _run(tmp_path_factory, digits_npz, "dcgan"),
            "cdc": _run(tmp_path_factory, digits_npz, "cdcgan"),
            "vae": _run(tmp_path_factory, digits_npz, "vae-conv", z_dim=8),
            "ddpm": _run(tmp_path_factory, digits_npz, "ddpm")}


@pytest.fixture(scope="module")
def loaded(runs):
    return {name: genforge.load(path) for name, path in runs.items()}


@pytest.fixture
def keys(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    made = {role: store.create(role, f"test {role}")[0] for role in ("viewer", "generator", "admin")}
    made["other"] = store.create("generator", "another client")[0]
    return store, made


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_app(loaded, runs, keys, tmp_path):
    """make_app(**ServeConfig fields) -> (app, keys by role, audit log path); auth on, rate limit off."""
    store, made = keys
    logs = []

    def make(models=("dc", "cdc", "vae", "ddpm"), **config):
        served = {n: Served(n, loaded[n], lambda n=n: genforge.load(runs[n])) for n in models}
        logs.append(AuditLog(tmp_path / f"audit-{len(logs)}.jsonl", bytes.fromhex(AUDIT_KEY)))
        app = create_app(served, ServeConfig(**{"rate": 0, **config}), store, logs[-1])
        return app, made, logs[-1].path

    yield make
    for log in logs:
        log.close()


@pytest.fixture
def client(make_app):
    app, made, _ = make_app()
    with TestClient(app) as c:
        yield c, made


def pngs(response) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in response.json()["images"]])


@contextlib.contextmanager
def serving(app):
    """A real uvicorn server on a free loopback port, in a thread: yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app))  # as genforge serve runs it: with its connection guard
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


# --------------------------------------------------------------------------- same pixels as genforge sample

@pytest.mark.parametrize("name, request_fields, sample_kwargs", [
    ("dc", {"truncation": 0.7}, {"truncation": 0.7}),
    ("vae", {"temperature": 0.5, "size": 32, "resample": "bilinear"},
     {"temperature": 0.5, "size": 32, "resample": "bilinear"}),
    ("cdc", {"class": [3, "7"]}, {"classes": [3, "7"]}),
    ("ddpm", {"steps": 3, "sampler": "dpm++2m"}, {"steps": 3, "sampler": "dpm++2m"}),
])
def test_generate_gives_the_pixels_of_sample(client, loaded, name, request_fields, sample_kwargs):
    c, made = client
    r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": name, "n": 5, "seed": 11,
                                                                        **request_fields})
    assert r.status_code == 200, r.text
    expected = sample(loaded[name], 5, seed=11, **sample_kwargs)
    np.testing.assert_array_equal(pngs(r), expected.x)
    body = r.json()
    assert body["seed"] == 11
    np.testing.assert_array_equal(np.asarray(body["latents"], dtype=np.float32), expected.z)
    assert body["classes"] == (None if expected.y is None else expected.y.tolist())


def test_png_grid_is_the_cli_grid(client, runs, tmp_path):
    c, made = client
    assert main(["sample", str(runs["cdc"]), "--n", "6", "--seed", "4", "--out", str(tmp_path / "cli.png")]) == 0
    r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "cdc", "n": 6, "seed": 4,
                                                                        "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-genforge-seed"] == "4"
    served = Image.open(io.BytesIO(r.content))
    np.testing.assert_array_equal(np.asarray(served), np.asarray(Image.open(tmp_path / "cli.png")))
    assert json.loads(served.text["genforge"])["seed"] == 4  # provenance metadata, as the CLI writes it


def test_no_seed_gets_a_random_one_that_reproduces(client, loaded):
    c, made = client
    first = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc", "n": 3})
    second = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc", "n": 3})
    seed = first.json()["seed"]
    assert isinstance(seed, int) and seed != second.json()["seed"]
    np.testing.assert_array_equal(pngs(first), sample(loaded["dc"], 3, seed=seed).x)


def test_npz_format(client, loaded):
    c, made = client
    r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "cdc", "n": 4, "seed": 2,
                                                                        "format": "npz"})
    assert r.status_code == 200
    with np.load(io.BytesIO(r.content), allow_pickle=False) as f:
        expected = sample(loaded["cdc"], 4, seed=2)
        np.testing.assert_array_equal(f["x"], expected.x)
        np.testing.assert_array_equal(f["y"], expected.y)
        np.testing.assert_array_equal(f["z"], expected.z)
        assert int(f["seed"]) == 2


def test_feedback_gives_the_pixels_of_a_cli_feedback_round(client, runs, tmp_path):
    c, made = client
    grid = tmp_path / "grid.png"
    assert main(["sample", str(runs["cdc"]), "--n", "6", "--seed", "3", "--out", str(grid)]) == 0
    assert main(["sample", str(runs["cdc"]), "--from", str(grid), "--like", "1,4", "--n", "5", "--seed", "9",
                 "--radius", "0.5", "--out", str(tmp_path / "more.npz")]) == 0
    shown = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "cdc", "n": 6, "seed": 3}).json()
    liked = [{"z": shown["latents"][i], "class": shown["classes"][i]} for i in (1, 4)]
    r = c.post("/v1/feedback", headers=auth(made["generator"]), json={"model": "cdc", "liked": liked, "n": 5,
                                                                        "seed": 9, "radius": 0.5})
    assert r.status_code == 200, r.text
    with np.load(tmp_path / "more.npz") as cli:
        np.testing.assert_array_equal(pngs(r), cli["x"])
        assert r.json()["classes"] == cli["y"].tolist()


def test_models_lists_what_is_served(client, loaded):
    c, made = client
    r = c.get("/v1/models", headers=auth(made["viewer"]))
    assert r.status_code == 200
    info = {m["name"]: m for m in r.json()["models"]}
    assert set(info) == {"dc", "cdc", "vae", "ddpm"}
    assert info["cdc"]["num_classes"] == 10 and len(info["cdc"]["classes"]) == 10
    assert info["dc"]["weights_sha256"] == loaded["dc"].meta["weights_sha256"]
    assert info["vae"]["family"] == "vae" and info["vae"]["image_shape"] == [1, 28, 28]
    # each model's controls as its family and modality declare them (genforge.controls), server bounds applied
    for name in info:
        assert info[name]["controls"] == [c.name for c in loaded[name].controls]  # names, as before
        assert [c["name"] for c in info[name]["control_specs"]] == info[name]["controls"]
    dc = {c["name"]: c for c in info["dc"]["control_specs"]}
    assert dc["truncation"]["min"] == 0.01 and dc["truncation"]["max"] == 1 and dc["truncation"]["type"] == "float"
    ddpm = {c["name"]: c for c in info["ddpm"]["control_specs"]}
    assert ddpm["sampler"]["choices"] == ["ddim", "dpm++2m", "dpm++2m-sde"] and ddpm["steps"]["max"] == 1000
    assert "guidance" not in ddpm  # an unconditional diffusion model takes no guidance
    assert "temperature" in info["vae"]["controls"]
    assert c.get("/healthz").json()["status"] == "ok"
    schema = c.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/feedback", "/v1/models"} <= set(schema["paths"])


def test_page_and_its_files_are_served(client):
    c, _ = client
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text
    assert c.get("/static/app.js").status_code == 200
    assert c.get("/static/../keys.json").status_code == 404


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("body, status, words", [
    ('{"model": "dc", "n": ', 400, "not valid JSON"),
    ('{"model": "dc", "truncation": NaN}', 422, "finite number"),
    ('{"model": "vae", "temperature": Infinity}', 422, "finite number"),
    ({"model": "dc", "n": "4"}, 422, "n: Input should be a valid integer"),
    ({"model": "dc", "seed": 1.5}, 422, "seed"),
    ({"model": "dc", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"model": "dc", "n": 10**9}, 413, "over this server's limit of 64"),
    ({"model": "vae", "n": 64, "size": 2048}, 413, "limit"),
    ({"model": "dc", "seed": -1}, 422, "seed: Input should be greater than or equal to 0"),
    ({"model": "nope"}, 404, "no model 'nope'"),
    ({"model": "cdc", "class": 10}, 404, "out of range: this model has classes 0 to 9"),
    ({"model": "cdc", "class": "seven"}, 404, "class 'seven' is not one of this model's classes"),
    ({"model": "cdc", "class": "²"}, 404, "class '²' is not one of this model's classes"),
    ({"model": "cdc", "class": "①"}, 404, "class '①' is not one of this model's classes"),
    ({"model": "cdc", "class": ["1", "٣"]}, 404, "class '٣' is not one"),
    ({"model": "dc", "class": 1}, 422, "unconditional"),
    ({"model": "dc", "temperature": 0.5}, 422, "temperature is a VAE control"),
    ({"model": "dc", "truncation": 0.001}, 422, "truncation"),
    ({"model": "dc", "format": "gif"}, 422, "format"),
    ({"model": "ddpm", "sampler": "euler"}, 422, "sampler: Input should be 'ddim', 'dpm++2m' or 'dpm++2m-sde'"),
    ({"model": "dc", "sampler": "ddim"}, 422, "is a diffusion control"),
    ([1, 2], 422, "dictionary"),
])
def test_bad_generate_requests_get_a_clear_json_error(client, body, status, words):
    c, made = client
    kwargs = {"content": body, "headers": {**auth(made["generator"]), "Content-Type": "application/json"}} \
        if isinstance(body, str) else {"json": body, "headers": auth(made["generator"])}
    r = c.post("/v1/generate", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["status"] == status and words in error["message"]
    assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("liked, status, words", [
    ([{"z": [0.0] * 100}], 422, "class-conditional"),
    ([{"z": [0.0] * 99, "class": 1}], 422, "100 values"),
    ([{"z": [0.0] * 100, "class": 10}], 404, "no class 10"),
    ([{"z": [1e9] * 100, "class": 1}], 422, "less than or equal"),
    ([], 422, "at least 1"),
])
def test_bad_feedback_requests(client, liked, status, words):
    c, made = client
    r = c.post("/v1/feedback", headers=auth(made["generator"]), json={"model": "cdc", "liked": liked, "n": 2})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_body_over_the_limit_and_non_json_content(make_app):
    app, made, _ = make_app(max_body=2000)
    with TestClient(app) as c:
        big = {"model": "dc", "pad": "x" * 5000}
        r = c.post("/v1/generate", headers=auth(made["generator"]), json=big)
        assert r.status_code == 413 and "2000 bytes" in r.json()["error"]["message"]
        r = c.post("/v1/generate", headers={**auth(made["generator"]), "Content-Type": "text/plain"},
                   content='{"model": "dc"}')
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        assert c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc"}).status_code == 200


# --------------------------------------------------------------------------- keys and roles

def test_missing_unknown_and_revoked_keys_get_401(client, keys):
    c, made = client
    store, _ = keys
    body = {"model": "dc"}
    r = c.post("/v1/generate", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "API key" in r.json()["error"]["message"]
    assert c.post("/v1/generate", json=body, headers=auth("gfk_" + "0" * 64)).status_code == 401
    assert c.post("/v1/generate", json=body, headers={"Authorization": made["generator"]}).status_code == 401
    # revoked while the server runs: refused from the next request on
    assert c.post("/v1/generate", json=body, headers=auth(made["other"])).status_code == 200
    other_id = next(r["id"] for r in store.records() if r["name"] == "another client")
    assert main(["keys", "revoke", other_id, "--keys-file", str(store.path)]) == 0
    assert c.post("/v1/generate", json=body, headers=auth(made["other"])).status_code == 401
    # no key, no body parsing: a malformed body without a key is a 401, not a 400
    assert c.post("/v1/generate", content="{", headers={"Content-Type": "application/json"}).status_code == 401


def test_roles(client):
    c, made = client
    r = c.post("/v1/generate", headers=auth(made["viewer"]), json={"model": "dc"})
    assert r.status_code == 403 and "needs generator" in r.json()["error"]["message"]
    assert c.get("/v1/models", headers=auth(made["viewer"])).status_code == 200
    assert c.get("/metrics", headers=auth(made["viewer"])).status_code == 200
    assert c.get("/metrics").status_code == 401
    assert c.get("/v1/admin/keys", headers=auth(made["generator"])).status_code == 403
    assert c.post("/v1/admin/reload", headers=auth(made["generator"])).status_code == 403
    # admin: create a key (shown once), use it, list keys (no hashes), revoke it
    r = c.post("/v1/admin/keys", headers=auth(made["admin"]), json={"role": "viewer", "name": "dashboard"})
    assert r.status_code == 201
    new = r.json()
    assert new["key"].startswith("gfk_") and c.get("/v1/models", headers=auth(new["key"])).status_code == 200
    listed = c.get("/v1/admin/keys", headers=auth(made["admin"])).json()["keys"]
    assert new["id"] in {k["id"] for k in listed} and all("sha256" not in k for k in listed)
    assert c.delete(f"/v1/admin/keys/{new['id']}", headers=auth(made["admin"])).status_code == 200
    assert c.get("/v1/models", headers=auth(new["key"])).status_code == 401
    assert c.delete("/v1/admin/keys/knope", headers=auth(made["admin"])).status_code == 404
    assert c.post("/v1/admin/reload", headers=auth(made["admin"])).status_code == 200


def test_key_file_keeps_only_hashes(tmp_path, capsys):
    path = tmp_path / "k" / "keys.json"
    assert main(["keys", "create", "--role", "generator", "--name", "ci", "--keys-file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("gfk_") and len(key) == 4 + 64  # 256 bits in hex
    text = path.read_text()
    assert key not in text and key[4:] not in text
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    store = KeyStore(path)
    principal = store.authenticate(key)
    assert principal.role == "generator" and principal.name == "ci"
    assert main(["keys", "list", "--keys-file", str(path)]) == 0
    assert principal.key_id in capsys.readouterr().out
    assert main(["keys", "revoke", "kmissing", "--keys-file", str(path)]) == 2
    assert main(["keys", "create", "--role", "root", "--keys-file", str(path)]) == 2  # the CLI knows the roles
    assert "'root' is not one of 'viewer', 'generator', 'admin'" in capsys.readouterr().err
    with pytest.raises(GenforgeError, match="role must be one of"):
        store.create("root")


# --------------------------------------------------------------------------- limits

def test_a_flood_from_one_key_is_limited_and_others_are_not(make_app):
    app, made, _ = make_app(rate=1, burst=3)
    with TestClient(app) as c:
        codes = [c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc"}).status_code
                 for _ in range(8)]
        assert codes[:3] == [200, 200, 200] and codes.count(429) >= 4
        r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["error"]["message"]
        t0 = time.perf_counter()
        assert c.post("/v1/generate", headers=auth(made["other"]), json={"model": "dc"}).status_code == 200
        assert time.perf_counter() - t0 < 2.0  # the other key is served at once, not after the flood
        assert 'genforge_rejections_total{reason="rate_limited"}' in c.get(
            "/metrics", headers=auth(made["viewer"])).text


def test_token_bucket_refills():
    limiter = RateLimiter(rate=2, burst=2)
    assert limiter.take("a", now=0) == 0 and limiter.take("a", now=0) == 0
    assert limiter.take("a", now=0) == pytest.approx(0.5)
    assert limiter.take("a", now=0.5) == 0  # one token back after 1/rate seconds
    assert limiter.take("b", now=0.5) == 0  # buckets are per key


def test_full_queue_and_timeout_get_503(make_app):
    app, made, _ = make_app(max_queue=0)
    with TestClient(app) as c:
        r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "requests waiting" in r.json()["error"]["message"]
    app, made, _ = make_app(request_timeout=0.2)
    with TestClient(app) as c:
        batcher = app.state.service.models["dc"].batcher
        slow = batcher.run_batch
        batcher.run_batch = lambda *a, **k: (time.sleep(1.0), slow(*a, **k))[1]
        r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc"})
        assert r.status_code == 503 and "timeout" in r.json()["error"]["message"]
        batcher.run_batch = slow
        time.sleep(1.0)  # the slow pass finishes
        assert c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc"}).status_code == 200


def test_slow_client_gets_408_and_others_are_served(make_app):
    app, made, _ = make_app(body_timeout=0.5)
    with serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + made["generator"].encode() + b"\r\nContent-Length: 200\r\n\r\n"
                         b'{"model": ')
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/generate", headers=auth(made["other"]), json={"model": "dc"}, timeout=10)
            assert r.status_code == 200 and time.perf_counter() - t0 < 2.0
            reply = b""
            while b'"status":408' not in reply and (chunk := slow.recv(65536)):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b'"status":408' in reply
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_client_that_goes_away_is_dropped_from_the_queue(make_app):
    app, made, _ = make_app(max_wait=0)
    release = threading.Event()
    with serving(app) as url:
        batcher = app.state.service.models["dc"].batcher
        fast = batcher.run_batch
        batcher.run_batch = lambda *a, **k: (release.wait(10), fast(*a, **k))[1]
        port = int(url.rsplit(":", 1)[1])
        request = (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
                   b"Bearer " + made["generator"].encode() + b"\r\nContent-Length: %d\r\n\r\n")
        body = b'{"model": "dc", "n": %d, "seed": 1}'
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy.sendall(request % len(body % 1) + body % 1)   # occupies the worker
        gone = socket.create_connection(("127.0.0.1", port), timeout=10)
        gone.sendall(request % len(body % 3) + body % 3)   # waits in the queue, then hangs up
        deadline = time.monotonic() + 10
        while batcher.depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth() == 1
        gone.close()
        deadline = time.monotonic() + 10
        while batcher.jobs and not batcher.jobs[0].future.cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        batcher.run_batch = fast
        release.set()
        assert busy.recv(65536).startswith(b"HTTP/1.1 200")
        busy.close()
        metrics = httpx.get(f"{url}/metrics", headers=auth(made["viewer"]), timeout=10).text
    assert 'genforge_images_generated_total{model="dc"} 1.0' in metrics  # the 3 images of the gone client: never made
    assert 'genforge_rejections_total{reason="client_gone"} 1.0' in metrics


# --------------------------------------------------------------------------- micro-batching

def test_concurrent_requests_share_a_forward_pass_with_the_same_pixels(make_app, loaded):
    app, made, _ = make_app(max_batch=64)
    jobs = [{"model": "cdc", "n": n, "seed": seed, "class": cls}
            for n, seed, cls in [(1, 0, 3), (2, 1, 5), (3, 2, 0), (1, 3, 9), (2, 4, 1), (4, 5, 2)]]
    busy, release = threading.Event(), threading.Event()
    with serving(app) as url:
        batcher = app.state.service.models["cdc"].batcher
        decode = batcher.run_batch

        def held(*args, **kwargs):  # the first pass waits, so that the other requests queue behind it
            busy.set()
            release.wait(10)
            return decode(*args, **kwargs)

        batcher.run_batch = held
        with httpx.Client(headers=auth(made["generator"]), timeout=20) as http, ThreadPoolExecutor(len(jobs)) as pool:
            first = pool.submit(http.post, f"{url}/v1/generate", json=jobs[0])
            assert busy.wait(10)
            rest = [pool.submit(http.post, f"{url}/v1/generate", json=j) for j in jobs[1:]]
            deadline = time.monotonic() + 10
            while batcher.depth() < len(rest) and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            responses = [first.result()] + [f.result() for f in rest]
        metrics = httpx.get(f"{url}/metrics", headers=auth(made["viewer"]), timeout=10).text
    for job, r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(pngs(r), sample(loaded["cdc"], job["n"], seed=job["seed"],
                                                      classes=job["class"]).x)
    # two forward passes: the first request alone, then the five that queued behind it, merged
    assert 'genforge_batch_size_requests_count{model="cdc"} 2.0' in metrics
    assert 'genforge_batch_size_requests_bucket{le="4.0",model="cdc"} 1.0' in metrics
    assert 'genforge_batch_size_images_sum{model="cdc"} 13.0' in metrics


def test_batcher_merges_splits_and_skips_withdrawn_requests():
    calls = []

    def run(model, z, y, **controls):
        calls.append((len(z), controls))
        return z.numpy() * 2

    async def scenario():
        b = Batcher(run, max_batch=8, max_wait=0.05, max_queue=3)
        b.start()
        z = [torch.full((n, 2), float(i)) for i, n in enumerate((1, 2, 3))]
        results = await asyncio.gather(*(b.submit("m", zi, None) for zi in z))
        for zi, x in zip(z, results):
            np.testing.assert_array_equal(x, zi.numpy() * 2)
        assert calls == [(6, {})]
        # different controls are not merged; a withdrawn request is never run
        calls.clear()
        t1 = asyncio.ensure_future(b.submit("m", z[0], None, (("steps", 5),)))
        t2 = asyncio.ensure_future(b.submit("m", z[1], None))
        t3 = asyncio.ensure_future(b.submit("m", z[2], None))
        await asyncio.sleep(0)
        t3.cancel()
        with pytest.raises(QueueFull):
            await asyncio.gather(*(b.submit("m", z[0], None) for _ in range(2)))
        await asyncio.gather(t1, t2)
        assert sorted(calls, key=str) == sorted([(1, {"steps": 5}), (2, {})], key=str)
        await b.stop()
        # under concurrent load (the last pass merged requests) the worker waits up to max_wait for company
        calls.clear()
        b = Batcher(run, max_batch=8, max_wait=0.3, max_queue=8)
        b.start()
        b.last_requests = 2
        first = asyncio.ensure_future(b.submit("m", z[0], None))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, b.submit("m", z[1], None))
        assert calls == [(3, {})]
        await b.stop()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- metrics and audit

def test_metrics_are_prometheus_text(client):
    c, made = client
    c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc", "n": 2})
    c.post("/v1/generate", json={"model": "dc"})
    r = c.get("/metrics", headers=auth(made["viewer"]))
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in ('genforge_requests_total{endpoint="/v1/generate",status="200"} 1.0',
                 'genforge_requests_total{endpoint="/v1/generate",status="401"} 1.0',
                 'genforge_request_latency_seconds_bucket{endpoint="/v1/generate",le="+Inf"} 2.0',
                 'genforge_batch_size_images_sum{model="dc"} 2.0',
                 'genforge_queue_depth{model="dc"} 0.0',
                 'genforge_rejections_total{reason="unauthorized"} 1.0'):
        assert line in text, line


def test_audit_log_records_requests_and_verify_finds_tampering(make_app, monkeypatch, capsys):
    app, made, log = make_app()
    with TestClient(app) as c:
        r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "dc", "n": 2, "seed": 5})
        c.post("/v1/generate", json={"model": "dc"})
        c.get("/v1/models", headers=auth(made["viewer"]))
        c.post("/v1/generate", headers=auth(made["viewer"]), json={"model": "dc"})
    app.state.service.audit.close()
    text = log.read_text()
    assert all(k not in text for k in made.values())  # key ids only, never keys
    lines = [json.loads(x) for x in text.splitlines()]
    # one line per request with a valid key; the one without a key is counted in its client's summary line
    assert [x.get("status") for x in lines] == [200, 200, 403, None]
    assert lines[3]["event"] == "summary" and lines[3]["outcomes"] == {"401": 1} and lines[3]["count"] == 1
    assert lines[0]["params"]["seed"] == 5 and lines[0]["result"]["pixels_sha256"] == r.json()["pixels_sha256"]
    assert lines[0]["key_id"].startswith("k") and lines[2]["key_id"].startswith("k")
    assert lines[0]["endpoint"] == "/v1/generate" and lines[0]["latency_ms"] > 0

    monkeypatch.setenv("GENFORGE_AUDIT_KEY", AUDIT_KEY)
    assert main(["audit", "verify", str(log)]) == 0
    capsys.readouterr()
    raw = log.read_bytes().splitlines(keepends=True)

    def check(tampered: list[bytes], expect: str):
        log.write_bytes(b"".join(tampered))
        assert main(["audit", "verify", str(log)]) == 1
        assert expect in capsys.readouterr().out

    check(raw[:1] + [raw[1].replace(b'"status":200', b'"status":500')] + raw[2:], "line 2: HMAC")  # edited
    check(raw[:1] + raw[2:], "line 2: 'prev'")                                                    # deleted
    check([raw[0], raw[2], raw[1], raw[3]], "line 2")                                            # reordered
    # a full rewrite with a consistent chain, signed with another key: every line fails its HMAC
    forged = AuditLog(log.with_name("forged.jsonl"), b"x" * 32)
    for line in lines:
        forged.write({k: v for k, v in line.items() if k not in ("time", "seq", "prev", "hmac")})
    forged.close()
    check(log.with_name("forged.jsonl").read_bytes().splitlines(keepends=True), "line 1: HMAC")
    # a server restarted on the same log continues the chain
    log.write_bytes(b"".join(raw))
    again = AuditLog(log, bytes.fromhex(AUDIT_KEY))
    again.write({"endpoint": "/v1/models", "status": 200})
    again.close()
    problems, count, _ = verify_audit(log, bytes.fromhex(AUDIT_KEY))
    assert problems == [] and count == 5


# --------------------------------------------------------------------------- export and the onnx backend

def test_onnx_export_matches_eager_pytorch_and_serves(runs, loaded, keys, tmp_path):
    pytest.importorskip("onnxruntime", reason="the serve extra (onnxruntime) is not installed")
    from genforge.export import load_onnx

    out = tmp_path / "cdc-onnx"
    assert main(["export", str(runs["cdc"]), "--format", "onnx", "--out", str(out)]) == 0
    onnx_model = load_onnx(out, threads=1)
    torch_model = loaded["cdc"]
    z = torch.randn(32, torch_model.z_dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 10
    with torch.inference_mode():
        eager = torch_model.method.generate(torch_model.nets, z, y)
    np.testing.assert_allclose(onnx_model.method.generate(onnx_model.nets, z, y).numpy(), eager.numpy(), atol=1e-4)
    a, b = sample(torch_model, 64, seed=1).x, sample(onnx_model, 64, seed=1).x
    assert (a == b).mean() > 0.999 and np.abs(a.astype(int) - b).max() <= 1  # rounding at .5 may differ

    store, made = keys
    served = {"cdc": Served("cdc", onnx_model, lambda: load_onnx(out, threads=1), backend="onnx")}
    with TestClient(create_app(served, ServeConfig(rate=0), store, None)) as c:
        r = c.post("/v1/generate", headers=auth(made["generator"]), json={"model": "cdc", "n": 4, "seed": 3})
        np.testing.assert_array_equal(pngs(r), sample(onnx_model, 4, seed=3).x)
        assert c.get("/v1/models", headers=auth(made["viewer"])).json()["models"][0]["backend"] == "onnx"

    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_onnx(out)


def test_insecure_mode_and_reload(loaded):
    served = {"m": Served("m", loaded["dc"], lambda: loaded["vae"])}  # "retrained" into another model
    with TestClient(create_app(served, ServeConfig(auth=False, rate=0))) as c:
        assert c.get("/healthz").json()["auth"] is False
        assert c.post("/v1/generate", json={"model": "m"}).status_code == 200
        r = c.post("/v1/admin/reload")
        assert r.status_code == 200 and r.json()["models"][0]["weights_sha256"] == loaded["vae"].meta["weights_sha256"]
        assert c.post("/v1/generate", json={"model": "m", "temperature": 0.5}).status_code == 200
        assert c.post("/v1/admin/keys", json={"role": "viewer"}).status_code == 422


# --------------------------------------------------------------------------- the command

def test_serve_refuses_unsafe_setups(runs, tmp_path, capsys):
    assert main(["serve", str(runs["dc"]), "--host", "0.0.0.0", "--insecure-no-auth"]) == 2
    assert "refused on host 0.0.0.0" in capsys.readouterr().err
    assert main(["serve", str(runs["dc"]), "--keys-file", str(tmp_path / "none.json")]) == 2
    assert "no active API keys" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert parse_model_specs(["runs/dc", "v=runs/vae/"]) == [("dc", "runs/dc"), ("v", "runs/vae/")]
    with pytest.raises(GenforgeError, match="two models named"):
        parse_model_specs(["a/dc", "b/dc"])


# --------------------------------------------------------------------------- fuzzing the schema

def test_fuzzed_requests_never_get_a_500(make_app):
    """Hypothesis draws bodies from the served OpenAPI schema's fields, with wrong types and extra fields."""
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: pip install -e '.[test]'")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    app, made, _ = make_app()
    with TestClient(app) as c:
        schema = c.get("/openapi.json").json()

        def fields(path):
            ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            return list(schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])

        scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                            st.floats(allow_nan=False, allow_infinity=False),
                            st.text(max_size=20), st.sampled_from(["dc", "cdc", "vae", "png", "npz", "base64"]))
        values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.text(max_size=5), inner, max_size=3), max_leaves=8)
        plausible = {"model": st.sampled_from(["dc", "cdc", "vae", "x"]), "n": st.integers(-2, 70),
                     "seed": st.integers(-5, 2**64), "format": st.sampled_from(["png", "npz", "base64", "jpg"])}

        def bodies(path):
            names = fields(path)
            return st.dictionaries(st.sampled_from(names + ["extra"]),
                                   values, max_size=len(names)).flatmap(
                lambda d: st.fixed_dictionaries({k: plausible.get(k, values) for k in d}))

        seen = set()

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(path=st.sampled_from(["/v1/generate", "/v1/feedback"]), data=st.data())
        def no_500(path, data):
            body = data.draw(bodies(path))
            r = c.post(path, headers=auth(made["generator"]), json=body)
            seen.add(r.status_code)
            assert r.status_code < 500 or r.status_code == 503, (path, body, r.text)
            assert r.status_code == 200 or "error" in r.json()

        no_500()
        assert hypothesis.__version__ and {200, 422} <= seen
