"""``python -m x3kd_ros.bag.replay BAG ...``: the command line of :mod:`x3kd_ros.bag.replay`."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Sequence

from x3kd_ros import topics as topic_names
from x3kd_ros.bag.io import bag_summary
from x3kd_ros.bag.replay import _POLL_S, BagPlayer
from x3kd_ros.bag.replay_frames import FrameGroup, ReplayConfig, ReplayError
from x3kd_ros.bag.replay_transport import fastdds_profile_environment, shm_segment_bytes

__all__ = ["main"]


def _parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m x3kd_ros.bag.replay",
        description="Replay a rosbag2 folder into a running ROS 2 graph (stands in for `ros2 bag play`, "
                    "which needs rosbag2_py): waits until the graph has subscribed, then publishes the "
                    "recorded messages, flow-controlled on the detector's answers (--rate 0) or at a fixed "
                    "rate. Prints one JSON line per loop: frames sent, answers received, their stamps.")
    parser.add_argument("bag", help="rosbag2 folder (mcap or sqlite3)")
    parser.add_argument("--loop", type=int, default=1, metavar="N",
                        help="play the bag N times in a row (stamps jump back to the start each time, as "
                             "`ros2 bag play --loop`)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="0: as fast as the detector answers (needs --answer-topic); R > 0: R x real time")
    parser.add_argument("--answer-topic", default=topic_names.DETECTIONS_TOPIC,
                        help="the detector's output (one answer per camera frame); '' = do not wait for answers")
    parser.add_argument("--span-s", type=float, default=0.06, help="stamp spread of one camera frame (s)")
    parser.add_argument("--no-prime", action="store_true",
                        help="send CameraInfo only in its turn in the bag (as `ros2 bag play`), not before")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="TOPIC", help="topics not to replay")
    parser.add_argument("--ready-timeout-s", type=float, default=120.0)
    parser.add_argument("--ack-timeout-s", type=float, default=30.0)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=0.5)
    parser.add_argument("--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
                        help="publish the bag's time on /clock at HZ (default 40) and before every message, "
                             "as `ros2 bag play --clock`, for nodes started with use_sim_time:=true")
    parser.add_argument("--no-fastdds-profile", action="store_true",
                        help="do not load the large shared-memory Fast DDS profile (see the module docstring)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m x3kd_ros.bag.replay BAG [--loop N] [--rate R] ...`` (see :func:`_parser`)."""
    import json
    import sys
    import tempfile

    options = _parser().parse_args(argv)
    if options.loop < 1:
        print("replay: --loop must be >= 1", file=sys.stderr)
        return 2
    if not 0 <= options.clock <= 1000:
        print(f"replay: --clock HZ must be in 0..1000, got {options.clock}", file=sys.stderr)
        return 2
    if options.rate <= 0 and not options.answer_topic:
        print("replay: --rate 0 (flow control) needs --answer-topic", file=sys.stderr)
        return 2
    from x3kd_ros.graph.environment import apply_network_rule

    apply_network_rule()
    bag = Path(options.bag)
    try:
        summary = bag_summary(bag)
    except Exception as err:  # noqa: BLE001 - any unreadable bag is a usage error here
        print(f"replay: cannot read {bag}: {err}", file=sys.stderr)
        return 2
    if not options.no_fastdds_profile:
        env, _ = fastdds_profile_environment(Path(tempfile.gettempdir()) / f"x3kd_replay_{os.getpid()}.xml",
                                             shm_segment_bytes(bag))
        os.environ.update(env)  # before the first participant of this process

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    images = sorted(t for t, kind in summary.msgtypes.items()
                    if kind in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage") and t not in options.exclude)
    groups = []
    if options.answer_topic:
        if not images:
            print(f"replay: {bag} has no image topic to count frames on", file=sys.stderr)
            return 2
        groups = [FrameGroup("detector", tuple(images), options.answer_topic, span_s=options.span_s)]
    config = ReplayConfig(rate=options.rate, ack_timeout_s=options.ack_timeout_s,
                          ready_timeout_s=options.ready_timeout_s, drain_timeout_s=options.drain_timeout_s,
                          settle_s=options.settle_s, exclude_topics=tuple(options.exclude),
                          prime_topics=() if options.no_prime else None, clock_hz=options.clock)
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("x3kd_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=_POLL_S)

    thread = threading.Thread(target=spin, name="x3kd_replay_spin", daemon=True)
    thread.start()
    player = None
    code = 0
    try:
        player = BagPlayer(node, bag, groups, config)
        waited = player.wait_until_ready()
        print(f"replay: graph ready after {waited:.1f} s; playing {bag} {options.loop} time(s)", file=sys.stderr)
        for loop in range(options.loop):
            result = player.play()
            line = {"loop": loop, "published": sum(result.published.values()), "wall_s": round(result.wall_s, 3),
                    "drained": result.drained}
            if groups:
                frames = result.frames["detector"]
                line.update({"frames": len(frames), "complete_frames": sum(f.complete for f in frames),
                             "answers": len(result.answers["detector"]),
                             "answer_stamps_ns": [a.stamp_ns for a in result.answers["detector"]],
                             "frame_stamps_ns": [f.first_stamp_ns for f in frames],
                             "ack_timeouts": result.ack_timeouts["detector"]})
            print(json.dumps(line), flush=True)
    except KeyboardInterrupt:
        code = 130
    except (ReplayError, ValueError) as err:
        print(f"replay: {err}", file=sys.stderr)
        code = 1
    finally:
        stop.set()
        thread.join(timeout=5.0)
        if player is not None:
            player.destroy()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    return code


if __name__ == "__main__":
    import sys

    sys.exit(main())
