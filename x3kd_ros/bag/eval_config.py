"""What a bag evaluation (:mod:`x3kd_ros.bag.evaluate`) is asked to do: :class:`BagEvalConfig`,
the error it raises when it cannot, and the frame spans the player and the nodes share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BagEvalError", "BagEvalConfig", "CAMERA_SPAN_S", "RADAR_SPAN_S", "PAIR_SLOP_S"]

#: Stamp spread of one camera frame / radar frame: the player's frame span and the nodes' sync slop.
CAMERA_SPAN_S = 0.06
RADAR_SPAN_S = 0.08
#: Student-teacher pairing slop of the comparison nodes during an evaluation (s).
PAIR_SLOP_S = 0.06


class BagEvalError(ValueError):
    """The evaluation cannot run as asked (bad bag, missing checkpoint, a node that did not start)."""


@dataclass(frozen=True)
class BagEvalConfig:
    """What :func:`run_bag_eval` runs and how.

    Fields:
        checkpoint: camera-student checkpoint (required).
        lidar_checkpoint / radar_checkpoint: teacher checkpoints ("" = that teacher is not run);
            each teacher comes with its comparison node.
        device: where the nodes run their models (auto | cpu | cuda | cuda:N).
        rate: 0 = flow-controlled, as fast as the graph answers; > 0 = this factor x real time.
        max_outstanding: with rate 0, frames a model may have waiting at once.
        ack_timeout_s / ready_timeout_s / drain_timeout_s: see :class:`~x3kd_ros.bag.replay.ReplayConfig`.
        match_tolerance_s: largest |answer stamp - keyframe stamp| for an answer to score that
            keyframe (s); below half the keyframe period (nuScenes: 0.5 s).
        dataroot / version / split: the dataset tables, to also evaluate with the devkit's
            ``DetectionEval``; version / split default to those recorded in the bag.
        num_pictures: BEV pictures (GT vs student) of this many keyframes, spread over the bag.
        picture_score_threshold: student boxes drawn from this score on.
        stop_timeout_s: grace time of each stop signal to the node processes.
        graph_config: graph description YAML ("" = config/ros/graph.yaml).
        fastdds_profile: load the replay's Fast DDS profile (:mod:`x3kd_ros.bag.replay`, *Transport*)
            in this process and the nodes, unless the user set a profile file or another RMW.
        remappings: ``(FROM, TO)`` remap rules given to every node (``-r FROM:=TO``; FROM the
            graph's topic name, TO the bag's; ``node:FROM`` limits a rule to that node), ahead
            of the graph file's own; :func:`parse_remap` reads ``"FROM:=TO"``.
        params_files: ROS 2 params files given to every node after the graph file's own (the
            evaluation's overrides still come last); e.g. ``image_topics`` / ``camera_frames``
            of a foreign camera rig.
    """

    checkpoint: str
    lidar_checkpoint: str = ""
    radar_checkpoint: str = ""
    device: str = "auto"
    rate: float = 0.0
    max_outstanding: int = 1
    ack_timeout_s: float = 30.0
    ready_timeout_s: float = 120.0
    drain_timeout_s: float = 30.0
    match_tolerance_s: float = 0.2
    dataroot: str = ""
    version: str = ""
    split: str = ""
    num_pictures: int = 3
    picture_score_threshold: float = 0.3
    stop_timeout_s: float = 10.0
    graph_config: str = ""
    fastdds_profile: bool = True
    remappings: tuple[tuple[str, str], ...] = ()
    params_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise BagEvalError("a student checkpoint is required")
        object.__setattr__(self, "remappings", tuple((str(a), str(b)) for a, b in self.remappings))
        object.__setattr__(self, "params_files", tuple(str(f) for f in self.params_files))
        for src, dst in self.remappings:
            if not src or not dst:
                raise BagEvalError(f"remap rule {src}:={dst} has an empty side")
        for file in self.params_files:
            if not Path(file).is_file():
                raise BagEvalError(f"params file not found: {file}")
        if not self.rate >= 0:
            raise BagEvalError(f"rate must be >= 0 (0 = as fast as the graph answers), got {self.rate}")
        if not self.match_tolerance_s > 0:
            raise BagEvalError(f"match_tolerance_s must be > 0, got {self.match_tolerance_s}")
        if self.num_pictures < 0:
            raise BagEvalError(f"num_pictures must be >= 0, got {self.num_pictures}")
