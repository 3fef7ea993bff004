"""The HTTP service: a FastAPI app over genforge's own sampling code.

    POST /v1/generate       images from (model, n, seed, class, controls)    generator
    POST /v1/feedback       more like the liked images of a response          generator
    GET  /v1/models         what is served: family, classes, controls, hash  viewer
    GET  /v1/admin/keys     key management (POST creates, DELETE revokes)     admin
    POST /v1/admin/reload   load the model files again                       admin
    GET  /metrics           Prometheus text                                   viewer
    GET  /healthz           liveness, no key
    GET  /openapi.json      the OpenAPI schema, no key (no /docs: see create_app)
    GET  /                  the web page, no key (it asks for one)

Every request passes the ``Gate`` first (authentication, role, rate limit,
bounded body read; then metrics and the audit line, written before the
response is sent), so a request without a valid key is refused before its
body is read. Connections pass the ``ConnectionGuard`` before that (a header
deadline, a cap per client address and in all: ``serve/connections.py``). Latents are drawn per request
by the generation plan (:func:`genforge.generation.sampling.plan`); the per-model
``Batcher`` merges concurrent requests into one ``decode`` call, so a seed
gives the same pixels here as in ``genforge sample``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import math
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from genforge.version import __version__
from genforge.errors import GenforgeError
from genforge.generation.sampling import finish as finish_samples
from genforge.generation.sampling import Samples, decode, plan, resolve_class
from genforge.generation.steering import feedback_latents
from genforge.generation.text import text_plan
from genforge.generation.writers import grid_columns, make_grid, preview
from genforge.generation import provenance
from genforge.data.table.schema import MODELLED
from genforge.data.table.write import structured
from genforge.generation.tables import preview_columns, rows_csv_text, rows_json, sample_rows
from genforge.generation.audio import spectrogram_image, wav_info
from genforge.data.audio.wav import to_pcm16, wav_bytes
from genforge.serve.audit import AuditLog, Tally
from genforge.serve.batching import Batcher, QueueFull
from genforge.serve.connections import ConnectionGuard
from genforge.serve.keys import KeyStore, Principal, role_allows
from genforge.serve.limits import BodyTimeout, BodyTooLarge, RateLimiter, read_body, retry_after
from genforge.serve.monitoring import Metrics
from genforge.serve.text import Exchange, TextWorker, sse, text_body, text_hashes, usage
from genforge.serve.schemas import (CONTROLS, ErrorBody, FeedbackRequest, GenerateRequest, GenerateResponse,
                                    KeyCreate, ModelInfo, ModelsResponse, served_range)

log = logging.getLogger("genforge.serve")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {  # the page loads nothing from elsewhere and runs no inline script
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
CLIENT_GONE = 499  # nginx's status for "client closed the request": only in metrics and the audit log
INLINE_RENDER = 16 * 28 * 28  # pixel values encoded on the event loop; more are encoded in a worker thread


@dataclass
class ServeConfig:
    """The service's limits and switches; ``genforge serve --help`` documents each flag."""
    max_n: int = 64                 # images per request (413 above)
    max_pixels: int = 1 << 22       # n * height * width * channels of one response (413 above)
    max_body: int = 1 << 20         # request body bytes (413 above)
    body_timeout: float = 10.0      # seconds to receive a body (408 after)
    request_timeout: float = 30.0   # seconds from queueing to images (503 after)
    max_batch: int = 64             # images per forward pass; 1 turns micro-batching off
    max_wait: float = 0.002         # seconds the oldest request waits for company
    max_queue: int = 256            # requests waiting per model (503 beyond)
    rate: float = 20.0              # requests per second per key (0: no limit)
    burst: int = 40                 # bucket size: requests a key may send at once
    auth: bool = True               # False only with --insecure-no-auth on loopback
    anon_rate: float = 2.0          # requests per second per client address without a valid key (429 above)
    anon_burst: int = 20            # ... and how many it may send at once
    audit_best_effort: bool = False  # True: serve on when an audit line cannot be written (else 503)
    audit_summary_interval: float = 60.0  # seconds between the summary lines of requests without a valid key
    max_connections: int = 1024     # open connections in all (503 above)
    max_connections_per_client: int = 128  # open connections from one address (503 above; clients behind
                                           # one proxy share its address)
    header_timeout: float = 10.0    # seconds to receive a request's headers (408, connection closed)
    max_new_tokens: int = 512       # text: tokens one sample may ask for (422 above)
    max_rows: int = 16              # text: samples decoding together (continuous batching); 1 turns batching off
    token_rate: float = 2000.0      # text: generated tokens/s per key (0: no limit); a request reserves
    token_burst: int = 16384        # n * max_new_tokens of them up front (429 when the bucket lacks them)


@dataclass
class Served:
    """One served model: its name in the API, the model, how to load it again, and its batcher."""
    name: str
    model: object                           # GenerativeModel, or OnnxModel for --backend onnx
    load: Callable[[], object]              # reads the model files again (admin reload)
    backend: str = "torch"
    batcher: Batcher | None = field(default=None, repr=False)
    worker: TextWorker | None = field(default=None, repr=False)  # text models: the decoding thread


