"""test/box_pairing.py: swapped boxes pair back, labels keep apart, a many-to-one pairing fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_pairs_swapped_boxes_by_label_and_centre(pair_boxes):
    a = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.1]])
    labels_a = np.array([1, 2, 3])
    b, labels_b = a[[2, 0, 1]], labels_a[[2, 0, 1]]  # same boxes, another order
    np.testing.assert_array_equal(pair_boxes(a, b, labels_a, labels_b), [1, 2, 0])
    # Boxes 0 and 2 are 0.1 m apart: the label decides, also from torch tensors.
    pair = pair_boxes(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(labels_a), torch.from_numpy(labels_b))
    np.testing.assert_array_equal(pair, [1, 2, 0])
    assert len(pair_boxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))) == 0
    with pytest.raises(AssertionError, match="do not pair one to one"):
        pair_boxes(a, a[[0, 0, 2]], np.array([1, 1, 3]), np.array([1, 1, 3]))
