"""Matching answers to what was sent: each frame's answer(s) by stamp (:func:`match_answers_to_frames`),
the answer that scores each keyframe (:func:`match_to_keyframes`), and latency percentiles. Pure
functions of stamps, for :mod:`x3kd_ros.bag.evaluate`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["FrameCheck", "match_to_keyframes", "match_answers_to_frames", "percentiles"]

_PERCENTILES = (50, 90, 99)


def match_to_keyframes(keyframe_stamps_ns: Sequence[int], stamps_ns: Sequence[int],
                       tolerance_ns: int) -> dict[int, int]:
    """keyframe index -> index of the stamp nearest to it, if within ``tolerance_ns``.

    Each stamp is used for one keyframe at most (the nearest keyframe wins).
    """
    if not len(stamps_ns) or not len(keyframe_stamps_ns):
        return {}
    keys = np.asarray(keyframe_stamps_ns, dtype=np.int64)
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    pairs = []
    for k, key in enumerate(keys):
        gaps = np.abs(stamps - key)
        j = int(np.argmin(gaps))
        if gaps[j] <= tolerance_ns:
            pairs.append((int(gaps[j]), k, j))
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, k, j in sorted(pairs):
        if j not in used:
            out[k] = j
            used.add(j)
    return out


@dataclass
class FrameCheck:
    """How the frames of one group were answered.

    Fields:
        sent: frames sent. answers: answers received.
        answered_once / unanswered / answered_twice_or_more: frames with exactly 1 / 0 / >1 answers.
        unmatched_answers: answers whose stamp belongs to no frame sent.
        answer_of_frame: frame index -> index of its (first) answer.
    """

    sent: int
    answers: int
    answered_once: int
    unanswered: int
    answered_twice_or_more: int
    unmatched_answers: int
    answer_of_frame: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every frame got exactly one answer and no answer is extra."""
        return self.answered_once == self.sent == self.answers and self.unmatched_answers == 0

    def to_dict(self) -> dict:
        return {"sent": self.sent, "answers": self.answers, "answered_once": self.answered_once,
                "unanswered": self.unanswered, "answered_twice_or_more": self.answered_twice_or_more,
                "unmatched_answers": self.unmatched_answers, "every_frame_answered_once": self.ok}


def match_answers_to_frames(frames, answers, span_ns: int) -> FrameCheck:
    """Assign each answer to the frame sent with its stamp (one of the frame's input stamps; a node's
    synchronized stamp is always one of its inputs'), else the nearest frame within ``span_ns``."""
    by_stamp: dict[int, list[int]] = {}
    for i, frame in enumerate(frames):
        for stamp in frame.stamps_ns.values():
            by_stamp.setdefault(stamp, []).append(i)
    firsts = np.asarray([f.first_stamp_ns for f in frames], dtype=np.int64)
    hits: dict[int, list[int]] = {}
    unmatched = 0
    for a, answer in enumerate(answers):
        candidates = by_stamp.get(answer.stamp_ns, [])
        if candidates:
            frame = next((i for i in candidates if i not in hits), candidates[0])
        elif len(firsts) and np.min(np.abs(firsts - answer.stamp_ns)) <= span_ns:
            frame = int(np.argmin(np.abs(firsts - answer.stamp_ns)))
        else:
            unmatched += 1
            continue
        hits.setdefault(frame, []).append(a)
    counts = [len(hits.get(i, [])) for i in range(len(frames))]
    return FrameCheck(
        sent=len(frames), answers=len(answers),
        answered_once=sum(c == 1 for c in counts), unanswered=sum(c == 0 for c in counts),
        answered_twice_or_more=sum(c > 1 for c in counts), unmatched_answers=unmatched,
        answer_of_frame={i: v[0] for i, v in hits.items()},
    )


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "p50", "p90", "p99", "mean", "max"}`` of ``values`` (None where there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"n": 0, **{f"p{p}": None for p in _PERCENTILES}, "mean": None, "max": None}
    out: dict[str, Any] = {"n": int(len(v))}
    out.update({f"p{p}": float(np.percentile(v, p)) for p in _PERCENTILES})
    out.update({"mean": float(v.mean()), "max": float(v.max())})
    return out
