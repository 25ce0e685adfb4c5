"""The in-process latency rule: windows of calls until the last 3 agree, or a row flagged as
never settled, with the machine's load while it ran. Real calls (sleeps of set lengths, a
spinning child process); no assertion on absolute speed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import psutil
import pytest

from pipeline.runtime.latency import latency_rows, measure, unstable, warn_unstable
from pipeline.runtime.pytorch import TorchBackend

LOAD_FIELDS = ("other_cpu_pct", "loadavg_1m")


def _counted(seconds: float) -> tuple[list[float], Callable[[], None]]:
    calls: list[float] = []

    def call() -> None:
        calls.append(seconds)
        time.sleep(seconds)

    return calls, call


def _alternating(
    per_window: int, short_s: float = 0.001, long_s: float = 0.010
) -> Callable[[], None]:
    """A call that sleeps `short_s` through one window of `per_window` calls, then `long_s`
    through the next, and so on: windows that never agree."""
    count = 0

    def call() -> None:
        nonlocal count
        time.sleep(short_s if (count // per_window) % 2 == 0 else long_s)
        count += 1

    return call


def test_a_constant_call_settles_in_the_first_three_windows_at_todays_cost():
    # a sleep of a constant length: its windows' medians agree to well under 10% even on a
    # shared machine (a woken sleeper is scheduled promptly)
    calls, call = _counted(0.005)
    stats = measure(call, batch_size=4, warmup=2, iterations=15, stability=10, max_windows=8)
    assert stats["stable"] is True
    assert stats["windows"] == 3
    assert len(calls) == 2 + 15, "the stable case times exactly `iterations` calls"
    assert 0 <= stats["spread_pct"] <= 10
    assert 5.0 <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    for field in LOAD_FIELDS:
        assert isinstance(stats[field], float)
    assert 0 <= stats["other_cpu_pct"] <= 100
    assert stats["loadavg_1m"] >= 0


def test_windows_that_never_agree_run_to_max_windows_and_are_unstable():
    # iterations 6: windows of 2 calls, 1 ms then 10 ms: any 3 in a row spread by > 100%
    stats = measure(_alternating(2), 1, warmup=0, iterations=6, stability=10, max_windows=5)
    assert stats["stable"] is False
    assert stats["windows"] == 5
    assert stats["spread_pct"] > 50
    # the figures pool the last 3 windows (1, 10, 1 ms; 2 calls each): 4 short calls, 2 long
    assert 1.0 <= stats["p50_ms"] < 10.0 <= stats["p90_ms"]


def test_few_iterations_still_time_three_windows():
    calls, call = _counted(0.001)
    stats = measure(call, 1, warmup=0, iterations=1, stability=1000, max_windows=3)
    assert stats["windows"] == 3 and len(calls) == 3


def _backend(tiny_vit, per_window: int) -> TorchBackend:
    """A real tiny ViT whose every forward first sleeps as `_alternating` says, 1 ms and 100 ms:
    on a loaded machine the forward itself can take tens of milliseconds, which would bring two
    windows of 1 and 10 ms sleeps within 10 % of each other."""
    model = tiny_vit()
    sleep = _alternating(per_window, long_s=0.1)
    model.register_forward_pre_hook(lambda module, args: sleep())
    return TorchBackend(model, device="cpu")


def test_rows_carry_the_new_fields_and_an_unstable_row_is_flagged(tiny_vit, capsys):
    images = np.zeros((2, 3, 16, 16), np.float32)
    rows = latency_rows(
        _backend(tiny_vit, per_window=2),
        images,
        [1],
        0,
        6,
        10,
        4,
        variant="student-lora",
        transport="in-process",
    )
    (row,) = rows
    assert {"p50_ms", "p99_ms", "throughput", "stable", "spread_pct", "windows"} <= set(row)
    assert set(LOAD_FIELDS) <= set(row)
    assert row["stable"] is False and row["windows"] == 4
    assert unstable(rows) == ["student-lora torch@1"]
    warn_unstable(rows)
    out = capsys.readouterr().out.splitlines()
    assert (
        f"UNSTABLE: spread {row['spread_pct']:.0f}% over 4 windows, other processes used"
        in (out[0])
    )
    assert out[0].startswith("student-lora") and out[0].endswith("% CPU")
    assert out[-1].startswith("WARNING: 1 of 1 latency rows never settled")
    assert "student-lora torch@1" in out[-1]


def test_stable_rows_print_no_flag_and_no_warning(capsys):
    rows = [{"variant": "m", "backend": "torch", "batch_size": 1, "stable": True}]
    rows.append({"backend": "onnxruntime", "batch_size": 8, "stable": True})
    assert unstable(rows) == []
    warn_unstable(rows)
    assert capsys.readouterr().out == ""
    rows[1]["stable"] = False
    assert unstable(rows) == ["onnxruntime@8"], "no model field: the backend alone"


@pytest.fixture
def spinner():
    """A child process burning one CPU until the test ends."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # started and spinning
    yield child
    child.kill()
    child.wait()


def test_a_busy_child_process_shows_in_other_cpu_pct(spinner):
    # the measured call sleeps (this process uses almost no CPU) while the child, always
    # runnable, keeps at least one CPU busy: at least 1/ncpu of the machine's CPU time goes to
    # other processes (more when others share it). Thresholded at half that share, as
    # /proc/stat counts in 10 ms ticks over this ~0.5 s measurement.
    stats = measure(
        lambda: time.sleep(0.01), 1, warmup=0, iterations=45, stability=1000, max_windows=3
    )
    assert spinner.poll() is None, "the child was spinning throughout"
    share = 100 / psutil.cpu_count()
    assert stats["other_cpu_pct"] > share / 2
    assert stats["other_cpu_pct"] <= 100
