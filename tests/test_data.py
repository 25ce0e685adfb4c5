from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import PipelineError
from pipeline.config import ConfigError, DataConfig, parse_params
from pipeline.data import (
    ImageSet,
    digits,
    folders,
    glyphs,
    load_split,
    loader,
    prepare,
    reseed,
    save_split,
    to_tensor,
)
from pipeline.data.arrays import allocate, random_split, stratified_split
from pipeline.data.transforms import translate

ROOT = Path(__file__).resolve().parents[1]


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


def test_glyphs_are_block_counts_like_the_digits():
    # at image_size == grid nothing is interpolated: the 17 grey levels of 0..16 counts
    counts = glyphs.generate(6, 20, 8, seed=0, grid=8).images[..., 0] / 255 * 16
    np.testing.assert_allclose(counts, counts.round(), atol=0.04)
    assert len(np.unique(counts.round())) == 17
    # bright strokes on a dark ground, as much ink as a handwritten digit within a factor of 2
    ink, digit_ink = counts.mean(), digits.load(8).images[..., 0].mean() / 255 * 16
    assert digit_ink / 2 < ink < digit_ink * 2


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


def test_translate_moves_the_image_and_blackens_what_it_uncovers():
    image = np.arange(1, 17, dtype=np.uint8).reshape(4, 4, 1)
    moved = translate(image, 1, -2)  # one down, two left
    assert moved[1:, :2, 0].tolist() == image[:3, 2:, 0].tolist()
    assert not moved[0].any() and not moved[:, 2:].any()
    assert np.array_equal(translate(image, 0, 0), image)


def _epoch(batches, seed: int) -> np.ndarray:
    reseed(batches, seed)
    return np.concatenate([x.numpy() for x, _ in batches])


def test_shifted_batches_depend_on_the_pass_seed_alone_not_on_the_shards(glyph_data):
    one = loader(glyph_data, 8, shuffle=True, shift=2)
    x = _epoch(one, 5)
    again = _epoch(loader(glyph_data, 8, shuffle=True, shift=2), 5)
    assert np.array_equal(x, again), "a resumed pass moves each image as before"
    assert not np.array_equal(x, _epoch(one, 6)), "another epoch, other moves"
    shards = [loader(glyph_data, 8, shuffle=True, shard=(r, 2), shift=2) for r in (0, 1)]
    parts = [_epoch(s, 5) for s in shards]
    # rank r holds the r-th half of each batch of 8: interleave the halves back
    halves = [np.split(p, len(p) // 4) for p in parts]
    assert np.array_equal(np.concatenate([h for pair in zip(*halves) for h in pair]), x)
    # each image is its original moved by at most 2 pixels, some by more than none
    plain = _epoch(loader(glyph_data, 8, shuffle=True), 5)
    raw = (plain.transpose(0, 2, 3, 1) * 127.5 + 127.5).round().astype(np.uint8)
    moves = []
    for got, image in zip(x, raw):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.allclose(to_tensor(translate(image, dy, dx)[None])[0].numpy(), got)
        ]
        assert found, "an image moved by more than the shift"
        moves.append(found[0])
    assert len(set(moves)) > 5


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
    cfg = DataConfig(source="vtab", path=str(tmp_path), image_size=8, train_size=5, val_size=3)
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
    with pytest.raises(PipelineError) as error:
        folders.load_imagefolder(tmp_path, 8)
    assert (
        str(error.value)
        == f"{tmp_path / 'a'}: class folder 'a' holds no images: add some or remove it"
    )
    _write_images(tmp_path / "a", ["0.png", "1.png"])
    with pytest.raises(PipelineError) as error:
        folders.load_imagefolder(tmp_path, 8)
    assert str(error.value) == (
        f"{tmp_path / 'a'}: class 'a' has 2 image(s), fewer than the 3 a split into train, val "
        "and test needs: add images or remove it"
    )
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"broken.png: cannot read image"):
        folders.load_imagefolder(tmp_path, 8)


