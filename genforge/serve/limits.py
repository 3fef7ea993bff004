"""Limits that keep one client from hurting the others: per-key token buckets and a bounded body read.

``RateLimiter`` gives each key a token bucket (Turner 1986; the usual
``rate``/``burst`` pair): a request takes one token, tokens come back at
``rate`` per second up to ``burst``; an empty bucket means 429 with the
seconds until the next token. ``read_body`` reads a request body with a size
cap (413) and a deadline (408 for a client that sends too slowly), so a slow
or huge upload holds no more than the cap in memory and no longer than the
deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict


class RateLimiter:
    """One token bucket per key id; at most ``max_keys`` buckets (the least recently used one goes)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last refill)

    def take(self, key: str, now: float | None = None, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key`` (one request; or, for text, the tokens it may generate): 0 when
        allowed, else the seconds to wait until that many are back (inf: more than the bucket ever holds)."""
        if self.rate <= 0:  # rate 0: no limit
            return 0.0
        if cost > self.burst:
            return math.inf
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return wait


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


async def read_body(receive, limit: int, timeout: float) -> bytes:
    """Read an ASGI request body: at most ``limit`` bytes, within ``timeout`` seconds in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks, size = [], 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise BodyTimeout
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            raise BodyTimeout from None
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
