"""Data-parallel training: two gloo processes under torchrun against one process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _launch(tmp: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.launch ddp_job ARGS` in a project whose params say train.nproc."""
    cwd = tmp / f"nproc{nproc}"
    cwd.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["nproc"] = nproc
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    # this checkout's code (not an installed copy) and the job, for every process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.launch", "ddp_job", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    outs = {}
    for nproc in (1, 2):
        outs[nproc] = tmp / f"out{nproc}"
        proc = _launch(tmp, nproc, str(outs[nproc]))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # only rank 0 prints: one line per epoch
        assert proc.stdout.count("job epoch 2/2:") == 1, proc.stdout
    return outs


def test_two_processes_train_what_one_process_trains(runs):
    one = load_file(runs[1] / "adapter-0.safetensors")
    ranks = [load_file(runs[2] / f"adapter-{r}.safetensors") for r in (0, 1)]
    assert one.keys() == ranks[0].keys() == ranks[1].keys()
    for k in one:
        torch.testing.assert_close(ranks[1][k], ranks[0][k], rtol=0, atol=0)  # the same weights
        # gloo sums the two ranks' gradients in another order than one backward: not bit-exact
        torch.testing.assert_close(ranks[0][k], one[k], rtol=0, atol=1e-5)
    assert one["blocks.0.attn.qkv.lora_B"].abs().max() > 0  # LoRA's B starts at zero: it trained


def test_only_rank_0_writes(runs):
    out = runs[2]
    assert json.loads((out / "checkpoints-0.json").read_text()) == [True, True]
    assert json.loads((out / "checkpoints-1.json").read_text()) == [False, False]
    assert not (out / "checkpoint-0").exists(), "a finished run leaves no checkpoint"
    assert (out / "live-0" / "metrics.json").is_file()
    assert not (out / "live-1").exists()


def test_a_batch_the_processes_cannot_share_is_a_one_line_error(tmp_path):
    proc = _launch(tmp_path, 2, str(tmp_path / "out"), "15")
    assert proc.returncode != 0
    # every rank prints the same line; their writes may land on one line of the shared stderr
    errors = set(
        re.findall(r"^error: .*?(?=error: |$)|(?<=\S)error: .*?(?=error: |$)", proc.stderr, re.M)
    )
    assert errors == {
        "error: job: train.batch_size (15) must be divisible by the number of processes (2)"
    }, proc.stderr
