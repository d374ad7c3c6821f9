"""QoS profiles and their log text."""

from __future__ import annotations

from x3kd_ros.nodes.qos import describe_qos, qos_profile, static_tf_qos


def test_qos_descriptions():
    assert describe_qos(qos_profile("best_effort", 5)) == "best_effort, volatile, keep_last(5)"
    assert describe_qos(static_tf_qos()) == "reliable, transient_local, keep_last(100)"
