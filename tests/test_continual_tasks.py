"""Class-incremental task sequences on real glyph data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import PipelineError
from pipeline.continual.tasks import class_order, split_tasks


def test_tasks_partition_the_classes_in_order(glyph_data):
    order = class_order(4, [3, 1, 0, 2])
    tasks = split_tasks(glyph_data, order, 2)
    assert [c for c, _ in tasks] == [[3, 1], [0, 2]]
    for classes, data in tasks:
        assert set(np.unique(data.labels)) == set(classes) and len(data) == 48
    assert sum(len(d) for _, d in tasks) == len(glyph_data)


def test_class_order_is_seeded_or_checked():
    assert class_order(5, None) == [0, 1, 2, 3, 4]
    assert class_order(5, 7) == class_order(5, 7) != class_order(5, None)
    with pytest.raises(PipelineError, match="each of the 4 classes once"):
        class_order(4, [0, 1, 1, 2])
    with pytest.raises(PipelineError, match="equal tasks"):
        split_tasks(None, [0, 1, 2], 2)
