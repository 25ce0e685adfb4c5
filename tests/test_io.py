"""Outputs as the stages write them: atomic, with the modes plain files and folders get."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
WRITE = """
import sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from pipeline.io import atomic_dir, save_tensors, write_json
root = Path(sys.argv[1])
write_json(root / "report.json", {})
save_tensors(root / "adapter.safetensors", {"w": torch.zeros(2)})
with atomic_dir(root / "model") as tmp:
    (tmp / "model.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(tmp / "last.safetensors"))  # safetensors makes 0600
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("umask", "file", "folder"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)]
)
def test_outputs_get_the_modes_the_umask_gives(tmp_path, umask, file, folder):
    """The modes open() and mkdir() give: a fresh output is like one DVC restores."""
    subprocess.run([sys.executable, "-c", WRITE, str(tmp_path)], cwd=ROOT, umask=umask, check=True)
    for written in (
        "report.json",
        "adapter.safetensors",
        "model/model.json",
        "model/last.safetensors",
    ):
        assert _mode(tmp_path / written) == file, written
    assert _mode(tmp_path / "model") == folder
