"""A batching inference engine (section 6.6, serving): many clients, one model, one worker.

A language model on a server answers many requests at once. Run one by one, each decoding step
multiplies a ``(1, C)`` row by every weight matrix, reading all the weights to use them once;
when that reading dominates (a small batch on a GPU), the same step for ``B`` rows costs little
more. :class:`BatchingEngine` therefore groups the requests
that arrive while a batch runs (or within ``max_wait_s`` of the first one), up to ``max_batch``,
into one **wave**:

* the prompts are **left-padded** to one length and prefilled together, with a key-padding mask
  (``pad_mask`` of :meth:`dlbook.nn.GPT.features`) so that each row is computed as if alone;
* the wave then decodes one token per row per step with the model's key/value cache;
* a row that finishes (its ``max_new_tokens``, a stop token, or a client that cancelled) leaves
  the wave at once: its row is removed from the batch and from the cache
  (:meth:`dlbook.nn.attention.KVCache.select_rows`), so the wave is **compacted**, never padded with
  finished rows. New requests wait for the next wave (static batching per wave, not the
  continuous batching of vLLM, which also admits new rows into a running wave).

Tokens are chosen with :func:`dlbook.decoding.sample_next` (greedy at temperature 0, else
temperature and top-p sampling) and stream to the client through a :class:`TokenStream`, which is
iterable from a thread (``for token in stream``) and from asyncio (``async for token in
stream``). A model error ends every stream of its wave with ``finish_reason == "error"``; the
worker keeps serving later requests.

Example:
    >>> with BatchingEngine(model, max_batch=8) as engine:          # doctest: +SKIP
    ...     stream = engine.submit(GenerationRequest((1, 2, 3), max_new_tokens=5))
    ...     tokens = list(stream)                                   # blocks until done
"""

from __future__ import annotations

import asyncio
import numbers
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dlbook.decoding import check_sampling, last_logits, sample_next

__all__ = ["BatchingEngine", "EngineBusy", "GenerationRequest", "TokenStream"]

FINISH_REASONS = ("length", "stop", "cancelled", "error")


class EngineBusy(ValueError):
    """The engine's queue is full: the request was refused (a server answers 503/429)."""


def _int_tuple(name: str, values: Any) -> tuple[int, ...]:
    values = tuple(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise ValueError(f"{name} must be integer token ids, got {bad[:5]!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation job.

    Attributes:
        prompt_ids: the prompt's token ids (non-empty).
        max_new_tokens: most tokens to generate (``>= 1``).
        temperature: ``0`` greedy (the default), else the sampling temperature.
        top_p: nucleus sampling threshold in ``(0, 1]`` (``None``: off).
        stop_tokens: ids that end the generation; the stop token itself is not streamed.
        seed: seed of this request's own random generator, in ``[0, 2**63)`` (reproducible
            sampling, up to the float rounding by which a row's logits in a batch may differ
            from its logits alone); ``None``: torch's global generator.

    Raises:
        ValueError: an empty prompt, non-integer ids, ``max_new_tokens < 1``, bad sampling
            settings or a seed outside ``[0, 2**63)``. Ids are checked against the model's
            vocabulary by :meth:`BatchingEngine.submit`.
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    stop_tokens: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        prompt = _int_tuple("prompt_ids", self.prompt_ids)
        if not prompt:
            raise ValueError("prompt_ids must not be empty (give at least one token)")
        object.__setattr__(self, "prompt_ids", prompt)
        object.__setattr__(self, "stop_tokens", _int_tuple("stop_tokens", self.stop_tokens))
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, numbers.Real):
            raise ValueError(f"temperature must be a number, got {self.temperature!r}")
        check_sampling(float(self.temperature), None, self.top_p)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
        ):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must lie in [0, 2**63), got {self.seed}")