def test_allocate_rounds_each_share_within_one_keeping_the_totals():
    assert allocate(np.array([50, 30, 20]), [60, 20, 20]).tolist() == [
        [30, 10, 10],
        [18, 6, 6],
        [12, 4, 4],
    ]
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(1, 30, rng.integers(1, 9))
        n = int(counts.sum())
        train = int(rng.integers(1, n))
        val = int(rng.integers(0, n - train + 1))
        sizes = [train, val, n - train - val]
        table = allocate(counts, sizes)
        assert table.sum(1).tolist() == counts.tolist()
        assert table.sum(0).tolist() == sizes
        assert np.abs(table - np.outer(counts, sizes) / n).max() < 1


def test_stratified_split_keeps_class_proportions_and_exact_sizes():
    full = digits.load(8)
    parts = stratified_split(full.labels, [800, 200], seed=0)
    assert [len(p) for p in parts] == [800, 200, 797]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(full)))
    counts = np.bincount(full.labels)
    for part, size in zip(parts, [800, 200, 797], strict=True):
        share = np.bincount(full.labels[part], minlength=10) - counts * size / len(full)
        assert np.abs(share).max() < 1  # each class within one image of its exact share
    again = stratified_split(full.labels, [800, 200], seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = stratified_split(full.labels, [800, 200], seed=1)
    assert not np.array_equal(parts[0], other[0])


def test_stratified_split_puts_a_small_class_in_train():
    labels = np.array([0] * 98 + [1] * 2)  # class 1's exact train share: 0.2 of an image
    train, val, test = stratified_split(labels, [10, 10], seed=0)
    assert np.bincount(labels[train]).tolist() == [9, 1]
    assert np.bincount(labels[val], minlength=2).tolist() == [10, 0]
    assert len(test) == 80


def test_stratify_false_is_the_plain_seeded_permutation():
    cfg = DataConfig(image_size=8, stratify=False, split_seed=3)
    parts = prepare.downstream(cfg)
    full = digits.load(8)
    train, val, _ = random_split(len(full), [800, 200], seed=3)
    np.testing.assert_array_equal(parts["train"].labels, full.labels[train])
    np.testing.assert_array_equal(parts["val"].labels, full.labels[val])


def _list(root, name, labels, start=0):
    _write_images(root / "images", [f"{start + i}.png" for i in range(len(labels))])
    lines = [f"images/{start + i}.png {label}" for i, label in enumerate(labels)]
    (root / name).write_text("\n".join(lines) + "\n")


def _one_line(error) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


def _vtab_refusal(folder) -> str:
    """The one line load_vtab refuses `folder` with."""
    with pytest.raises(PipelineError) as error:
        folders.load_vtab(folder, 8)
    return _one_line(error)


def test_vtab_labels_are_checked(tmp_path):
    _list(tmp_path, "train800val200.txt", [0, 0, -1])
    _list(tmp_path, "test.txt", [0], start=3)
    assert _vtab_refusal(tmp_path) == (
        f"{tmp_path / 'train800val200.txt'}:3: negative label -1: labels are class indices 0..K-1"
    )
    _list(tmp_path, "train800val200.txt", [i % 12 for i in range(24)] + [99])
    assert _vtab_refusal(tmp_path) == (
        f"{tmp_path / 'train800val200.txt'}: no training image of class 12, 13, 14, 15, 16 and "
        "82 more: labels must be 0..K-1 with each class in the training list (the largest "
        "label, 99, makes a 100-class head)"
    )
    _list(tmp_path, "train800val200.txt", [0, 0, 1])
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert _vtab_refusal(tmp_path) == (
        f"{tmp_path / 'train800val200.txt'}: only one image of class 1 (dog): the split needs "
        "two of each class (one for train, one for val): add images of it"
    )


def test_vtab_separate_lists_need_every_class_in_train(tmp_path):
    _list(tmp_path, "train800.txt", [0, 0])
    _list(tmp_path, "val200.txt", [1], start=2)
    _list(tmp_path, "test.txt", [0, 1], start=3)
    assert _vtab_refusal(tmp_path) == (
        f"{tmp_path / 'train800.txt'}: no training image of class 1: labels must be 0..K-1 with "
        "each class in the training list (the largest label, 1, makes a 2-class head)"
    )


def test_vtab_classes_txt_names_the_classes(tmp_path):
    _vtab_task(tmp_path, separate_lists=True)
    (tmp_path / "classes.txt").write_text("cat\ndog\nowl\n")
    parts = prepare.downstream(DataConfig(source="vtab", path=str(tmp_path), image_size=8))
    assert parts["train"].classes == parts["test"].classes == ["cat", "dog", "owl"]
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert _vtab_refusal(tmp_path) == (
        f"{tmp_path / 'classes.txt'}: 2 class names for the 3 classes of the lists (labels 0..2): "
        "give one name per line, line i naming label i"
    )


def test_vtab_trainval_split_is_stratified_and_refused_when_too_short(tmp_path):
    _list(tmp_path, "train800val200.txt", [0] * 8 + [1] * 12)
    _list(tmp_path, "test.txt", [0, 1], start=20)
    cfg = DataConfig(source="vtab", path=str(tmp_path), image_size=8, train_size=15, val_size=5)
    parts = prepare.downstream(cfg)
    assert np.bincount(parts["train"].labels).tolist() == [6, 9]
    assert np.bincount(parts["val"].labels).tolist() == [2, 3]
    with pytest.raises(ConfigError) as error:
        prepare.downstream(DataConfig(source="vtab", path=str(tmp_path), image_size=8))
    assert _one_line(error) == (
        f"{tmp_path / 'train800val200.txt'} lists 20 images, fewer than data.train_size (800) + "
        "data.val_size (200): set them to fit, e.g. data.train_size=16 data.val_size=4"
    )


def _folder(root, counts: dict[str, int]):
    for name, n in counts.items():
        _write_images(root / name, [f"{i}.png" for i in range(n)], size=8)
    return root


def test_imagefolder_split_sizes_must_fit(tmp_path):
    _folder(tmp_path, {"a": 4, "b": 4, "c": 4})
    cfg = DataConfig(source="imagefolder", path=str(tmp_path), image_size=8)
    with pytest.raises(ConfigError) as error:
        prepare.downstream(cfg)
    assert _one_line(error) == (
        f"{tmp_path} holds 12 images: data.train_size (800) + data.val_size (200) leave none for "
        "the test split: set them to fit, e.g. data.train_size=7 data.val_size=2"
    )
    parts = prepare.downstream(cfg.model_copy(update={"train_size": 7, "val_size": 2}))
    assert {k: len(v) for k, v in parts.items()} == {"train": 7, "val": 2, "test": 3}
    assert sorted(np.bincount(parts["train"].labels).tolist()) == [2, 2, 3]


def _params(path, **changes):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["data"].update(source="imagefolder", path=str(path))
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        data[section][key] = value
    return parse_params(data)


def _task(classes: int, per_class: int, train_labels=None):
    labels = np.repeat(np.arange(classes), per_class) if train_labels is None else train_labels
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    return {"train": ImageSet(images, np.asarray(labels), [f"c{i}" for i in range(classes)])}


@pytest.mark.parametrize(
    ("changes", "task", "message"),
    [
        (
            {},
            _task(12, 30),
            "continual.tasks (5) must divide the 12 classes of {path}: "
            "set it to one of 1, 2, 3, 4, 6, 12",
        ),
        (
            {"continual.tasks": 4, "continual.class_order": [0, 1, 2, 3]},
            _task(12, 30),
            "continual.class_order must list each of the 12 classes of {path} once (a permutation "
            "of 0..11), got [0, 1, 2, 3]: or set it to null or a seed",
        ),
        (
            {"continual.tasks": 4},
            _task(12, 20),
            "export.calibration_images (256) is more than the 240 images of the train split of "
            "{path}: set it to at most 240",
        ),
        (
            {"continual.tasks": 2, "data.stratify": False},
            _task(2, 0, train_labels=[0] * 300),
            "{path}: class 'c1' has no image in the train split: set data.stratify to true",
        ),
        (
            {"continual.tasks": 2},
            _task(2, 0, train_labels=[0] * 300),
            "{path}: class 'c1' has no image in the train split: raise data.train_size (800)",
        ),
    ],
)
def test_settings_that_depend_on_the_classes(tmp_path, changes, task, message):
    params = _params(tmp_path, **changes)
    with pytest.raises(ConfigError) as error:
        prepare.check_task(params, task)
    assert _one_line(error) == message.format(path=tmp_path)


def test_settings_that_fit_the_classes_pass(tmp_path):
    order = list(range(12))[::-1]
    params = _params(tmp_path, **{"continual.tasks": 6, "continual.class_order": order})
    prepare.check_task(params, _task(12, 30))