def is_text(model) -> bool:
    """Whether a served model makes text (its output conversion holds a tokenizer): it is served by a
    TextWorker, not a Batcher."""
    return getattr(getattr(model, "output", None), "tokenizer", None) is not None


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, reason: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.reason = status, message, headers or {}, reason


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def requires(role: str):
    """Mark an endpoint with the least role that may call it; the Gate enforces it."""
    def mark(fn):
        fn.required_role = role
        return fn
    return mark


ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 408, 413, 415, 422, 429, 503)}


# --------------------------------------------------------------------------- the gate (ASGI middleware)

class Gate:
    """Authentication, roles, rate limits and the bounded body read; then metrics and the audit line.

    The audit line is written when the response starts, before a byte of it is sent: if the write fails, the
    client gets a 503 instead of the response (unless ``audit_best_effort``), so every response served is a
    response recorded. Requests without a valid key are counted in the summary lines (``audit.Tally``).
    """

    def __init__(self, app, service: "Service"):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        svc, t0 = self.service, time.perf_counter()
        endpoint, role = svc.route_of(scope)
        state = scope.setdefault("state", {})
        state["audit"] = record = {}
        audited = svc.audit is not None and scope["path"].startswith("/v1/")
        status, started, replaced, gone = None, False, False, None

        async def send_recorded(message):
            nonlocal status, started, replaced
            if replaced:
                return  # the app's response was replaced by the 503 below: drop the rest of it
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                if gone is not None and gone.done():
                    status = CLIENT_GONE  # the client hung up before its response: record that, send nothing
                    svc.record(scope, state, endpoint, status, time.perf_counter() - t0)
                    replaced = True
                    return
                if audited and not svc.record(scope, state, endpoint, status, time.perf_counter() - t0):
                    replaced, status = True, 503
                    refusal = error_response(503, "the server cannot write its audit log: request not served")
                    await refusal(scope, receive, send)
                    return
            await send(message)

        try:
            if role is not None:
                principal, reply = svc.admit(scope, role)
                state["principal"] = principal
            else:
                reply = None
            if reply is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                reply, receive = await svc.buffer_body(scope, receive, record)
                if reply is None and audited:
                    gone = asyncio.ensure_future(client_gone_from(receive))
            if reply is not None:
                await reply(scope, receive, send_recorded)
            else:
                await self.app(scope, receive, send_recorded)
        except ConnectionAbortedError:
            status = CLIENT_GONE
        finally:
            if gone is not None:
                gone.cancel()
            latency = time.perf_counter() - t0
            status = status or 500
            if audited and not started:  # no response at all (the client went away first): still one line
                svc.record(scope, state, endpoint, status, latency)
            svc.metrics.requests.labels(endpoint, str(status)).inc()
            svc.metrics.latency.labels(endpoint).observe(latency)


# --------------------------------------------------------------------------- the service