class TokenStream:
    """The tokens of one request, as they are produced (what :meth:`BatchingEngine.submit`
    returns).

    Iterate it (``for token in stream``, blocking) or, under asyncio, ``async for token in
    stream``; each iteration yields every token from the first, and ends when the request has
    finished. :attr:`finish_reason` is then ``"length"`` (``max_new_tokens`` reached),
    ``"stop"`` (a stop token, not yielded), ``"cancelled"`` (:meth:`cancel`, or the engine
    closed) or ``"error"`` (the model raised; :attr:`error` holds the message).
    """

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.prompt_tokens = len(request.prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._tokens: list[int] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancel_requested = False

    # ---------------------------------------------------------------- consumer side

    @property
    def done(self) -> bool:
        """Whether the request has finished (no more tokens will come)."""
        return self.finish_reason is not None

    @property
    def tokens(self) -> list[int]:
        """The tokens produced so far (a copy)."""
        with self._cond:
            return list(self._tokens)

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            with self._cond:
                while i >= len(self._tokens) and self.finish_reason is None:
                    self._cond.wait()
                if i >= len(self._tokens) or self._cancel_requested:
                    return
                token = self._tokens[i]
            i += 1
            yield token

    async def __aiter__(self) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        i = 0
        while True:
            event = asyncio.Event()
            with self._cond:
                if self._cancel_requested:
                    return
                if i < len(self._tokens):
                    token = self._tokens[i]
                elif self.finish_reason is not None:
                    return
                else:  # registered under the lock: a token pushed after this wakes us
                    self._waiters.append((loop, event))
                    token = None
            if token is None:
                await event.wait()
                continue
            i += 1
            yield token

    def result(self, timeout: float | None = None) -> list[int]:
        """Block until the request finishes (at most ``timeout`` seconds) and return all its
        tokens. Raises ``TimeoutError`` if it has not finished in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.finish_reason is not None, timeout):
                raise TimeoutError(f"the request did not finish within {timeout} s")
            return list(self._tokens)

    def cancel(self) -> None:
        """Give up on the request (the client went away): the stream ends at once with
        ``"cancelled"`` (unless it had already finished), iterations stop without yielding
        the tokens still buffered, and the engine drops its row at the next step."""
        self._cancel_requested = True
        self._finish("cancelled")

    # ---------------------------------------------------------------- engine side

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel_requested

    def _wake(self) -> None:  # call with the lock held
        self._cond.notify_all()
        for loop, event in self._waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop is closed: nobody is waiting any more
                pass
        self._waiters.clear()

    def _push(self, token: int) -> None:
        with self._cond:
            if self.finish_reason is not None:
                return
            self._tokens.append(token)
            self.completion_tokens += 1
            self._wake()

    def _finish(self, reason: str, error: str | None = None) -> None:
        with self._cond:
            if self.finish_reason is not None:
                return
            self.error = error
            self.finish_reason = reason
            self._wake()

    def __repr__(self) -> str:
        return (
            f"TokenStream(prompt_tokens={self.prompt_tokens}, completion_tokens="
            f"{self.completion_tokens}, finish_reason={self.finish_reason!r})"
        )


class _Row:
    """One request inside a running wave."""

    def __init__(self, stream: TokenStream, device: torch.device) -> None:
        self.stream = stream
        r = stream.request
        self.stops = set(r.stop_tokens)
        self.generator = None
        if r.seed is not None and r.temperature > 0:
            self.generator = torch.Generator(device=device).manual_seed(int(r.seed))


class BatchingEngine:
    """Serve generation requests for a decoder with dynamic batching (see the module notes).

    Args:
        model: a decoder such as :class:`dlbook.nn.GPT`: ``config.vocab_size`` and
            ``config.block_size``, ``new_cache(max_len)``, and ``features(idx, cache,
            pad_mask=...)`` + ``lm_head`` (or ``forward(idx, cache=..., pad_mask=...)``
            returning ``(logits, loss)``). It is put in eval mode and used only by the
            worker thread; do not train it while the engine runs.
        max_batch: most requests decoded together in one wave.
        max_wait_s: how long the worker waits, after the first request of a wave arrives,
            for more to join it (a little latency traded for bigger batches).
        max_queue: most requests waiting for a wave; beyond it :meth:`submit` raises
            :class:`EngineBusy` (default ``8 * max_batch``).

    Use it as a context manager (``with BatchingEngine(model) as engine:``) or call
    :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        max_queue: int | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not (isinstance(max_wait_s, (int, float)) and 0 <= max_wait_s < float("inf")):
            raise ValueError(f"max_wait_s must be a finite number >= 0, got {max_wait_s!r}")
        max_queue = 8 * max_batch if max_queue is None else max_queue
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "block_size") or not hasattr(
            config, "vocab_size"
        ):
            raise ValueError("model needs config.block_size and config.vocab_size (a dlbook GPT)")
        self.model = model
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, float(max_wait_s), max_queue
        self.vocab_size, self.block_size = int(config.vocab_size), int(config.block_size)
        try:
            self.device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            self.device = torch.device("cpu")
        self._pending: deque[TokenStream] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._batches = self._rows = self._errors = 0

    # ---------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the background worker thread (a daemon). Starting twice is a no-op."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this engine was closed; make a new one")
            if self._thread is not None:
                return
            self.model.eval()
            self._thread = threading.Thread(target=self._work, name="dlbook-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker (waiting at most ``timeout`` s for its current step); every stream not
        yet finished ends with ``"cancelled"``. Closing twice is a no-op."""
        with self._cond:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for stream in pending:
            stream._finish("cancelled")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> BatchingEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue ``request`` and return its :class:`TokenStream` (thread-safe; never blocks).

        Raises:
            ValueError: ids outside ``[0, vocab_size)``, or ``len(prompt_ids) +
                max_new_tokens > block_size`` (the model cannot see that many positions).
            EngineBusy: ``max_queue`` requests are already waiting (a ``ValueError``).
            RuntimeError: the engine is closed.
        """
        if not isinstance(request, GenerationRequest):
            raise ValueError(f"expected a GenerationRequest, got {type(request).__name__}")
        v = self.vocab_size
        for name, ids in (("prompt_ids", request.prompt_ids), ("stop_tokens", request.stop_tokens)):
            bad = [t for t in ids if not 0 <= t < v]
            if bad:
                raise ValueError(f"{name} must lie in [0, {v}) (the vocabulary), got {bad[:5]}")
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.block_size:
            raise ValueError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_new_tokens "
                f"({request.max_new_tokens}) = {total} exceeds the model's block_size="
                f"{self.block_size}; shorten the prompt or ask for fewer tokens"
            )
        stream = TokenStream(request)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._pending) >= self.max_queue:  # streams cancelled while waiting: gone
                self._pending = deque(s for s in self._pending if not (s.cancelled or s.done))
            if len(self._pending) >= self.max_queue:
                raise EngineBusy(
                    f"the engine is busy: {len(self._pending)} requests are already queued "
                    f"(max_queue={self.max_queue}); try again later"
                )
            self._pending.append(stream)
            self._cond.notify_all()
        return stream

    @property
    def stats(self) -> dict[str, Any]:
        """``{"batches": waves run, "mean_batch_size": mean rows per wave at its start,
        "requests": requests that entered a wave, "pending": waiting now, "errors": waves
        that failed}``."""
        with self._cond:
            return {
                "batches": self._batches,
                "mean_batch_size": self._rows / self._batches if self._batches else 0.0,
                "requests": self._rows,
                "pending": len(self._pending),
                "errors": self._errors,
            }

    # ---------------------------------------------------------------- worker

    def _next_wave(self) -> list[TokenStream] | None:
        """Wait for requests and take a wave of them (``None``: the engine is closing)."""
        with self._cond:
            while not self._closed and not self._pending:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while not self._closed and len(self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            wave: list[TokenStream] = []
            kept: deque[TokenStream] = deque()
            longest_prompt = longest_new = 0
            while self._pending:
                stream = self._pending.popleft()
                if stream.cancelled or stream.done:
                    continue
                r = stream.request
                p = max(longest_prompt, len(r.prompt_ids))
                n = max(longest_new, r.max_new_tokens)
                # Left padding makes every row as long as the longest prompt; the wave's cache
                # must hold that plus the most new tokens (each request alone fits, see submit).
                if len(wave) < self.max_batch and p + n <= self.block_size:
                    wave.append(stream)
                    longest_prompt, longest_new = p, n
                else:
                    kept.append(stream)
            self._pending.extendleft(reversed(kept))
            if wave:
                self._batches += 1
                self._rows += len(wave)
            return wave

    def _work(self) -> None:
        while True:
            try:
                wave = self._next_wave()
            except Exception:  # pragma: no cover - a bug here must not kill the worker
                continue
            if wave is None:
                return
            if not wave:
                continue
            try:
                with torch.inference_mode():
                    self._run_wave(wave)
            except Exception as e:  # the model failed: end this wave, keep serving
                with self._cond:
                    self._errors += 1
                for stream in wave:
                    stream._finish("error", f"{type(e).__name__}: {e}")

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """One token per row from ``logits (B, V)``: greedy rows in one arg-max, sampled rows
        one by one with their own settings (and generator)."""
        out: list[int] = [0] * len(rows)
        greedy = [i for i, row in enumerate(rows) if row.stream.request.temperature == 0]
        if greedy:
            picked = sample_next(logits[greedy], 0.0)[:, 0].tolist()
            for i, t in zip(greedy, picked, strict=True):
                out[i] = int(t)
        for i, row in enumerate(rows):
            r = row.stream.request
            if r.temperature != 0:
                t = sample_next(logits[i : i + 1], float(r.temperature), None, r.top_p,
                                row.generator)
                out[i] = int(t.item())
        return out

    def _run_wave(self, wave: list[TokenStream]) -> None:
        device = self.device
        rows: list[_Row] = []
        for s in wave:  # one row's bad settings end that request only, not its whole wave
            try:
                rows.append(_Row(s, device))
            except Exception as e:
                s._finish("error", f"{type(e).__name__}: {e}")
        if not rows:
            return
        wave = [row.stream for row in rows]
        length = max(len(s.request.prompt_ids) for s in wave)
        idx = torch.zeros(len(wave), length, dtype=torch.long)
        pad_mask = torch.zeros(len(wave), length, dtype=torch.bool)
        for i, s in enumerate(wave):  # left padding: every row ends at the last column
            p = s.request.prompt_ids
            idx[i, length - len(p) :] = torch.tensor(p, dtype=torch.long)
            pad_mask[i, length - len(p) :] = True
        idx, pad_mask = idx.to(device), pad_mask.to(device)
        max_new = max(s.request.max_new_tokens for s in wave)
        cache = self.model.new_cache(min(self.block_size, length + max_new))
        logits = last_logits(self.model, idx, cache, pad_mask)  # prefill: (B, V)
        while True:
            if self._closed:
                for row in rows:
                    row.stream._finish("cancelled")
                return
            tokens = self._choose(logits, rows)
            keep: list[int] = []
            for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
                stream = row.stream
                if stream.cancelled or stream.done:
                    stream._finish("cancelled")
                    continue
                if token in row.stops:
                    stream._finish("stop")
                    continue
                stream._push(token)
                if stream.completion_tokens >= stream.request.max_new_tokens:
                    stream._finish("length")
                    continue
                keep.append(i)
            if not keep:
                return
            if len(keep) < len(rows):  # compact: drop finished rows from the batch and cache
                cache.select_rows(torch.tensor(keep, dtype=torch.long, device=device))
                rows = [rows[i] for i in keep]
                tokens = [tokens[i] for i in keep]
            nxt = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
            logits = last_logits(self.model, nxt, cache)
