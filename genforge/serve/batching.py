"""Micro-batching: concurrent requests for one model share one forward pass.

Each request brings its own latents (drawn from its own seed, as ``sample``
draws them) and classes. The batcher's worker takes the waiting requests, up
to ``max_batch`` images or until the oldest has waited ``max_wait`` seconds,
concatenates their latents, calls ``decode`` once in a worker thread and hands
each request its own rows back. Requests that arrive while a pass runs wait
for the next one, so under load batches form without any waiting; the
``max_wait`` pause is taken only when the previous pass merged several
requests (concurrent clients), so a lone client never waits for company that
is not coming. The networks are in eval mode (BatchNorm uses
its running statistics), so a sample's pixels do not depend on the other
samples in its batch.

The queue is bounded (``QueueFull`` -> 503, never an unbounded backlog). A
request whose caller gave up (timeout, client gone) before its batch started
is dropped from the queue; one already in a forward pass finishes with it,
and its rows are thrown away.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests already."""


@dataclass
class Job:
    model: object                 # the model the latents were drawn for (a reload swaps models between jobs)
    z: torch.Tensor               # (n, z_dim)
    y: np.ndarray | None          # (n,) classes, or None for unconditional models
    key: tuple                    # jobs are merged only with jobs of the same key (family controls)
    future: asyncio.Future
    arrived: float = 0.0
    n: int = field(init=False)

    def __post_init__(self):
        self.n = int(self.z.shape[0])


class Batcher:
    """The request queue and forward-pass worker of one served model.

    ``run(model, z, y, **controls)`` makes uint8 images; ``sampling.decode`` in the service. ``max_batch=1``
    turns batching off: one request per forward pass.
    """

    def __init__(self, run: Callable[..., np.ndarray], max_batch: int = 64, max_wait: float = 0.002,
                 max_queue: int = 256, executor: concurrent.futures.Executor | None = None,
                 on_batch: Callable[[int, int], None] | None = None):
        self.run_batch = run
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="genforge-batch")
        self.on_batch = on_batch  # called with (images, requests) for every forward pass (metrics)
        self.jobs: collections.deque[Job] = collections.deque()
        self.last_requests = 1  # requests merged into the previous forward pass
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def depth(self) -> int:
        """Requests waiting for a forward pass."""
        return len(self.jobs)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work(), name="genforge-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        for job in self.jobs:
            job.future.cancel()
        self.jobs.clear()

    async def submit(self, model, z: torch.Tensor, y: np.ndarray | None, key: tuple = ()) -> np.ndarray:
        """Queue one request and wait for its images. Cancelling the caller withdraws the request."""
        if len(self.jobs) >= self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        job = Job(model, z, y, key, loop.create_future(), loop.time())
        self.jobs.append(job)
        self.wake.set()
        return await job.future  # a cancelled await cancels job.future, and the worker skips the job

    def _take(self) -> list[Job]:
        """Pop the next batch: the oldest live job, then the jobs after it that fit and share its model and key."""
        while self.jobs and self.jobs[0].future.done():
            self.jobs.popleft()
        if not self.jobs:
            return []
        first = self.jobs.popleft()
        batch, total, keep = [first], first.n, collections.deque()
        while self.jobs:
            job = self.jobs.popleft()
            if job.future.done():
                continue
            if total + job.n <= self.max_batch and job.model is first.model and job.key == first.key:
                batch.append(job)
                total += job.n
            else:
                keep.append(job)
        self.jobs.extendleft(reversed(keep))
        return batch

    def _waiting_images(self) -> int:
        return sum(j.n for j in self.jobs if not j.future.done())

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.jobs:
                self.wake.clear()
                await self.wake.wait()
            # Wait for company, when there is some: until max_batch images wait or the oldest request has waited
            # max_wait.
            if self.max_batch > 1 and self.max_wait > 0 and self.last_requests > 1:
                deadline = self.jobs[0].arrived + self.max_wait
                while self._waiting_images() < self.max_batch and (left := deadline - loop.time()) > 0:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), left)
                    except TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            self.last_requests = len(batch)
            z = torch.cat([j.z for j in batch])                                      # (sum n, z_dim)
            y = None if batch[0].y is None else np.concatenate([j.y for j in batch])  # (sum n,)
            try:
                run = functools.partial(self.run_batch, batch[0].model, z, y, **dict(batch[0].key))
                x = await loop.run_in_executor(self.executor, run)
            except Exception as e:  # a failed pass fails its requests, not the worker
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            if self.on_batch:
                self.on_batch(len(z), len(batch))
            start = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(x[start:start + job.n])
                start += job.n
