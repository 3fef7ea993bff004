"""Serving text: /v1/generate with and without streaming gives genforge sample's text for a seed, concurrent
requests batched with the same tokens as alone, token-counted rate limits, the bad requests, and a streaming
client that hangs up (its rows stop, the audit log records it)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import genforge  # noqa: E402
from genforge.config import from_dict  # noqa: E402
from genforge.serve.app import Served, ServeConfig, create_app  # noqa: E402
from genforge.serve.audit import AuditLog  # noqa: E402
from genforge.serve.keys import KeyStore  # noqa: E402
from genforge.training import train  # noqa: E402

AUDIT_KEY = "a1" * 32
WORDS = "the king queen lord lady love death night day sword crown heart fair foul sweet".split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(1)
    for i in range(10):
        (root / f"d{i}.txt").write_text("\n\n".join(f"ROMEO:\n{' '.join(rng.choice(WORDS) for _ in range(6))}"
                                                     for _ in range(20)) + "\n")
    cfg = from_dict({"data": f"text:{root}", "model": "gpt", "text_context": 32, "text_n_layer": 1,
                     "text_n_head": 2, "text_n_embd": 16, "batch_size": 8, "max_steps": 4, "checkpoint_every": 4,
                     "sample_every": 0, "grid_n": 1, "tensorboard": False, "num_threads": 1, "ema_decay": 0.0,
                     "g_lr": 3e-3}, "test")
    path = tmp_path_factory.mktemp("gpt") / "run"
    train(cfg, path, quiet=True)
    return path


@pytest.fixture
def make_app(run, tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("generator", "test")[0]
    logs = []

    def make(**config):
        logs.append(AuditLog(tmp_path / f"audit-{len(logs)}.jsonl", bytes.fromhex(AUDIT_KEY)))
        served = {"bard": Served("bard", genforge.load(run), lambda: genforge.load(run))}
        app = create_app(served, ServeConfig(**{"rate": 0, **config}), store, logs[-1])
        return app, {"Authorization": f"Bearer {key}"}, logs[-1].path

    yield make
    for log in logs:
        log.close()


def events(body: str) -> list:
    out = []
    for block in body.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_generate_gives_the_text_of_genforge_sample_plain_and_streamed(make_app, run):
    app, auth, audit = make_app()
    ask = {"model": "bard", "n": 2, "seed": 9, "prompt": "ROMEO:\n", "max_new_tokens": 30, "top_p": 0.9}
    expected = genforge.load(run).sample(2, seed=9, prompt="ROMEO:\n", max_new_tokens=30, top_p=0.9).texts
    with TestClient(app) as client:
        models = client.get("/v1/models", headers=auth).json()["models"][0]
        assert models["modality"] == "text" and "prompt" in models["controls"] and models["context"] == 32
        plain = client.post("/v1/generate", json=ask, headers=auth)
        assert plain.status_code == 200 and plain.json()["texts"] == expected
        assert plain.json()["usage"]["completion_tokens"] == sum(len(t) for t in plain.json()["tokens"])
        streamed = client.post("/v1/generate", json={**ask, "stream": True}, headers=auth)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    got = events(streamed.text)
    assert got[-1] == "[DONE]" and got[-2]["done"] and got[-2]["seed"] == 9
    texts = ["".join(e["text"] for e in got if isinstance(e, dict) and e.get("index") == i and "text" in e)
             for i in range(2)]
    assert texts == expected
    assert [e["finish_reason"] for e in got if isinstance(e, dict) and "finish_reason" in e] == ["length"] * 2
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    ends = [line for line in lines if line.get("event") == "stream_end"]
    assert len(ends) == 1 and ends[0]["status"] == 200 and ends[0]["finished"] == 2


def test_concurrent_requests_are_batched_with_the_same_tokens_as_alone(make_app, run):
    app, auth, _ = make_app(max_rows=16)
    model = genforge.load(run)
    asks = [{"model": "bard", "seed": s, "max_new_tokens": 40 + s, "prompt": "ROMEO:\n" if s % 2 else ""}
            for s in range(8)]
    alone = [model.sample(1, seed=a["seed"], max_new_tokens=a["max_new_tokens"], prompt=a["prompt"]).texts[0]
             for a in asks]

    async def together():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth) as http:
                replies = await asyncio.gather(*(http.post("/v1/generate", json=a) for a in asks))
            worker = app.state.service.models["bard"].worker
            return [r.json()["texts"][0] for r in replies], worker

    texts, worker = asyncio.run(together())
    assert texts == alone
    assert worker.finished == {"length": 8}
    metrics = app.state.service.metrics.render().decode()
    rows = [line for line in metrics.splitlines() if line.startswith("genforge_batch_size_requests_sum")]
    counts = [line for line in metrics.splitlines() if line.startswith("genforge_batch_size_requests_count")]
    assert float(rows[0].split()[-1]) / float(counts[0].split()[-1]) > 1.5   # rows decoded together, on average


def test_rate_limits_count_tokens(make_app):
    app, auth, _ = make_app(token_rate=1.0, token_burst=100)
    with TestClient(app) as client:
        ok = client.post("/v1/generate", json={"model": "bard", "max_new_tokens": 80, "seed": 1}, headers=auth)
        assert ok.status_code == 200
        again = client.post("/v1/generate", json={"model": "bard", "max_new_tokens": 80, "seed": 2}, headers=auth)
        assert again.status_code == 429 and int(again.headers["Retry-After"]) >= 1
        assert "80 tokens (n x max_new_tokens)" in again.json()["error"]["message"]
        big = client.post("/v1/generate", json={"model": "bard", "n": 2, "max_new_tokens": 60}, headers=auth)
        assert big.status_code == 429 and "more than this server's token burst of 100" in big.json()["error"]["message"]


@pytest.mark.parametrize("fields, status, message", [
    ({"top_p": 0}, 422, "top_p"),
    ({"top_p": 1.5}, 422, "top_p"),
    ({"max_new_tokens": 600}, 422, "max_new_tokens 600 is above the limit of 512"),
    ({"stop": [""]}, 422, "stop must be text of 1 to 1000 characters"),
    ({"prompt": "R\u2603"}, 422, "character '\u2603' (U+2603) at offset 1 of the prompt is not in"),
    ({"prompt": "ROMEO: " * 20, "long_prompt": "refuse"}, 422, "longer than the model's context of 32"),
    ({"truncation": 0.5}, 422, "truncation is a GAN control; model gpt is a lm"),
    ({"format": "png"}, 422, "format 'png' is for images"),
    ({"n": 100}, 413, "n=100 is over this server's limit"),
])
def test_bad_text_requests_get_one_line_errors(make_app, fields, status, message):
    app, auth, _ = make_app()
    with TestClient(app) as client:
        r = client.post("/v1/generate", json={"model": "bard", "seed": 0, **fields}, headers=auth)
    assert r.status_code == status and message in r.json()["error"]["message"]


def test_a_long_prompt_is_truncated_from_the_left_with_a_note(make_app):
    app, auth, _ = make_app()
    with TestClient(app) as client:
        r = client.post("/v1/generate", json={"model": "bard", "prompt": "ROMEO: " * 20, "max_new_tokens": 5},
                        headers=auth).json()
    assert "only its last 32 tokens were used" in r["notes"][0] and r["usage"]["prompt_tokens"] == 32


def test_a_streaming_client_that_hangs_up_stops_its_generation_and_is_audited(make_app):
    """Raw ASGI: the client reads two chunks of the stream and disconnects."""
    app, auth, audit = make_app(max_new_tokens=2048)
    body = json.dumps({"model": "bard", "seed": 3, "max_new_tokens": 2048, "stream": True}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/generate", "raw_path": b"/v1/generate",
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("test", 80),
             "client": ("127.0.0.1", 5555), "http_version": "1.1",
             "headers": [(b"authorization", auth["Authorization"].encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}

    async def scenario():
        hang_up = asyncio.Event()
        chunks, sent = [], False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) >= 2:
                    hang_up.set()

        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), 30)
            worker = app.state.service.models["bard"].worker
            deadline = time.monotonic() + 10
            while (worker.finished.get("cancelled", 0) < 1 or worker.active) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return chunks, dict(worker.finished), worker.active

    chunks, finished, active = asyncio.run(scenario())
    assert len(chunks) >= 2 and finished == {"cancelled": 1} and active == 0   # stopped, not run to 2048
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert lines[0]["endpoint"] == "/v1/generate" and lines[0]["status"] == 200   # written when the stream began
    end = [line for line in lines if line.get("event") == "stream_end"]
    assert len(end) == 1 and end[0]["status"] == 499 and end[0]["finished"] == 0 and end[0]["sent_chars"] > 0
