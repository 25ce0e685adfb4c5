"""Dynamic batching: requests for one model wait together, then run as one batch on the model's
worker thread, so the event loop keeps serving while the backend computes. While a batch
computes, the next one gathers.

A batch runs when it is full (`max_batch_size` images), when its first request has waited
`max_queue_delay`, or as soon as it holds as many requests as the last batch did: under a
steady load that many clients are out there, and a lone client's request runs at once instead
of idling for the delay. The wait is a timed condition on the worker thread, precise to tens of
microseconds; the event loop's timers round a 500 us delay up to a millisecond or more.

A request its caller calls `alone` (the dataplane: no other request under way, none lately)
runs on the caller's thread, the event loop's, when the worker is idle and a batch of its size
last computed in under `IN_PLACE_MAX_S`: that saves the two thread hand-offs (waking the
worker, then the event loop), 0.05-0.1 ms of a 1 ms batch-1 request on a 2-core CPU, and
stalls the loop (health checks, other connections) only for what is quick; a run that turns
out slow sends its size back to the queue. The batcher cannot judge
`alone` itself: while one request runs in place the loop reads no other, so one that ran every
lone request in place would only ever see lone requests and never batch again.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass

import numpy as np

from pipeline.runtime import Backend
from serve.metrics import ModelStats

# a batch size runs on the event loop's thread only while its last compute took less: the loop
# answers nothing else meanwhile
IN_PLACE_MAX_S = 0.005


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float


@dataclass
class Result:
    logits: np.ndarray
    queue_seconds: float
    compute_seconds: float


def _settle(answers: list[tuple[asyncio.Future, Result | Exception]]) -> None:
    """A batch's answers, set in one call of the event loop: one wake-up a batch, not one a
    request."""
    for future, answer in answers:
        if future.done():  # the client went away
            continue
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)


class DynamicBatcher:
    """One per model. With `enabled` false every request runs alone (Triton's default
    scheduler), which is the baseline the batching gain is measured against."""

    def __init__(
        self,
        backend: Backend,
        stats: ModelStats,
        max_batch_size: int,
        max_queue_delay_us: int,
        enabled: bool = True,
    ) -> None:
        self.backend = backend
        self.stats = stats
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_us / 1e6
        self.enabled = enabled
        self._pending: collections.deque[_Pending] = collections.deque()
        self._changed = threading.Condition()
        self._closing = False
        self._last_requests = 1  # requests in the last batch: the load's concurrency
        self._idle = False  # the worker waits for a request with none queued
        self._compute_s: dict[int, float] = {}  # images -> the last batch of that size's compute
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._work, name=f"infer-{self.stats.name}", daemon=True
        )
        self._thread.start()

    @property
    def idle(self) -> bool:
        """The worker waits for a request, none queued, and the batcher is not closing. Only
        the event loop's thread queues or closes, so there it stays true until it does."""
        with self._changed:
            return self._idle and not self._pending and not self._closing

    async def infer(self, images: np.ndarray, alone: bool = False) -> Result:
        """Logits for `images` (batch, C, H, W): the request's slice of the batch it ran in.
        `alone`: the caller expects no other request while this one computes."""
        assert self._loop is not None, "start() the batcher first"
        arrived = time.perf_counter()
        # a size not computed yet queues
        quick = self._compute_s.get(len(images), float("inf")) < IN_PLACE_MAX_S
        if alone and quick and self.idle:
            logits, start, compute = self._run(images, 1, in_place=True)
            return Result(logits, start - arrived, compute)
        pending = _Pending(images, self._loop.create_future(), arrived)
        with self._changed:
            self._pending.append(pending)
            self._changed.notify()
        return await pending.future

    async def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _run(
        self, images: np.ndarray, requests: int, in_place: bool = False
    ) -> tuple[np.ndarray, float, float]:
        """Compute one batch and record its time (the size's last, and the statistics):
        (logits, when it started, compute seconds)."""
        start = time.perf_counter()
        logits = self.backend.run(images)
        compute = self._compute_s[len(images)] = time.perf_counter() - start
        self.stats.batch(len(images), requests, compute, in_place=in_place)
        return logits, start, compute

    def _rows(self) -> int:
        return sum(len(p.images) for p in self._pending)

    def _gather(self) -> list[_Pending] | None:
        """The next batch (None once closing with nothing queued); called holding the lock."""
        while not self._pending:
            if self._closing:
                return None
            self._idle = True
            self._changed.wait()
        self._idle = False
        if self.enabled:
            deadline = self._pending[0].enqueued + self.delay
            while self._rows() < self.max_batch_size and len(self._pending) < self._last_requests:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        batch = [self._pending.popleft()]
        rows = len(batch[0].images)
        while (
            self.enabled
            and self._pending
            and rows + len(self._pending[0].images) <= self.max_batch_size
        ):
            rows += len(self._pending[0].images)
            batch.append(self._pending.popleft())
        if self.enabled:
            self._last_requests = len(batch)
        return batch

    def _work(self) -> None:
        assert self._loop is not None
        while True:
            with self._changed:
                batch = self._gather()
            if batch is None:
                return
            live = [p for p in batch if not p.future.done()]  # a client may have gone
            if not live:
                continue
            images = live[0].images if len(live) == 1 else np.concatenate([p.images for p in live])
            try:
                logits, start, compute = self._run(images, len(live))
            except Exception as e:  # the backend failed: each request hears why, the server lives
                self._loop.call_soon_threadsafe(_settle, [(p.future, e) for p in live])
                continue
            answers: list[tuple[asyncio.Future, Result | Exception]] = []
            offset = 0
            for p in live:
                n = len(p.images)
                answers.append(
                    (p.future, Result(logits[offset : offset + n], start - p.enqueued, compute))
                )
                offset += n
            self._loop.call_soon_threadsafe(_settle, answers)
