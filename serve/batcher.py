"""Dynamic batching: requests for one model wait together up to `max_batch_size` images or
`max_queue_delay`, then run as one batch on a worker thread, so the event loop keeps serving
while the backend computes. While a batch computes, the next one gathers."""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.runtime import Backend
from serve.metrics import ModelStats


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
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{stats.name}")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def infer(self, images: np.ndarray) -> Result:
        """Logits for `images` (batch, C, H, W): the request's slice of the batch it ran in."""
        loop = asyncio.get_running_loop()
        pending = _Pending(images, loop.create_future(), time.perf_counter())
        self._pending.append(pending)
        self._idle.clear()
        self._arrived.set()
        return await pending.future

    async def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _rows(self) -> int:
        return sum(len(p.images) for p in self._pending)

    async def _gather(self) -> list[_Pending]:
        """The next batch: wait for a first request, then (batching on) for more until the
        batch is full or the first request has waited max_queue_delay."""
        while not self._pending:
            self._idle.set()
            self._arrived.clear()
            await self._arrived.wait()
        if self.enabled:
            deadline = self._pending[0].enqueued + self.delay
            while self._rows() < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
        batch = [self._pending.popleft()]
        rows = len(batch[0].images)
        while (
            self.enabled
            and self._pending
            and rows + len(self._pending[0].images) <= self.max_batch_size
        ):
            rows += len(self._pending[0].images)
            batch.append(self._pending.popleft())
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [p for p in batch if not p.future.done()]  # a client may have gone
            if not live:
                continue
            images = live[0].images if len(live) == 1 else np.concatenate([p.images for p in live])
            start = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self._executor, self.backend.run, images)
            except Exception as e:  # the backend failed: each request hears why, the server lives
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            compute = time.perf_counter() - start
            self.stats.batch(len(images), len(live), compute)
            offset = 0
            for p in live:
                n = len(p.images)
                if not p.future.done():
                    p.future.set_result(
                        Result(logits[offset : offset + n], start - p.enqueued, compute)
                    )
                offset += n
