"""Serving text models: one decoding thread per model with continuous batching, plain and streamed
(server-sent events) responses, and token-counted rate limits.

``TextWorker`` runs :func:`genforge.generation.text.run` in its own thread for as long as the server lives.
Requests become rows (one per sample, each with its own random stream from the request's seed, exactly as
``generate_text`` makes them); a row that arrives while others decode joins the batch at the next token
(continuous batching, up to ``max_rows`` rows), and leaves it when it ends. A row's tokens do not depend on
the batch it runs in (``models/lm.py``), so a seed gives the same text here as in ``genforge sample``.
``max_rows=1`` turns batching off: one row decodes at a time.

A streamed response sends ``data: {"index": i, "text": "..."}`` events as text is made, one ``finish`` event
per sample, then a ``done`` event with the usage and ``data: [DONE]``. A client that hangs up ends its rows
before their next token (nothing keeps decoding for nobody), and the stream's end is audited as a line of its
own (``"event": "stream_end"``, status 499, the tokens sent so far).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import deque

from genforge.generation.text import Row, TextSample, run
from genforge.serve.batching import QueueFull  # the image batcher's: a full queue is one error, whatever waits


class TextWorker:
    """The decoding thread of one served text model."""

    def __init__(self, max_rows: int = 16, max_queue: int = 256, on_step=None):
        self.max_rows, self.max_queue = max_rows, max_queue
        self.queue: deque[tuple[object, Row]] = deque()   # (model, row) waiting to join a batch
        self.cond = threading.Condition()
        self.stopping = False
        self.on_step = on_step  # called with the number of rows in each step (metrics)
        self.thread = threading.Thread(target=self._work, name="genforge-text", daemon=True)
        self.model = None
        self.inflight: list[Row] = []  # the rows of the current run (failed with it if it fails)
        self.active = 0                # rows decoding now
        self.finished: dict[str, int] = {}  # rows ended, by finish reason ("length", "stop", "cancelled", ...)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def depth(self) -> int:
        return len(self.queue)

    def submit(self, model, rows: list[Row]) -> None:
        """Queue a request's rows; ``QueueFull`` when the queue cannot take them all (``max_queue`` rows)."""
        with self.cond:
            if len(self.queue) + len(rows) > self.max_queue:
                raise QueueFull
            self.queue.extend((model, r) for r in rows)
            self.cond.notify_all()

    def _more(self, active: int) -> list[Row]:
        """The rows that join the batch now: as many as fit, of the model being decoded. With nothing
        decoding, wait for a request; an empty list ends the run (stopping, or the next rows are for a
        reloaded model, which starts a run of its own)."""
        with self.cond:
            self.active = active
            while not active and not self.queue and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return []
            if not active and self.queue and self.queue[0][0] is not self.model:
                return []  # the model was reloaded: end this run, the next starts with the new one
            taken = []
            while self.queue and active + len(taken) < self.max_rows and self.queue[0][0] is self.model:
                taken.append(self.queue.popleft()[1])
            self.inflight += taken
            self.active = active + len(taken)
        for row in taken:
            row.on_done = self._counted(row, row.on_done)
        if self.on_step is not None:
            self.on_step(active + len(taken))
        return taken

    def _counted(self, row: Row, on_done):
        """``on_done`` that first counts the row's finish reason (what the tests and metrics read) and forgets
        the row (a server's run lasts as long as the server: a finished row must not stay in ``inflight``)."""
        def done(sample):
            reason = getattr(sample, "finish_reason", "error")
            with self.cond:
                self.finished[reason] = self.finished.get(reason, 0) + 1
                self.inflight = [r for r in self.inflight if r is not row]  # by identity: rows hold tensors
            if on_done is not None:
                on_done(sample)
        return done

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                self.model = self.queue[0][0]
                self.inflight = []
            try:
                run(self.model, [], more=self._more, keep=False)
            except Exception as e:  # a failed run fails the rows it held (their on_done), not the server
                self._fail(e)
            self.active = 0

    def _fail(self, error: Exception) -> None:
        with self.cond:
            rows = self.inflight + [r for _, r in self.queue]
            self.queue.clear()
            self.inflight = []
        for r in rows:
            if r.on_done is not None:
                r.on_done(error)


class Exchange:
    """One request's rows seen from the event loop: text pieces and finished samples arrive on an asyncio queue
    (the worker thread hands them over with ``call_soon_threadsafe``)."""

    def __init__(self, rows: list[Row]):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.rows = rows
        self.samples: list[TextSample | None] = [None] * len(rows)
        self.sent_tokens = 0
        for i, row in enumerate(rows):
            row.cancelled = self.cancel
            row.on_text = (lambda i: lambda piece: self._put(("text", i, piece)))(i)
            row.on_done = (lambda i: lambda sample: self._put(("done", i, sample)))(i)

    def _put(self, event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def finished(self) -> bool:
        return all(s is not None for s in self.samples)

    async def next_event(self):
        kind, i, value = await self.events.get()
        if kind == "done":
            if isinstance(value, Exception):
                raise value
            if self.samples[i] is not None:  # told twice (a failed run fails every row it held)
                return kind, i, self.samples[i]
            self.samples[i] = value
            self.sent_tokens += len(value.tokens)
        return kind, i, value

    async def wait_all(self) -> list[TextSample]:
        while not self.finished():
            await self.next_event()
        return list(self.samples)


def text_hashes(samples) -> list[str]:
    return [hashlib.sha256(s.text.encode("utf-8")).hexdigest() for s in samples]


def sse(payload) -> bytes:
    """One server-sent event (a JSON object, or the literal [DONE])."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode("utf-8")


def usage(samples, rows) -> dict:
    return {"prompt_tokens": sum(r.prompt_tokens for r in rows),
            "completion_tokens": sum(len(s.tokens) for s in samples if s is not None)}


def text_body(name: str, seed: int, controls: dict, notes: list[str], samples, rows) -> dict:
    """The JSON body of a text response (not streamed)."""
    return {"model": name, "seed": seed, "n": len(samples), "controls": controls, "notes": notes,
            "texts": [s.text for s in samples], "finish_reasons": [s.finish_reason for s in samples],
            "tokens": [s.tokens for s in samples], "usage": usage(samples, rows),
            "texts_sha256": text_hashes(samples)}
