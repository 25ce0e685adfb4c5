import numpy as np
import pytest
from PIL import Image

from pipeline import PipelineError
from pipeline.config import DataConfig
from pipeline.data import (
    ImageSet,
    digits,
    folders,
    glyphs,
    load_split,
    prepare,
    save_split,
    to_tensor,
)
from pipeline.data.arrays import random_split


def test_digits_split_vtab_style_and_seeded():
    parts = prepare.downstream(DataConfig(image_size=16))
    assert {k: len(v) for k, v in parts.items()} == {"train": 800, "val": 200, "test": 797}
    assert parts["train"].images.shape[1:] == (16, 16, 3)
    assert parts["train"].classes == [str(i) for i in range(10)]
    again = prepare.downstream(DataConfig(image_size=16))
    np.testing.assert_array_equal(parts["test"].labels, again["test"].labels)
    other = prepare.downstream(DataConfig(image_size=16, split_seed=1))
    assert not np.array_equal(parts["test"].labels, other["test"].labels)


def test_random_split_is_a_partition():
    parts = random_split(50, [20, 10], seed=3)
    assert [len(p) for p in parts] == [20, 10, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(50))
    with pytest.raises(PipelineError, match=r"not enough samples"):
        random_split(10, [8, 8], seed=0)


def test_digits_pixels_cover_ink_and_background():
    data = digits.load(32)
    assert data.images.dtype == np.uint8 and data.images.shape == (1797, 32, 32, 3)
    assert data.images.min() == 0 and data.images.max() == 255


def test_glyphs_are_deterministic_and_labelled():
    a = glyphs.generate(5, 10, 16, seed=1)
    b = glyphs.generate(5, 10, 16, seed=1)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.bincount(a.labels).tolist() == [10] * 5
    assert not np.array_equal(a.images, glyphs.generate(5, 10, 16, seed=2).images)
    # every glyph has ink: some bright pixels on a dark ground
    assert (a.images.reshape(50, -1).max(1) > 200).all()
    assert np.median(a.images) < 40


def test_split_file_roundtrip(tmp_path):
    data = glyphs.generate(3, 4, 8, seed=0)
    save_split(tmp_path / "s.npz", data)
    back = load_split(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.images, data.images)
    np.testing.assert_array_equal(back.labels, data.labels)
    assert back.classes == data.classes
    with pytest.raises(PipelineError, match=r"run the prepare stage first"):
        load_split(tmp_path / "missing.npz")


def test_to_tensor_normalises_to_unit_range():
    x = to_tensor(np.array([[[[0, 255, 128]]]], np.uint8))
    assert x.shape == (1, 3, 1, 1)
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 255 * 2 - 1], abs=1e-6)


def test_imageset_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        ImageSet(np.zeros((2, 3, 4, 4), np.uint8), np.zeros(2, np.int64), ["a"])


def _write_images(folder, names, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name)


def _vtab_task(root, separate_lists: bool):
    _write_images(root / "images", [f"{i}.png" for i in range(12)])
    lines = [f"images/{i}.png {i % 3}" for i in range(12)]
    if separate_lists:
        (root / "train800.txt").write_text("\n".join(lines[:6]) + "\n")
        (root / "val200.txt").write_text("\n".join(lines[6:8]) + "\n")
    else:
        (root / "train800val200.txt").write_text("\n".join(lines[:8]) + "\n")
    (root / "test.txt").write_text("\n".join(lines[8:]) + "\n")


def test_vtab_folder_with_separate_lists(tmp_path):
    _vtab_task(tmp_path, separate_lists=True)
    parts = prepare.downstream(DataConfig(source="vtab", path=str(tmp_path), image_size=8))
    assert {k: len(v) for k, v in parts.items()} == {"train": 6, "val": 2, "test": 4}
    assert parts["train"].images.shape == (6, 8, 8, 3)
    assert parts["test"].labels.tolist() == [2, 0, 1, 2]
    assert parts["train"].classes == ["0", "1", "2"]


def test_vtab_folder_trainval_is_split(tmp_path):
    _vtab_task(tmp_path, separate_lists=False)
    cfg = DataConfig(source="vtab", path=str(tmp_path), image_size=8, train_size=5)
    parts = prepare.downstream(cfg)
    assert {k: len(v) for k, v in parts.items()} == {"train": 5, "val": 3, "test": 4}


def test_vtab_errors_name_the_problem(tmp_path):
    with pytest.raises(PipelineError, match=r"VTAB-1K task folder '.*nope' does not exist"):
        folders.load_vtab(tmp_path / "nope", 8)
    (tmp_path / "test.txt").write_text("a.png 0\n")
    with pytest.raises(PipelineError, match=r"no train800val200.txt"):
        folders.load_vtab(tmp_path, 8)
    (tmp_path / "train800val200.txt").write_text("a.png\n")
    with pytest.raises(PipelineError, match=r"train800val200.txt:1: expected"):
        folders.load_vtab(tmp_path, 8)
    (tmp_path / "train800val200.txt").write_text("a.png 0\n")
    with pytest.raises(PipelineError, match=r"1 listed images are missing"):
        folders.load_vtab(tmp_path, 8)


def test_imagefolder_tree(tmp_path):
    for cls, n in [("cat", 7), ("dog", 5)]:
        _write_images(tmp_path / cls, [f"{i}.jpg" for i in range(n)])
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = folders.load_imagefolder(tmp_path, 8)
    assert data.classes == ["cat", "dog"]
    assert np.bincount(data.labels).tolist() == [7, 5]
    cfg = DataConfig(
        source="imagefolder", path=str(tmp_path), image_size=8, train_size=6, val_size=2
    )
    parts = prepare.downstream(cfg)
    assert {k: len(v) for k, v in parts.items()} == {"train": 6, "val": 2, "test": 4}


def test_imagefolder_errors(tmp_path):
    with pytest.raises(PipelineError, match=r"data.path must name the ImageFolder root"):
        folders.load_imagefolder(None, 8)
    with pytest.raises(PipelineError, match=r"no class sub-folders"):
        folders.load_imagefolder(tmp_path, 8)
    (tmp_path / "a").mkdir()
    with pytest.raises(PipelineError, match=r"hold no images"):
        folders.load_imagefolder(tmp_path, 8)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"broken.png: cannot read image"):
        folders.load_imagefolder(tmp_path, 8)
