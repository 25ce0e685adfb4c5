import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dvclive
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import PipelineError, adapters
from pipeline.config import TrainConfig
from pipeline.train import evaluate, fit
from pipeline.train.loop import lr_at

JOB = Path(__file__).with_name("train_job.py")
ROOT = JOB.parents[1]


def test_schedule_warms_up_then_decays_by_cosine():
    lrs = [lr_at(s, total=100, warmup=10, base=1.0, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def _fit_logged(model, data, tmp_path, epochs: int, **kw) -> list[dict]:
    """`fit` on `data` (train and val), checkpoints in tmp_path/ck, logs in tmp_path/live."""
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, warmup_epochs=1)
    return fit(
        model,
        data,
        data,
        cfg,
        seed=0,
        checkpoint_dir=tmp_path / "ck",
        live_dir=tmp_path / "live",
        **kw,
    )


def test_fit_learns_and_cleans_up(tmp_path, tiny_vit, glyph_data):
    model = adapters.inject(tiny_vit(), "lora", rank=4)
    loss_before, _ = evaluate(model, glyph_data)
    history = _fit_logged(model, glyph_data, tmp_path, epochs=6)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    loss_after, top1 = evaluate(model, glyph_data)
    assert loss_after < 0.8 * loss_before
    assert top1 > 50  # 4 classes: chance is 25%
    assert not (tmp_path / "ck").exists(), "a finished run leaves no checkpoint"
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 5 and "val" in metrics
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_a_run_that_fails_ends_its_log_and_the_next_resumes(
    tmp_path, tiny_vit, glyph_data, monkeypatch
):
    model = adapters.inject(tiny_vit(), "lora", rank=4)
    ended = []
    end = dvclive.Live.end
    monkeypatch.setattr(dvclive.Live, "end", lambda live: (ended.append(1), end(live)))

    def fail_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        _fit_logged(model, glyph_data, tmp_path, epochs=4, on_epoch_end=fail_after_epoch_2)
    assert ended == [1], "the failed run's log was ended"
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 1 and metrics["train"]["loss"] > 0, "both epochs are logged"
    # the lock is free and the checkpoint kept: the next run resumes after epoch 2
    history = _fit_logged(model, glyph_data, tmp_path, epochs=4)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    loss = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(loss.strip().splitlines()) == 5  # a header and the four epochs, each once


def test_a_log_that_cannot_end_does_not_hide_why_the_run_failed(
    tmp_path, tiny_vit, glyph_data, monkeypatch, capsys
):
    def disk_full(live: dvclive.Live) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(dvclive.Live, "end", disk_full)

    def fail(epoch: int) -> None:
        raise RuntimeError("out of memory")

    model = adapters.inject(tiny_vit(), "lora", rank=4)
    with pytest.raises(RuntimeError, match="out of memory"):
        _fit_logged(model, glyph_data, tmp_path, epochs=2, on_epoch_end=fail)
    assert "could not be ended: No space left on device" in capsys.readouterr().out
    with pytest.raises(OSError, match="No space left"):  # a run that succeeds reports it
        _fit_logged(model, glyph_data, tmp_path, epochs=2)


def test_fit_refuses_a_model_with_nothing_to_train(tmp_path, tiny_vit, glyph_data):
    model = tiny_vit().requires_grad_(False)
    with pytest.raises(PipelineError, match="no trainable parameters"):
        fit(model, glyph_data, glyph_data, TrainConfig(epochs=1), seed=0, checkpoint_dir=tmp_path)


def _run(args, **kw):
    return subprocess.run(
        [sys.executable, str(JOB), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path):
    full = _run([str(tmp_path / "ck_full"), str(tmp_path / "full.safetensors")])
    assert full.returncode == 0, full.stderr

    ck = tmp_path / "ck"
    proc = subprocess.Popen(
        [sys.executable, str(JOB), str(ck), str(tmp_path / "x"), "--slow"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (ck / "last.json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((ck / "last.json").read_text())["epoch"] == 1

    resumed = _run([str(ck), str(tmp_path / "resumed.safetensors")])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint of epoch 1/4" in resumed.stderr + resumed.stdout
    a, b = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


class _Crash(Exception):
    pass


def _crash_after_first_epoch(epoch: int) -> None:
    raise _Crash


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path, tiny_vit, glyph_data):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2)
    ck = tmp_path / "ck"
    model = adapters.inject(tiny_vit(), "lora")
    with pytest.raises(_Crash):
        fit(
            model,
            glyph_data,
            glyph_data,
            cfg,
            seed=0,
            checkpoint_dir=ck,
            on_epoch_end=_crash_after_first_epoch,
        )
    assert json.loads((ck / "last.json").read_text())["epoch"] == 1
    # same model, another learning rate: the old state must not be used
    other = TrainConfig(epochs=2, batch_size=32, lr=5e-3)
    history = fit(
        adapters.inject(tiny_vit(), "lora"),
        glyph_data,
        glyph_data,
        other,
        seed=0,
        checkpoint_dir=ck,
    )
    assert [h["epoch"] for h in history] == [1, 2]  # trained from scratch, not resumed


@pytest.mark.parametrize(
    "damage",
    [
        lambda ck: _cut(ck / "last.json"),
        lambda ck: _cut(ck / "last.safetensors"),
        lambda ck: save_file({"model.other": torch.zeros(1)}, ck / "last.safetensors"),
    ],
    ids=["json-truncated", "tensors-truncated", "tensors-of-another-model"],
)
def test_a_damaged_checkpoint_is_set_aside_and_training_starts_over(
    tmp_path, tiny_vit, glyph_data, capsys, damage
):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2)
    ck = tmp_path / "ck"
    with pytest.raises(_Crash):
        fit(
            adapters.inject(tiny_vit(), "lora"),
            glyph_data,
            glyph_data,
            cfg,
            seed=0,
            checkpoint_dir=ck,
            on_epoch_end=_crash_after_first_epoch,
        )
    damage(ck)
    damaged = {f.name: f.read_bytes() for f in ck.iterdir()}
    capsys.readouterr()
    history = fit(
        adapters.inject(tiny_vit(), "lora"), glyph_data, glyph_data, cfg, seed=0, checkpoint_dir=ck
    )
    assert [h["epoch"] for h in history] == [1, 2]  # from scratch
    (aside,) = tmp_path.glob("ck.corrupt-*")
    assert {f.name: f.read_bytes() for f in aside.iterdir()} == damaged, "nothing is lost"
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "damaged checkpoint" in x]
    assert line.startswith(f"{ck}: ") and str(aside) in line


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_second_run_on_a_live_runs_checkpoint_is_refused(tmp_path, tiny_vit, glyph_data):
    ck, cfg = tmp_path / "ck", TrainConfig(epochs=1, batch_size=32)
    job = subprocess.Popen(
        [sys.executable, str(JOB), str(ck), str(tmp_path / "x"), "--slow"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (ck / "last.json").is_file() and time.time() < deadline:
            time.sleep(0.2)
        with pytest.raises(PipelineError, match=rf"^{re.escape(str(ck))}: .*\(pid {job.pid}\)"):
            fit(
                adapters.inject(tiny_vit(), "lora"),
                glyph_data,
                glyph_data,
                cfg,
                seed=0,
                checkpoint_dir=ck,
            )
    finally:
        job.kill()
        job.wait()
    # the kernel drops a dead holder's lock: the next run goes ahead
    history = fit(
        adapters.inject(tiny_vit(), "lora"), glyph_data, glyph_data, cfg, seed=0, checkpoint_dir=ck
    )
    assert len(history) == 1


# a stage as DVC runs it (DVC_STAGE set), started by a parent that is then SIGKILLed
_STAGE = """
import os, time
from pipeline.cli import run_stage
def main(argv):
    print(os.getpid(), flush=True)
    time.sleep(120)
run_stage(main)
"""
_PARENT = f"""
import os, subprocess, sys
subprocess.run([sys.executable, "-c", {_STAGE!r}], env={{**os.environ, "DVC_STAGE": "train"}})
"""


def test_a_stage_dies_with_the_dvc_that_ran_it():
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    stage = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    # the stage holds the pipe's write end too: the pipe ends when the stage has exited
    reader = threading.Thread(target=parent.stdout.read)
    reader.start()
    reader.join(timeout=10)
    try:
        assert not reader.is_alive(), "the stage outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stage, signal.SIGKILL)
        reader.join()
