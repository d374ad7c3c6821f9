"""Agreement of the student's detections with a teacher's, frame by frame (pure logic, no ROS).

The teacher plays the role of ground truth: a student box *agrees* (true positive) when a teacher
box of the same class has its centre within ``max_center_distance_m`` in the ground plane.

Matching (per frame, per class; nuScenes' detection matching rule): student boxes in descending
score order each take the nearest still-unmatched teacher box of their class whose BEV centre
distance (x, y; z ignored) is <= the threshold. Boxes below the configured minimum scores are
removed first, on both sides.

Figures (:class:`AgreementSummary`), for all classes together and per class:

* ``precision`` = matches / student boxes, ``recall`` = matches / teacher boxes (nan when the
  denominator is 0);
* ``mean_center_error_m``: mean BEV centre distance of the matches (m);
* ``mean_yaw_error_rad``: mean absolute heading difference, wrapped to [0, pi] (rad);
* ``mean_size_error``: mean ``1 - IoU`` of the two boxes after aligning their centres and
  headings (nuScenes' scale error; 0 = same size, unitless).

:class:`AgreementTracker` keeps the totals since start and over a sliding window of the last
``window_frames`` frames.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np

from x3kd_core.geometry import wrap_angle
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = ["MatchConfig", "FrameMatch", "match_frame", "AgreementStats", "AgreementSummary", "AgreementTracker"]

_NUM_CLASSES = len(DETECTION_CLASSES)


@dataclass(frozen=True)
class MatchConfig:
    """How student and teacher boxes are matched.

    Fields:
        max_center_distance_m: largest BEV centre distance of a match (m); nuScenes uses 0.5-4 m,
            its TP errors 2 m.
        student_min_score / teacher_min_score: boxes below these scores are ignored.
    """

    max_center_distance_m: float = 2.0
    student_min_score: float = 0.0
    teacher_min_score: float = 0.0

    def __post_init__(self) -> None:
        if not self.max_center_distance_m > 0:
            raise ValueError(f"max_center_distance_m must be > 0, got {self.max_center_distance_m}")
        for name in ("student_min_score", "teacher_min_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class FrameMatch:
    """Matches of one frame.

    Fields (M matches):
        student_index / teacher_index: (M,) indices into the *score-filtered* student / teacher boxes.
        label: (M,) class index of each match.
        center_error_m / yaw_error_rad / size_error: (M,) errors of each match (see module docstring).
        num_student / num_teacher: (C,) boxes per class after score filtering (C = 10 classes).
    """

    student_index: np.ndarray
    teacher_index: np.ndarray
    label: np.ndarray
    center_error_m: np.ndarray
    yaw_error_rad: np.ndarray
    size_error: np.ndarray
    num_student: np.ndarray
    num_teacher: np.ndarray

    @property
    def num_matches(self) -> int:
        return len(self.label)


def _aligned_iou(size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """IoU of boxes (M, 3) sharing centre and heading: only their sizes differ."""
    inter = np.prod(np.minimum(size_a, size_b), axis=1)
    union = np.prod(size_a, axis=1) + np.prod(size_b, axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_frame(student: Boxes3D, teacher: Boxes3D, config: MatchConfig = MatchConfig()) -> FrameMatch:
    """Match one frame's student boxes to the teacher's (rule in the module docstring)."""
    student = student[student.score >= config.student_min_score]
    teacher = teacher[teacher.score >= config.teacher_min_score]
    pairs_s, pairs_t = [], []
    for cls in range(_NUM_CLASSES):
        s_idx = np.flatnonzero(student.label == cls)
        t_idx = np.flatnonzero(teacher.label == cls)
        if len(s_idx) == 0 or len(t_idx) == 0:
            continue
        # Stable sort: equal scores keep their input order, so the result is deterministic.
        s_idx = s_idx[np.argsort(-student.score[s_idx], kind="stable")]
        dist = np.linalg.norm(student.center[s_idx, None, :2] - teacher.center[None, t_idx, :2], axis=2)
        taken = np.zeros(len(t_idx), dtype=bool)
        for row, s in enumerate(s_idx):
            candidates = np.where(taken, np.inf, dist[row])
            best = int(np.argmin(candidates))
            if candidates[best] <= config.max_center_distance_m:
                taken[best] = True
                pairs_s.append(s)
                pairs_t.append(t_idx[best])
    s_arr = np.asarray(pairs_s, dtype=np.int64)
    t_arr = np.asarray(pairs_t, dtype=np.int64)
    center = np.linalg.norm(student.center[s_arr, :2] - teacher.center[t_arr, :2], axis=1)
    yaw = np.abs(wrap_angle(student.yaw[s_arr] - teacher.yaw[t_arr]))
    size = 1.0 - _aligned_iou(student.size_lwh[s_arr], teacher.size_lwh[t_arr])
    return FrameMatch(
        student_index=s_arr,
        teacher_index=t_arr,
        label=student.label[s_arr],
        center_error_m=center,
        yaw_error_rad=yaw,
        size_error=size,
        num_student=np.bincount(student.label, minlength=_NUM_CLASSES),
        num_teacher=np.bincount(teacher.label, minlength=_NUM_CLASSES),
    )


@dataclass
class AgreementSummary:
    """Agreement figures over some frames (see the module docstring); nan where undefined."""

    frames: int
    student_boxes: int
    teacher_boxes: int
    matches: int
    precision: float
    recall: float
    mean_center_error_m: float
    mean_yaw_error_rad: float
    mean_size_error: float
    per_class: dict[str, "AgreementSummary"] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict: nan becomes None; ``per_class`` only lists classes with any box."""
        out = {}
        for key, value in self.__dict__.items():
            if key == "per_class":
                out[key] = {name: s.to_dict() for name, s in value.items()}
            elif isinstance(value, float):
                out[key] = None if math.isnan(value) else round(value, 6)
            else:
                out[key] = value
        return out


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class AgreementStats:
    """Sums over frames, per class (add frames, read a summary)."""

    def __init__(self) -> None:
        self.frames = 0
        self.matches = np.zeros(_NUM_CLASSES, dtype=np.int64)
        self.num_student = np.zeros(_NUM_CLASSES, dtype=np.int64)
        self.num_teacher = np.zeros(_NUM_CLASSES, dtype=np.int64)
        self.sum_center = np.zeros(_NUM_CLASSES)
        self.sum_yaw = np.zeros(_NUM_CLASSES)
        self.sum_size = np.zeros(_NUM_CLASSES)

    def add(self, frame: FrameMatch) -> None:
        self.frames += 1
        self.matches += np.bincount(frame.label, minlength=_NUM_CLASSES)
        self.num_student += frame.num_student
        self.num_teacher += frame.num_teacher
        for total, values in ((self.sum_center, frame.center_error_m), (self.sum_yaw, frame.yaw_error_rad),
                              (self.sum_size, frame.size_error)):
            total += np.bincount(frame.label, weights=values, minlength=_NUM_CLASSES)

    def _summary(self, sel: slice | int) -> AgreementSummary:
        matches = int(np.sum(self.matches[sel]))
        n_s, n_t = int(np.sum(self.num_student[sel])), int(np.sum(self.num_teacher[sel]))
        return AgreementSummary(
            frames=self.frames,
            student_boxes=n_s,
            teacher_boxes=n_t,
            matches=matches,
            precision=_ratio(matches, n_s),
            recall=_ratio(matches, n_t),
            mean_center_error_m=_ratio(float(np.sum(self.sum_center[sel])), matches),
            mean_yaw_error_rad=_ratio(float(np.sum(self.sum_yaw[sel])), matches),
            mean_size_error=_ratio(float(np.sum(self.sum_size[sel])), matches),
        )

    def summary(self) -> AgreementSummary:
        out = self._summary(slice(None))
        out.per_class = {
            DETECTION_CLASSES[c]: self._summary(c)
            for c in range(_NUM_CLASSES)
            if self.num_student[c] or self.num_teacher[c]
        }
        return out


class AgreementTracker:
    """Running agreement: every frame since start, and the last ``window_frames`` frames."""

    def __init__(self, config: MatchConfig = MatchConfig(), window_frames: int = 50) -> None:
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        self.config = config
        self.total = AgreementStats()
        # The window is summed afresh when read (<= window_frames small frames): no drift from
        # adding and subtracting floats over a long run.
        self._window: collections.deque[FrameMatch] = collections.deque(maxlen=int(window_frames))

    def add(self, student: Boxes3D, teacher: Boxes3D) -> FrameMatch:
        """Match one frame, add it to the totals and the window, and return its matches."""
        frame = match_frame(student, teacher, self.config)
        self.total.add(frame)
        self._window.append(frame)
        return frame

    def window(self) -> AgreementStats:
        """Sums over the last ``window_frames`` frames."""
        stats = AgreementStats()
        for frame in self._window:
            stats.add(frame)
        return stats