class Service:
    def __init__(self, models: dict[str, Served], config: ServeConfig, keys: KeyStore | None, audit: AuditLog | None):
        if config.auth and keys is None:
            raise GenforgeError("authentication is on: give a key file")
        self.models, self.config, self.keys, self.audit = models, config, keys, audit
        self.metrics = Metrics()
        self.limiter = RateLimiter(config.rate, config.burst)
        self.anon_limiter = RateLimiter(config.anon_rate, config.anon_burst)  # per address, requests with no valid key
        self.token_limiter = RateLimiter(config.token_rate, config.token_burst)  # per key, text tokens
        self.tally = Tally(audit, config.audit_summary_interval)
        self.guard = ConnectionGuard(config.max_connections, config.max_connections_per_client,
                                     config.header_timeout, on_refused=self.refused)
        self.routes: list = []  # set by create_app

    # ------------------------------------------------------------- the audit log

    def record(self, scope, state: dict, endpoint: str, status: int, latency: float) -> bool:
        """Write the request's audit line; False when it could not be written and that must fail the request.

        A request without a valid key is counted in the per-client summary instead of a line of its own."""
        principal = state.get("principal")
        client = client_address(scope)
        if self.audit is None:
            return True
        if principal is None:
            self.tally_add(client, str(status))
            return True
        try:
            self.audit.write({"key_id": principal.key_id, "method": scope["method"], "endpoint": endpoint,
                              "client": client, "status": status, "latency_ms": round(latency * 1000, 3),
                              **state.get("audit", {})})
            return True
        except OSError as e:  # disk full...: fail closed unless the operator chose best effort
            log.error("could not write the audit log %s: %s%s", self.audit.path, e,
                      " (best effort: served anyway)" if self.config.audit_best_effort else " (request refused)")
            self.metrics.rejections.labels("audit_failed").inc()
            return self.config.audit_best_effort

    def tally_add(self, client: str, outcome: str) -> None:
        try:
            self.tally.add(client, outcome)
        except OSError as e:
            log.error("could not write a summary line to the audit log %s: %s", self.audit.path, e)

    def refused(self, client: str, reason: str) -> None:
        """A connection refused (or timed out) before a request was read: metrics and the audit summary."""
        self.metrics.rejections.labels(reason).inc()
        if self.audit is not None:
            self.tally_add(client, reason)

    # ------------------------------------------------------------- gate helpers

    def route_of(self, scope) -> tuple[str, str | None]:
        """(route template for metrics, least role the endpoint needs or None)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path, getattr(getattr(route, "endpoint", None), "required_role", None)
        return "other", None

    def admit(self, scope, role: str) -> tuple[Principal | None, JSONResponse | None]:
        """Who is asking, and the refusal (401, 403, 429) if they may not."""
        reject = self.metrics.rejections.labels
        if not self.config.auth:
            principal = Principal("anonymous", "admin")
            bucket = "client:" + client_address(scope)
        else:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            try:
                principal = self.keys.authenticate(token.strip() if scheme.lower() == "bearer" else None)
            except GenforgeError as e:  # the key file became unreadable
                log.error("%s", e)
                return None, error_response(503, "the server cannot read its key file")
            if principal is None:
                # failed attempts are limited per address, before the key guessing or the log can pile up
                wait = self.anon_limiter.take("client:" + client_address(scope))
                if wait > 0:
                    reject("rate_limited_unauthenticated").inc()
                    return None, error_response(429, f"too many requests without a valid API key from this "
                                                     f"address: retry in {wait:.2f} s",
                                                {"Retry-After": retry_after(wait)})
                reject("unauthorized").inc()
                return None, error_response(401, "missing, unknown or revoked API key: send "
                                                 "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
            if not role_allows(principal.role, role):
                reject("forbidden").inc()
                return principal, error_response(403, f"key {principal.key_id} has role {principal.role}; this "
                                                      f"endpoint needs {role}")
            bucket = principal.key_id
        wait = self.limiter.take(bucket)
        if wait > 0:
            reject("rate_limited").inc()
            return principal, error_response(429, f"rate limit of {self.config.rate:g} requests/s for this key "
                                                  f"exceeded: retry in {wait:.2f} s",
                                             {"Retry-After": retry_after(wait)})
        return principal, None

    async def buffer_body(self, scope, receive, record: dict):
        """Read the body within the size and time limits; (refusal or None, a receive that replays it)."""
        cfg, reject = self.config, self.metrics.rejections.labels
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > cfg.max_body):
            reject("body_too_large").inc()
            return error_response(413, f"request body over the limit of {cfg.max_body} bytes"), receive
        try:
            body = await read_body(receive, cfg.max_body, cfg.body_timeout)
        except BodyTooLarge:
            reject("body_too_large").inc()
            return error_response(413, f"request body over the limit of {cfg.max_body} bytes"), receive
        except BodyTimeout:
            reject("body_timeout").inc()
            return error_response(408, f"request body not received within {cfg.body_timeout:g} s",
                                  {"Connection": "close"}), receive
        record["body_sha256"] = hashlib.sha256(body).hexdigest()
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: http.disconnect when the client goes away

        return None, replay

    # ------------------------------------------------------------- generation

    def served(self, name: str) -> Served:
        if name not in self.models:
            raise ApiError(404, f"no model {name!r} here; this server has: {', '.join(self.models)}")
        return self.models[name]

    def check_size(self, served: Served, n: int, size: int | None) -> None:
        cfg = self.config
        if n > cfg.max_n:
            raise ApiError(413, f"n={n} is over this server's limit of {cfg.max_n} images per request",
                           reason="too_many_images")
        shape = served.model.example_shape
        if size and len(shape) == 3:  # images resized on the way out: (c, size, size) each
            shape = (shape[0], size, size)
        values = n * math.prod(shape)
        if values > cfg.max_pixels:
            what = f"{size or shape[1]}x{size or shape[2]}x{shape[0]}" if len(shape) == 3 else "x".join(map(str, shape))
            raise ApiError(413, f"{n} examples of {what} is {values} values, over this server's "
                                f"limit of {cfg.max_pixels} per request", reason="too_many_pixels")

    async def images(self, request: Request, served: Served, z: torch.Tensor, y: np.ndarray | None,
                     controls: dict) -> np.ndarray:
        """Queue (z, y) on the model's batcher; give up on timeout or when the client goes away."""
        key = tuple(sorted((k, v) for k, v in controls.items() if v is not None))
        work = asyncio.ensure_future(served.batcher.submit(served.model, z, y, key))
        gone = asyncio.ensure_future(client_gone(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=self.config.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()  # withdraws the request from the queue (see Batcher.submit)
        if work in done:
            try:
                return work.result()
            except QueueFull:
                raise ApiError(503, f"model {served.name} has {self.config.max_queue} requests waiting: retry "
                                    "shortly", {"Retry-After": "1"}, reason="queue_full") from None
            except GenforgeError as e:
                raise ApiError(422, str(e)) from None
        if gone in done:
            raise ApiError(CLIENT_GONE, "client went away", reason="client_gone")
        raise ApiError(503, f"no result within the {self.config.request_timeout:g} s request timeout",
                       {"Retry-After": "1"}, reason="timeout")


    # ------------------------------------------------------------- text

    async def text(self, request: Request, served: Served, req, seed: int) -> Response:
        """A text request: the text plan (the same rows as generate_text), the token budget, the worker; then
        the JSON body, or the server-sent events of a stream."""
        cfg = self.config
        if req.n > cfg.max_n:
            raise ApiError(413, f"n={req.n} is over this server's limit of {cfg.max_n} samples per request",
                           reason="too_many_images")
        if req.format != "base64":
            raise ApiError(422, f"format {req.format!r} is for images; a text model answers in JSON, or in "
                                "server-sent events with stream: true")
        try:
            p = text_plan(served.model, req.n, seed, max_new_tokens_limit=cfg.max_new_tokens,
                          **{c.name: getattr(req, c.name) for c in CONTROLS})
        except GenforgeError as e:
            raise ApiError(422, str(e)) from None
        cost = req.n * p.rows[0].max_new_tokens
        principal = getattr(request.state, "principal", None)
        bucket = principal.key_id if cfg.auth and principal is not None else "client:" + client_address(request.scope)
        wait = self.token_limiter.take(bucket, cost=cost)
        if wait > 0:
            if math.isinf(wait):
                raise ApiError(429, f"{cost} tokens (n x max_new_tokens) is more than this server's token burst of "
                                    f"{cfg.token_burst} per key: ask for fewer", reason="rate_limited_tokens")
            raise ApiError(429, f"token rate of {cfg.token_rate:g} tokens/s for this key exceeded by this request's "
                                f"{cost} tokens (n x max_new_tokens): retry in {wait:.2f} s",
                           {"Retry-After": retry_after(wait)}, reason="rate_limited_tokens")
        exchange = Exchange(p.rows)
        try:
            served.worker.submit(served.model, p.rows)
        except QueueFull:
            raise ApiError(503, f"model {served.name} has {cfg.max_queue} samples waiting: retry shortly",
                           {"Retry-After": "1"}, reason="queue_full") from None
        headers = {"X-Genforge-Seed": str(seed), "X-Genforge-Model": served.name}
        if req.stream:
            return StreamingResponse(self.stream_text(request, served, exchange, p, seed), headers={
                **headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}, media_type="text/event-stream")
        work = asyncio.ensure_future(exchange.wait_all())
        gone = asyncio.ensure_future(client_gone(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=cfg.request_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                exchange.cancel.set()  # the rows end before their next token: nothing decodes for nobody
        if gone in done and work not in done:
            raise ApiError(CLIENT_GONE, "client went away", reason="client_gone")
        if work not in done:
            raise ApiError(503, f"no result within the {cfg.request_timeout:g} s request timeout",
                           {"Retry-After": "1"}, reason="timeout")
        samples = work.result()
        request.state.audit["result"] = {"n": len(samples), "texts_sha256": text_hashes(samples),
                                         "usage": usage(samples, p.rows)}
        return JSONResponse(text_body(served.name, seed, p.controls, p.notes, samples, p.rows), headers=headers)

    async def stream_text(self, request: Request, served: Served, exchange: Exchange, p, seed: int):
        """The server-sent events of a streamed text request. Its end is a line of its own in the audit log
        (the request's line was written when the stream began): status 200 when every sample finished, 499
        when the client hung up (its rows stopped before their next token), 503 on a timeout."""
        status, sent_chars = CLIENT_GONE, 0
        gone = asyncio.ensure_future(client_gone(request))
        try:
            while not exchange.finished():
                event = asyncio.ensure_future(exchange.next_event())
                done, _ = await asyncio.wait({event, gone}, timeout=self.config.request_timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if event not in done:
                    event.cancel()
                    if gone not in done:
                        status = 503
                        yield sse({"error": f"no text within the {self.config.request_timeout:g} s request timeout"})
                    return
                kind, i, value = event.result()
                if kind == "text":
                    sent_chars += len(value)
                    yield sse({"index": i, "text": value})
                else:
                    yield sse({"index": i, "finish_reason": value.finish_reason, "tokens": len(value.tokens)})
            samples = exchange.samples
            yield sse({"done": True, "model": served.name, "seed": seed, "notes": p.notes,
                       "usage": usage(samples, p.rows), "texts_sha256": text_hashes(samples)})
            yield sse("[DONE]")
            status = 200
        finally:
            gone.cancel()
            if status != 200:
                exchange.cancel.set()  # the rows end before their next token
            self.audit_stream_end(request, status, exchange, sent_chars)

    def audit_stream_end(self, request: Request, status: int, exchange: Exchange, sent_chars: int) -> None:
        principal = getattr(request.state, "principal", None)
        if status == CLIENT_GONE:
            self.metrics.rejections.labels("client_gone").inc()
        if self.audit is None or principal is None:
            return
        try:
            self.audit.write({"key_id": principal.key_id, "method": "POST", "endpoint": "/v1/generate",
                              "client": client_address(request.scope), "event": "stream_end", "status": status,
                              "sent_chars": sent_chars, "finished": sum(s is not None for s in exchange.samples),
                              "n": len(exchange.samples), "body_sha256": request.state.audit.get("body_sha256")})
        except OSError as e:  # the stream is over: nothing to refuse any more, so say it in the server's log
            log.error("could not write the end of a stream to the audit log %s: %s", self.audit.path, e)


def client_address(scope) -> str:
    return str((scope.get("client") or ["?"])[0])


async def client_gone_from(receive) -> None:
    """Return when the client disconnects (called once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def check_classes(served: Served, classes) -> None:
    """Each requested class looked up as ``sample`` looks it up (:func:`resolve_class`: a JSON integer is an
    index; a string is a class name first, an index only when it names no class). An unknown class is a 404
    naming the known ones; a string that is one class's name and another's index is a 422 naming both."""
    model = served.model
    if classes is None or not model.num_classes:
        return  # none asked, or an unconditional model: the plan says so (422)
    names = model.class_names or []
    for c in classes if isinstance(classes, list) else [classes]:
        try:
            resolve_class(model, c)
        except GenforgeError as e:
            ambiguous = isinstance(c, str) and c in names  # a name that exists, refused: it also reads as an index
            raise ApiError(422 if ambiguous else 404, f"model {served.name}: {e}") from None


def render(served: Served, fmt: str, x: np.ndarray, y: np.ndarray | None, z: torch.Tensor, seed: int,
           controls: dict, with_latents: bool) -> tuple[Response, list[str]]:
    """The response in the requested format, and each sample's hash (for the audit log).

    png: one picture (an image grid; a series plot); npz: arrays x, y, z, seed; base64 (JSON): by modality
    (``RENDERERS``). PNGs carry genforge's provenance metadata, as those ``genforge sample`` writes.
    """
    model = served.model
    hashes = [provenance.pixel_sha256(sample) for sample in x]
    meta = provenance.stamp({"model": model.name, "served_as": served.name,
                             "weights_sha256": model.meta.get("weights_sha256"), "step": model.meta.get("step"),
                             "seed": seed, "n": len(x), "controls": controls})
    headers = {"X-Genforge-Seed": str(seed), "X-Genforge-Model": served.name}
    if model.modality.name in ("audio", "audio-wave") and fmt != "npz":
        return render_audio(served, fmt, x, y, z, meta, headers, with_latents)
    if fmt == "png":
        nrow = grid_columns(model, len(x), controls)
        picture = preview(Samples(x=x, y=y, z=z.numpy(), seed=seed, controls=controls), model, nrow=nrow,
                          title=f"{served.name} seed {seed}")
        data = provenance.png_bytes(picture, {**meta, "kind": "grid", "nrow": nrow})
        return Response(data, media_type="image/png", headers=headers), hashes
    if fmt == "npz":
        buf = io.BytesIO()
        arrays = {"x": x, "z": z.numpy(), "seed": np.int64(seed)}
        if y is not None:
            arrays["y"] = y
        np.savez_compressed(buf, **arrays)
        disposition = f'attachment; filename="{served.name}-{seed}.npz"'
        return Response(buf.getvalue(), media_type="application/octet-stream",
                        headers={**headers, "Content-Disposition": disposition}), hashes
    body = {"model": served.name, "seed": seed, "n": len(x), "controls": controls,
            "classes": None if y is None else y.tolist(), "latents": z.numpy().tolist() if with_latents else None,
            **RENDERERS[model.modality.name](model, x, y, meta, hashes)}
    return JSONResponse(body, headers=headers), hashes


def _images_json(model, x: np.ndarray, y: np.ndarray | None, meta: dict, hashes: list[str]) -> dict:
    images = [base64.b64encode(provenance.png_bytes(
        img, {**meta, "kind": "single", "index": i, "class": None if y is None else int(y[i])})).decode()
        for i, img in enumerate(x)]
    return {"images": images, "pixels_sha256": hashes}


def _series_json(model, x: np.ndarray, y: np.ndarray | None, meta: dict, hashes: list[str]) -> dict:
    return {"series": x.tolist(), "channel_names": model.output.channel_names, "values_sha256": hashes}


# modality -> the JSON (base64 format) fields of its samples
RENDERERS = {"image": _images_json, "series": _series_json}


def table_columns(model) -> list[dict]:
    """A table model's columns for /v1/models and the page: name, kind, categories or range."""
    out = []
    for c in model.output.schema.modelled:
        d = {"name": c.name, "kind": c.kind}
        if c.categories is not None:
            d["categories"] = list(c.categories)
        elif c.min is not None:
            d["min"], d["max"] = c.min, c.max
        out.append(d)
    return out


def table_response(served: Served, fmt: str, table, how: str, seed: int, plot: bool) -> Response:
    """Rows as JSON objects (``RowsResponse``) or as CSV text, the user's own spelling of every cell."""
    headers = {"X-Genforge-Seed": str(seed), "X-Genforge-Model": served.name, "X-Genforge-Conditions": how.encode("ascii", "backslashreplace").decode()}
    if fmt == "csv":
        disposition = f'attachment; filename="{served.name}-{seed}.csv"'
        return Response(rows_csv_text(table), media_type="text/csv",
                        headers={**headers, "Content-Disposition": disposition})
    picture = None
    if plot:
        image = preview_columns(structured(table), served.model, title=f"{served.name}, seed {seed}")
        picture = base64.b64encode(provenance.png_bytes(image, None)).decode()
    body = {"model": served.name, "seed": seed, "n": len(table),
            "columns": [c.name for c in table.schema.columns if c.kind in MODELLED or c.kind == "constant"],
            "rows": rows_json(table), "conditions": how, "plot": picture}
    return JSONResponse(body, headers=headers)


def render_audio(served: Served, fmt: str, x: np.ndarray, y: np.ndarray | None, z: torch.Tensor, meta: dict,
                 headers: dict, with_latents: bool) -> tuple[Response, list[str]]:
    """Audio models: png is a grid of the clips' spectrograms; base64 gives each clip as a WAV (provenance in its
    INFO chunk) in ``audio`` and its spectrogram PNG in ``images``, so a page can both play and draw it. The audit
    log's hash of a clip is that of its 16-bit samples, as the ledger's."""
    model = served.model
    rate = model.output.rate
    pcm_hashes = [provenance.pixel_sha256(to_pcm16(clip)) for clip in x]
    pictures = [spectrogram_image(clip, rate) for clip in x]
    if fmt == "png":
        data = provenance.png_bytes(make_grid(np.stack(pictures)), {**meta, "kind": "spectrogram-grid"})
        return Response(data, media_type="image/png", headers=headers), pcm_hashes
    audio = []
    for i, clip in enumerate(x):
        info = wav_info({**meta, "kind": "single", "index": i, "class": None if y is None else int(y[i])},
                        f"sample {i}")
        audio.append(base64.b64encode(wav_bytes(clip, rate, info)).decode())
    images = [base64.b64encode(provenance.png_bytes(p, {**meta, "kind": "spectrogram", "index": i})).decode()
              for i, p in enumerate(pictures)]
    body = {"model": served.name, "seed": meta["seed"], "n": len(x), "controls": meta["controls"], "images": images,
            "audio": audio, "rate": rate, "classes": None if y is None else y.tolist(),
            "latents": z.numpy().tolist() if with_latents else None, "pixels_sha256": pcm_hashes}
    return JSONResponse(body, headers=headers), pcm_hashes


def model_info(served: Served) -> ModelInfo:
    m = served.model
    defaults = m.sampling_defaults  # this model's own (its recipe's) where the declaration's would mislead
    if is_text(m):
        return ModelInfo(name=served.name, recipe=m.name, family=m.family, modality=m.modality.name,
                         example_shape=list(m.example_shape), backend=served.backend,
                         num_classes=0, classes=None, image_shape=None, image_size=None, z_dim=None,
                         context=m.output.context, tokenizer=m.output.tokenizer.kind, weights_sha256=m.meta.get("weights_sha256"),
                         step=m.meta.get("step"), controls=[c.name for c in m.controls],
                         control_specs=[{**served_range(c), "default": defaults.get(c.name, c.default)}
                                        for c in m.controls])
    return ModelInfo(name=served.name, recipe=m.name, family=m.family, backend=served.backend,
                     num_classes=m.num_classes,
                     classes=(m.class_names or [str(i) for i in range(m.num_classes)]) if m.num_classes else None,
                     modality=m.modality.name, example_shape=list(m.example_shape),
                     image_shape=list(m.example_shape) if m.modality.name == "image" else None,
                     image_size=m.example_shape[1] if m.modality.name == "image" else None, z_dim=m.z_dim,
                     columns=table_columns(m) if m.modality.name == "table" else None,
                     weights_sha256=m.meta.get("weights_sha256"), step=m.meta.get("step"),
                     controls=[c.name for c in m.controls],
                     control_specs=[{**served_range(c), "default": defaults.get(c.name, c.default)}
                                    for c in m.controls])


# --------------------------------------------------------------------------- the app

def create_app(models: dict[str, Served], config: ServeConfig | None = None, keys: KeyStore | None = None,
               audit: AuditLog | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (name -> Served). Batchers start with the app's lifespan."""
    config = config or ServeConfig()
    svc = Service(models, config, keys, audit)

    def on_batch(name):
        def record(images: int, requests: int):
            svc.metrics.batch_images.labels(name).observe(images)
            svc.metrics.batch_requests.labels(name).observe(requests)
            svc.metrics.images.labels(name).inc(images)
        return record

    @asynccontextmanager
    async def lifespan(app):
        for name, served in models.items():
            if is_text(served.model):  # text: a decoding thread with continuous batching (serve/text.py)
                served.worker = TextWorker(config.max_rows, config.max_queue,
                                           on_step=lambda rows, name=name: svc.metrics.batch_requests.labels(
                                               name).observe(rows))
                served.worker.start()
                svc.metrics.queue_depth.labels(name).set_function(served.worker.depth)
                continue
            served.batcher = Batcher(decode_for_batcher, config.max_batch, config.max_wait, config.max_queue,
                                     on_batch=on_batch(name))
            served.batcher.start()
            svc.metrics.queue_depth.labels(name).set_function(served.batcher.depth)
        summaries = asyncio.ensure_future(flush_every(svc))
        yield
        summaries.cancel()
        for served in models.values():
            if served.worker is not None:
                served.worker.stop()
                continue
            await served.batcher.stop()
            served.batcher.executor.shutdown(wait=False)
        flush_tally(svc)

    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, and this origin keeps the API key
    # in the page's session storage; a script from elsewhere running here could read it. The schema itself
    # stays at /openapi.json, for a local Swagger UI or any OpenAPI client.
    app = FastAPI(title="genforge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Generate images from genforge models: the same pixels as `genforge sample` and "
                              "the Python API (`genforge.load(path).sample(n, seed=..., **controls)`, or "
                              "`genforge.generation.sample`) with the same seed and controls. Send "
                              "'Authorization: Bearer <key>' (genforge keys create). GET /v1/models lists each "
                              "model's controls with their ranges.")
    app.state.service = svc
    bearer = [Depends(HTTPBearer(auto_error=False, description="an API key from genforge keys create"))]
    add_error_handlers(app, svc)
    add_generation_routes(app, svc, bearer)
    add_admin_routes(app, svc, bearer)
    add_page_routes(app)
    svc.routes = list(app.router.routes)
    app.add_middleware(Gate, service=svc)
    return app


async def flush_every(svc: Service) -> None:
    """Write the audit summary lines every ``audit_summary_interval`` seconds, traffic or not."""
    while True:
        await asyncio.sleep(svc.config.audit_summary_interval)
        flush_tally(svc)


def flush_tally(svc: Service) -> None:
    try:
        svc.tally.flush()
    except OSError as e:
        log.error("could not write summary lines to the audit log %s: %s (kept for the next try)",
                  svc.audit.path, e)


def add_error_handlers(app: FastAPI, svc: Service) -> None:
    """Every error is a JSON body: {"error": {"status": ..., "message": ...}}."""
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        if e.reason:
            svc.metrics.rejections.labels(e.reason).inc()
        return error_response(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return error_response(400, "request body is not valid JSON")
        content_type = request.headers.get("content-type", "")
        if any(tuple(err.get("loc", ())) == ("body",) for err in errors) and "json" not in content_type:
            return error_response(415, "send the body as a JSON object with 'Content-Type: application/json'")
        parts = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'request body'}: {err.get('msg')}"
                 for err in errors[:5]]
        return error_response(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, "internal error (logged on the server)")


def add_generation_routes(app: FastAPI, svc: Service, bearer: list) -> None:
    """/healthz, /metrics, /v1/models, /v1/generate and /v1/feedback."""
    @app.get("/healthz", tags=["service"])
    async def healthz():
        return {"status": "ok", "version": __version__, "auth": svc.config.auth, "models": len(svc.models)}

    @app.get("/metrics", tags=["service"], dependencies=bearer, response_class=Response)
    @requires("viewer")
    async def metrics():
        return Response(svc.metrics.render(), media_type=svc.metrics.content_type)

    @app.get("/v1/models", tags=["models"], dependencies=bearer, response_model=ModelsResponse, responses=ERRORS)
    @requires("viewer")
    async def list_models():
        return ModelsResponse(models=[model_info(s) for s in svc.models.values()])

    @app.post("/v1/generate", tags=["generation"], dependencies=bearer, responses={
        **ERRORS, 200: {"model": GenerateResponse, "content": {"image/png": {}, "application/octet-stream": {}}}})
    @requires("generator")
    async def generate(req: GenerateRequest, request: Request):
        """Images from a seed and controls: the same pixels as ``genforge sample`` with the same arguments."""
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        request.state.audit["params"] = {**req.model_dump(by_alias=True, exclude_none=True), "seed": seed}
        served = svc.served(req.model)
        if is_text(served.model):
            return await svc.text(request, served, req, seed)
        if req.stream:
            raise ApiError(422, f"stream is for text models; {served.name} makes images")
        svc.check_size(served, req.n, req.size)
        if served.model.modality.name == "table":
            return await rows(req, request, served, seed)
        if req.where is not None or req.format in ("json", "csv"):
            raise ApiError(422, f"where and the json / csv formats are for table models; {served.name} makes "
                                f"{served.model.modality.name} samples")
        check_classes(served, req.class_)
        try:  # the one generation plan: controls checked against the model's declarations, latents drawn
            p = plan(served.model, req.n, seed, req.class_, **{c.name: getattr(req, c.name) for c in CONTROLS})
        except GenforgeError as e:
            raise ApiError(422, str(e)) from None
        x = await svc.images(request, served, p.z, p.y, p.decode)  # the batcher runs sampling.decode
        if p.output:
            x = await asyncio.to_thread(finish_samples, x, p.output)
        return await finish(request, served, req.format, x, p.y, p.z, seed, p.controls, req.latents)

    @app.post("/v1/feedback", tags=["generation"], dependencies=bearer, responses={
        **ERRORS, 200: {"model": GenerateResponse, "content": {"image/png": {}, "application/octet-stream": {}}}})
    @requires("generator")
    async def feedback(req: FeedbackRequest, request: Request):
        """More like the liked images: the latents of ``genforge sample --from GRID --like ...``, computed from the
        liked latents a previous response returned (the server keeps no state between requests)."""
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        z_liked = [item.z for item in req.liked]
        request.state.audit["params"] = {
            "model": req.model, "n": req.n, "radius": req.radius, "seed": seed, "format": req.format,
            "liked": len(req.liked), "liked_sha256": hashlib.sha256(repr(z_liked).encode()).hexdigest()}
        served = svc.served(req.model)
        model = served.model
        if is_text(model):
            raise ApiError(422, f"model {served.name} makes text: it has no latents to draw more like (feedback is "
                                "for image and series models)")
        svc.check_size(served, req.n, None)
        if any(len(v) != model.z_dim for v in z_liked):
            raise ApiError(422, f"liked: each latent must have {model.z_dim} values for model {served.name}")
        liked_y = [item.class_ for item in req.liked]
        if model.num_classes:
            if any(c is None for c in liked_y):
                raise ApiError(422, f"liked: model {served.name} is class-conditional: give each liked image's class")
            bad = [c for c in liked_y if c >= model.num_classes]
            if bad:
                raise ApiError(404, f"model {served.name} has no class {bad[0]}; its classes are 0 to "
                                    f"{model.num_classes - 1}")
        elif any(c is not None for c in liked_y):
            raise ApiError(422, f"liked: model {served.name} is unconditional: give no classes")
        # the latents of steering.feedback (genforge sample --from GRID --like ...), from the same function
        z, y = feedback_latents(torch.tensor(z_liked, dtype=torch.float32),
                                np.asarray(liked_y, dtype=np.int64) if model.num_classes else None,
                                req.n, req.radius, seed)
        x = await svc.images(request, served, z, y, {})
        return await finish(request, served, req.format, x, y, z, seed, {"radius": req.radius}, req.latents)

    async def rows(req, request, served: Served, seed: int) -> Response:
        """A table model's rows, with the request's conditions (genforge.generation.tables.sample_rows, the path
        of ``genforge sample --where``), off the event loop; tables are not batched across requests."""
        if req.format in ("png", "npz"):
            raise ApiError(422, f"model {served.name} makes rows: ask for format json or csv")
        given = {c.name: getattr(req, c.name) for c in CONTROLS if getattr(req, c.name) is not None}
        try:
            table, how = await asyncio.to_thread(sample_rows, served.model, req.n, seed, req.where, **given)
        except GenforgeError as e:
            raise ApiError(422, str(e)) from None
        response = await asyncio.to_thread(table_response, served, req.format, table, how, seed, req.plot)
        request.state.audit["result"] = {"n": len(table), "conditions": how,
                                         "body_sha256": hashlib.sha256(response.body).hexdigest()}
        return response

    async def finish(request, served, fmt, x, y, z, seed, controls, with_latents) -> Response:
        args = (served, fmt, x, y, z, seed, controls, with_latents)
        # A few small images encode in less time than a hand-off to a thread takes; larger ones go to one.
        response, pixel_hashes = render(*args) if x.size <= INLINE_RENDER else await asyncio.to_thread(render, *args)
        request.state.audit["result"] = {"n": len(x), "pixels_sha256": pixel_hashes,
                                         "body_sha256": hashlib.sha256(response.body).hexdigest()}
        return response


def add_admin_routes(app: FastAPI, svc: Service, bearer: list) -> None:
    """/v1/admin: keys and reloading the model files."""
    @app.get("/v1/admin/keys", tags=["admin"], dependencies=bearer, responses=ERRORS)
    @requires("admin")
    async def list_keys():
        return {"keys": [{k: v for k, v in r.items() if k != "sha256"} for r in svc.keys.records()]} \
            if svc.keys else {"keys": []}

    @app.post("/v1/admin/keys", tags=["admin"], dependencies=bearer, responses=ERRORS, status_code=201)
    @requires("admin")
    async def create_key(req: KeyCreate, request: Request):
        """A new key, shown in this response only."""
        if svc.keys is None:
            raise ApiError(422, "this server runs without authentication (--insecure-no-auth): no keys to manage")
        key, rec = svc.keys.create(req.role, req.name)
        request.state.audit["params"] = {"role": req.role, "name": req.name, "created_id": rec["id"]}
        return {"key": key, **{k: v for k, v in rec.items() if k != "sha256"}}

    @app.delete("/v1/admin/keys/{key_id}", tags=["admin"], dependencies=bearer, responses=ERRORS)
    @requires("admin")
    async def revoke_key(key_id: str, request: Request):
        if svc.keys is None:
            raise ApiError(422, "this server runs without authentication (--insecure-no-auth): no keys to manage")
        request.state.audit["params"] = {"revoked_id": key_id}
        try:
            rec = svc.keys.revoke(key_id)
        except GenforgeError as e:
            raise ApiError(404, str(e)) from None
        return {k: v for k, v in rec.items() if k != "sha256"}

    @app.post("/v1/admin/reload", tags=["admin"], dependencies=bearer, response_model=ModelsResponse,
              responses=ERRORS)
    @requires("admin")
    async def reload_models():
        """Load every model's files again (after retraining into the same directory). All or nothing."""
        try:
            fresh = {name: await asyncio.to_thread(s.load) for name, s in svc.models.items()}
        except GenforgeError as e:
            raise ApiError(422, f"reload failed, still serving the previous models: {e}") from None
        for name, model in fresh.items():
            svc.models[name].model = model  # queued requests keep the model they were drawn for
        return ModelsResponse(models=[model_info(s) for s in svc.models.values()])


def add_page_routes(app: FastAPI) -> None:
    """The web page and its static files."""
    @app.get("/", include_in_schema=False)
    async def page():
        return static_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            raise ApiError(404, f"no file {name!r}")
        return static_file(name)


def decode_for_batcher(model, z: torch.Tensor, y: np.ndarray | None, **controls) -> np.ndarray:
    """The batcher's forward pass: genforge's own decode (inference mode, uint8 rounding)."""
    return decode(model, z, y, **controls)


def static_file(name: str) -> Response:
    data = resources.files("genforge.serve").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers=PAGE_HEADERS)
