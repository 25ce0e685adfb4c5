"""The dynamic batcher's schedule, on a backend whose compute time the test sets: a lone
request runs at once, a steady load batches, the delay bounds every wait, a request alone runs
in place while the worker is idle."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from serve.batcher import IN_PLACE_MAX_S, DynamicBatcher
from serve.metrics import Metrics, ModelStats


class _Sleepy:
    """Logits = per-image sums, after `seconds` of (sleeping) compute; records batch sizes."""

    name = input_name = output_name = "x"
    input_shape = (1, 2, 2)
    num_classes = 1
    on_gpu = False

    def __init__(self, seconds: float, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.batches: list[int] = []
        self.threads: list[str] = []  # the thread each batch ran on

    def run(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("device lost")
        self.batches.append(len(images))
        self.threads.append(threading.current_thread().name)
        return images.reshape(len(images), -1).sum(1, keepdims=True)


def _batcher(backend: _Sleepy, delay_us: int, max_batch: int = 64) -> DynamicBatcher:
    return DynamicBatcher(backend, ModelStats("m", Metrics(max_batch)), max_batch, delay_us)


def _images(n: int, value: float) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, np.float32)


def test_a_lone_client_never_waits_for_the_delay():
    async def main() -> list[float]:
        backend = _Sleepy(0.002)
        batcher = _batcher(backend, delay_us=200_000)
        batcher.start()
        waits = []
        for i in range(5):  # one client, one request at a time
            result = await batcher.infer(_images(1, i))
            assert result.logits[0, 0] == 4 * i
            waits.append(result.queue_seconds)
        await batcher.close()
        return waits

    waits = asyncio.run(main())
    assert max(waits) < 0.05, f"queued {max(waits) * 1e3:.1f} ms against a 200 ms delay"


def test_a_steady_load_batches_and_each_request_gets_its_own_rows():
    async def main(backend: _Sleepy) -> None:
        batcher = _batcher(backend, delay_us=100_000)
        batcher.start()

        async def client(c: int) -> None:  # closed loop: the next request when one returns
            for i in range(6):
                n = 1 + (c + i) % 3
                result = await batcher.infer(_images(n, 10 * c + i))
                np.testing.assert_array_equal(result.logits[:, 0], [4 * (10 * c + i)] * n)

        await asyncio.gather(*(client(c) for c in range(8)))
        await batcher.close()

    backend = _Sleepy(0.01)
    asyncio.run(main(backend))
    assert sum(backend.batches) == sum(1 + (c + i) % 3 for c in range(8) for i in range(6))
    assert len(backend.batches) < 8 * 6 / 3, f"batches of {backend.batches}"
    assert max(backend.batches) <= 64


def test_the_delay_bounds_the_wait_for_clients_that_do_not_come_back():
    async def main() -> float:
        backend = _Sleepy(0.005)
        batcher = _batcher(backend, delay_us=30_000)
        batcher.start()
        await asyncio.gather(*(batcher.infer(_images(1, i)) for i in range(4)))  # a batch of 4
        start = time.perf_counter()
        await batcher.infer(_images(1, 0))  # then one alone: it waits for 3 more, at most 30 ms
        took = time.perf_counter() - start
        await batcher.close()
        return took

    took = asyncio.run(main())
    assert 0.025 < took < 0.2, f"{took * 1e3:.1f} ms"


def test_close_finishes_what_is_queued_and_a_backend_failure_reaches_every_request():
    async def main() -> None:
        backend = _Sleepy(0.02)
        batcher = _batcher(backend, delay_us=1000)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.infer(_images(1, i))) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        assert [t.result().logits[0, 0] for t in tasks] == [0, 4, 8, 12, 16]

        failing = _batcher(_Sleepy(0.001, fail=True), delay_us=1000)
        failing.start()
        results = await asyncio.gather(
            *(failing.infer(_images(1, i)) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) and "device lost" in str(r) for r in results)
        assert (await asyncio.gather(failing.close())) == [None]

    asyncio.run(main())


def test_without_batching_every_request_runs_alone():
    async def main(backend: _Sleepy) -> None:
        batcher = DynamicBatcher(backend, ModelStats("m", Metrics(8)), 8, 100_000, enabled=False)
        batcher.start()
        await asyncio.gather(*(batcher.infer(_images(2, i)) for i in range(4)))
        await batcher.close()

    backend = _Sleepy(0.005)
    asyncio.run(main(backend))
    assert backend.batches == [2, 2, 2, 2]


def test_a_request_alone_runs_on_the_callers_thread_while_the_worker_is_idle_if_quick():
    """In place only when the caller says alone, the worker is idle, and a batch of the
    request's size last computed in under `IN_PLACE_MAX_S`."""
    caller = threading.current_thread().name

    async def main(backend: _Sleepy) -> None:
        batcher = _batcher(backend, delay_us=1000)
        batcher.start()

        async def alone(i: int) -> str:  # the thread a request alone ran on, once idle
            while not batcher.idle:
                await asyncio.sleep(0.001)
            result = await batcher.infer(_images(2, i), alone=True)
            np.testing.assert_array_equal(result.logits[:, 0], [4 * i, 4 * i])
            return backend.threads[-1]

        assert await alone(1) == "infer-m"  # its size's compute time is not known yet
        assert await alone(2) == caller
        backend.seconds = 0.05
        queued = asyncio.ensure_future(batcher.infer(_images(2, 3)))
        await asyncio.sleep(0)  # it queues: the worker is no longer idle
        assert (await batcher.infer(_images(2, 4), alone=True)).logits[0, 0] == 16
        assert backend.threads[-1] == "infer-m"  # so the one alone queued too
        await queued
        backend.seconds = 0
        await batcher.infer(_images(2, 5))  # quick again
        backend.seconds = 2 * IN_PLACE_MAX_S
        assert await alone(6) == caller  # this size was quick when it last ran
        assert await alone(7) == "infer-m"  # and now it is not
        assert await alone(8) == "infer-m"
        await batcher.close()
        assert not batcher.idle

    asyncio.run(main(_Sleepy(0)))
