"""Pairing two decoded box lists that should hold the same boxes, for tests that compare two backends.

Decoded lists are ordered by score; two boxes whose scores differ by float rounding swap places on
a CPU whose float kernels differ from the machine that wrote a fixture (seen on an AVX2-only CPU),
so comparisons pair boxes by label and nearest centre instead of by list position.
"""

from __future__ import annotations

import numpy as np


def pair_by_label_and_centre(centres_a, centres_b, labels_a, labels_b, what: str = "boxes") -> np.ndarray:
    """Index into list b of the nearest-centre box with the same label, for each box of list a.

    centres_*: (N, 3) box centres in m (numpy or torch); labels_*: (N,) class ids. Asserts that the
    pairing is one to one (two boxes of a paired with one of b means the lists differ).
    """
    def numpy(x) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    a, b = numpy(centres_a).astype(np.float64), numpy(centres_b).astype(np.float64)
    labels_a, labels_b = numpy(labels_a), numpy(labels_b)
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    dist = np.linalg.norm(a[:, None, :3] - b[None, :, :3], axis=2)
    dist[labels_a.astype(np.int64)[:, None] != labels_b.astype(np.int64)[None, :]] = np.inf
    pair = dist.argmin(axis=1)
    assert len(set(pair.tolist())) == len(a), f"{what}: boxes do not pair one to one"
    return pair
