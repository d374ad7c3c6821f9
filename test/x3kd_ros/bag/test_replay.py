"""The bag replayer as a ROS time source (x3kd_ros.bag.replay: ``--clock``, ``ReplayConfig.clock_hz``).

A node started with ``use_sim_time`` must read the bag's time from its clock while a bag is
replayed, as with ``ros2 bag play --clock``. Checked with real rclpy nodes in two contexts (two DDS
participants on the localhost-only domain of the session): the player in one, a ``use_sim_time``
node in the other that notes its clock whenever a camera image arrives.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.clock import JumpThreshold
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from x3kd_ros import topics
from x3kd_ros.bag.io import BagWriteConfig, bag_summary, read_bag, write_bag
from x3kd_ros.bag.replay import BagPlayer, PlaybackClock, ReplayConfig

CAMERA_TOPIC = topics.camera_image_topic("CAM_FRONT")


@pytest.fixture(scope="module")
def bag(tiny_dataset, tmp_path_factory) -> Path:
    dataroot, version = tiny_dataset
    return write_bag(dataroot, version, "synth_val", tmp_path_factory.mktemp("replay_bag") / "val",
                     BagWriteConfig()).path


class _Sent:
    """Stands in for an rclpy publisher: keeps the Clock messages as ns."""

    def __init__(self) -> None:
        self.ns: list[int] = []

    def publish(self, msg) -> None:
        self.ns.append(msg.clock.sec * 1_000_000_000 + msg.clock.nanosec)


def test_playback_clock_stands_runs_jumps_back_and_never_advances_backwards():
    sent = _Sent()
    clock = PlaybackClock(sent, hz=1000.0)
    try:
        assert clock.now_ns() is None
        time.sleep(0.02)
        assert sent.ns == []  # nothing before a time is set
        clock.jump_to(5_000_000_000)
        assert sent.ns[-1] == 5_000_000_000
        clock.advance_to(4_000_000_000)  # behind: ignored, not published
        assert clock.now_ns() == 5_000_000_000 and sent.ns[-1] == 5_000_000_000
        clock.advance_to(6_500_000_001)
        assert sent.ns[-1] == 6_500_000_001
        time.sleep(0.05)  # standing (rate 0): the periodic messages repeat the same time
        assert clock.now_ns() == 6_500_000_001 and set(sent.ns[-5:]) == {6_500_000_001}
        clock.jump_to(1_000_000_000, rate=2.0)  # a loop: back to the start, then running at 2x
        assert sent.ns[-1] < 1_000_000_000 + 20_000_000
        time.sleep(0.1)
        assert 1_150_000_000 < clock.now_ns() < 1_000_000_000 + 2 * 400_000_000
        assert all(b >= a for a, b in zip(sent.ns[-20:], sent.ns[-19:]))
    finally:
        clock.stop()
    count = len(sent.ns)
    time.sleep(0.02)
    assert len(sent.ns) == count  # stopped
    with pytest.raises(ValueError, match="clock_hz must be in 0..1000"):
        ReplayConfig(clock_hz=-1.0)


def test_use_sim_time_node_follows_the_replayed_bag_time_across_a_loop(ros_network, bag, wait_until):
    """Real-time replay (rate 1) with /clock, played twice: on every camera image, the use_sim_time
    node's clock reads the image's bag stamp (within 0.25 s; wall time is years away), and the second
    loop shows as one backward jump of the node's ROS clock by the bag's span."""
    summary = bag_summary(bag)
    stamps = [m.stamp_ns for m in read_bag(bag, [CAMERA_TOPIC], decoder="raw")]
    assert len(stamps) == 3 and abs(time.time_ns() - stamps[0]) > 86400 * 1e9  # bag time is not wall time

    player_ctx, node_ctx = Context(), Context()
    rclpy.init(context=player_ctx)
    rclpy.init(context=node_ctx)
    player_node = rclpy.create_node("x3kd_test_replay_player", context=player_ctx)
    sim_node = rclpy.create_node("x3kd_test_sim_time_node", context=node_ctx,
                                 parameter_overrides=[Parameter("use_sim_time", value=True)])
    seen: list[tuple[int, int]] = []  # (image stamp, node clock) in ns
    jumps: list[int] = []

    def on_image(msg: Image) -> None:
        seen.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                     sim_node.get_clock().now().nanoseconds))

    sim_node.create_subscription(Image, CAMERA_TOPIC, on_image, 10)
    handler = sim_node.get_clock().create_jump_callback(
        JumpThreshold(min_forward=None, min_backward=Duration(seconds=-0.1), on_clock_change=False),
        post_callback=lambda jump: jumps.append(jump.delta.nanoseconds))
    executor = SingleThreadedExecutor(context=node_ctx)
    executor.add_node(sim_node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.02)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    player = None
    try:
        assert sim_node.get_clock().now().nanoseconds == 0  # no /clock yet: ROS time stands at 0
        # The player waits until its image publisher has matched the node's subscription (a reliable,
        # volatile image sent before that would be lost) and its /clock publisher too.
        player = BagPlayer(player_node, bag, (), ReplayConfig(rate=1.0, clock_hz=50.0, settle_s=0.3,
                                                              ready_timeout_s=30.0,
                                                              expected_subscribers={CAMERA_TOPIC: 1}))
        assert player.clock is not None
        player.wait_until_ready(extra=lambda: None if player.clock.publisher.get_subscription_count() >= 1
                                else "the use_sim_time node's /clock subscription")
        assert wait_until(lambda: sim_node.get_clock().now().nanoseconds != 0, 5.0), "no /clock tick reached the node"
        # While the graph comes up the clock holds the bag's first stamp.
        assert summary.start_ns <= sim_node.get_clock().now().nanoseconds <= stamps[0]
        results = [player.play(), player.play()]
        wait_until(lambda: len(seen) >= 6, 5.0)  # play() returns once the last image is sent, not received
    finally:
        stop.set()
        thread.join(timeout=5.0)
        if player is not None:
            player.destroy()
        handler.unregister()
        executor.shutdown()
        sim_node.destroy_node()
        player_node.destroy_node()
        player_ctx.try_shutdown()
        node_ctx.try_shutdown()

    assert [r.published[CAMERA_TOPIC] for r in results] == [3, 3]
    span_ns = results[0].bag_span_s * 1e9
    print(f"\n/clock replay, rate 1: image stamp - node clock (ms): "
          + ", ".join(f"{(s - c) / 1e6:.1f}" for s, c in seen) + f"; backward jumps (s): {[j / 1e9 for j in jumps]}")
    assert [s for s, _ in seen] == stamps * 2, "every image of both loops reached the node"
    for stamp, clock_ns in seen:
        assert abs(clock_ns - stamp) < 250_000_000, (stamp, clock_ns)
    # One jump back at the loop, by the bag's span: the clock held where playback ended (at rate 1 a
    # few ms past the last stamp) until the second loop started it again from the first.
    assert len(jumps) == 1 and abs(jumps[0] + span_ns) < 50e6, (jumps, span_ns)
