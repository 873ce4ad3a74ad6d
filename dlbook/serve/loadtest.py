"""A bounded load test of an OpenAI-style completion server (section 6.6).

:func:`load_test` sends ``n_requests`` streaming requests to ``/v1/completions``, at most
``concurrency`` in flight at a time (httpx, asyncio), each with a timeout, and measures per
request the latency (send → last byte) and the time to first token (send → first text
chunk); :func:`sweep` repeats that at several concurrency levels. Nothing here times out
forever and nothing is sent anywhere but ``base_url``.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlbook.config import check_int


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (``0 <= q <= 100``) with linear interpolation between the
    sorted values (numpy's default); ``nan`` for no values.

    Raises:
        ValueError: ``q`` outside ``[0, 100]``.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class RequestResult:
    """One request: ``ok`` (HTTP 200 and a ``[DONE]``), ``latency_s``, ``ttft_s`` (time to
    the first text chunk; ``nan`` if none), ``tokens`` (``usage.completion_tokens`` from the
    final chunk, else the number of text chunks), ``finish_reason`` and ``error``."""

    ok: bool
    latency_s: float
    ttft_s: float = math.nan
    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class LoadResult:
    """The requests of one load level and what they add up to.

    Attributes:
        concurrency: requests in flight at once.
        wall_s: first send → last answer.
        requests: every :class:`RequestResult`, in the order they were issued.
    """

    concurrency: int
    wall_s: float
    requests: list[RequestResult] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.requests)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.requests if r.ok)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens of the successful requests per second of wall time."""
        return self.tokens / self.wall_s

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s

    def latency(self, q: float) -> float:
        """Percentile ``q`` of the successful requests' latency, seconds."""
        return percentile([r.latency_s for r in self.requests if r.ok], q)

    def ttft(self, q: float) -> float:
        """Percentile ``q`` of the time to first token, seconds."""
        return percentile([r.ttft_s for r in self.requests if r.ok and not math.isnan(r.ttft_s)],
                          q)

    def summary(self) -> dict[str, float]:
        """Throughput and p50/p95/p99 latency and time to first token, one flat dict."""
        out = {"concurrency": self.concurrency, "requests": len(self.requests), "ok": self.ok,
               "tokens": self.tokens, "wall_s": self.wall_s, "tokens_per_s": self.tokens_per_s,
               "requests_per_s": self.requests_per_s}
        for q in (50, 95, 99):
            out[f"latency_p{q}_s"] = self.latency(q)
            out[f"ttft_p{q}_s"] = self.ttft(q)
        return out


async def _one(client: Any, url: str, body: dict[str, Any], timeout_s: float) -> RequestResult:
    start = time.perf_counter()
    try:
        return await asyncio.wait_for(_stream(client, url, body, timeout_s, start), timeout_s)
    except Exception as e:  # a timeout, a refused connection: counted, never raised
        return RequestResult(False, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")


async def _stream(client: Any, url: str, body: dict[str, Any], timeout_s: float,
                  start: float) -> RequestResult:
    ttft, chunks, usage, finish, done = math.nan, 0, None, None, False
    async with client.stream("POST", url, json=body, timeout=timeout_s) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            return RequestResult(False, time.perf_counter() - start,
                                 error=f"HTTP {response.status_code}: {text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            payload = json.loads(data)
            if "error" in payload:
                return RequestResult(False, time.perf_counter() - start,
                                     error=payload["error"]["message"])
            usage = payload.get("usage") or usage
            for choice in payload.get("choices", []):
                if choice.get("text"):
                    chunks += 1
                    if math.isnan(ttft):
                        ttft = time.perf_counter() - start
                finish = choice.get("finish_reason") or finish
    tokens = usage["completion_tokens"] if usage else chunks
    return RequestResult(done, time.perf_counter() - start, ttft, tokens, finish,
                         None if done else "the stream ended without [DONE]")


async def _load(base_url: str, concurrency: int, n_requests: int, body: dict[str, Any],
                timeout_s: float) -> LoadResult:
    import httpx

    url = base_url.rstrip("/") + "/v1/completions"
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def bounded() -> RequestResult:
            async with limit:
                return await _one(client, url, body, timeout_s)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(n_requests)))
        wall = time.perf_counter() - start
    return LoadResult(concurrency, wall, list(results))


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh event loop in its own thread (works inside Jupyter, whose
    thread already runs a loop)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e

    thread = threading.Thread(target=target, name="dlbook-loadtest")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def load_test(
    base_url: str,
    *,
    concurrency: int,
    n_requests: int,
    prompt: str = "The capital of France is",
    max_tokens: int = 16,
    timeout_s: float = 60.0,
    extra: dict[str, Any] | None = None,
) -> LoadResult:
    """Send ``n_requests`` streaming completions (greedy; ``extra`` adds body fields), at most
    ``concurrency`` at a time, each bounded by ``timeout_s``; failures are counted, not raised.

    Raises:
        ValueError: ``concurrency``/``n_requests``/``max_tokens`` below 1, ``timeout_s <= 0``.
    """
    check_int("concurrency", concurrency, low=1)
    check_int("n_requests", n_requests, low=1)
    check_int("max_tokens", max_tokens, low=1)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **(extra or {})}
    return _run(_load(base_url, concurrency, n_requests, body, timeout_s))


def sweep(base_url: str, levels: Sequence[int] = (1, 2, 4, 8), *,
          requests_per_level: int | None = None, **kwargs: Any) -> list[LoadResult]:
    """:func:`load_test` at each concurrency level (default: ``2 * level`` requests each, so
    every level has at least two waves); ``kwargs`` go to :func:`load_test`."""
    if not levels:
        raise ValueError("levels is empty")
    return [load_test(base_url, concurrency=c,
                      n_requests=requests_per_level or 2 * c, **kwargs) for c in levels]
