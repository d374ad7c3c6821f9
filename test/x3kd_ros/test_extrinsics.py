"""Static transform tree, calibration YAML fallback, and the nodes' extrinsics provider."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import TransformStamped

from x3kd_core import geometry
from x3kd_ros.extrinsics import (
    ExtrinsicsError,
    StaticTransformTree,
    calibration_yaml_text,
    load_calibration_yaml,
    synthetic_rig_transforms,
    transform_stamped_to_matrix,
)
from x3kd_ros.nodes.extrinsics_source import ExtrinsicsProvider
from x3kd_ros.nodes.params import ParameterError

CALIBRATION = Path(__file__).resolve().parents[2] / "config" / "ros" / "calibration_synthetic.yaml"


def yaw_transform(yaw_deg: float, translation) -> np.ndarray:
    return geometry.make_transform(geometry.yaw_to_quaternion(np.deg2rad(yaw_deg)), translation)


def stamped(parent: str, child: str, matrix: np.ndarray) -> TransformStamped:
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = parent, child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = matrix[:3, 3]
    q = geometry.matrix_to_quaternion(matrix[:3, :3])
    t.transform.rotation.w, t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z = q
    return t


def test_lookup_composes_a_chain_and_inverts():
    tree = StaticTransformTree()
    tree.add("base_link", "roof", yaw_transform(90, (1.0, 0.0, 2.0)))
    tree.add("roof", "cam", yaw_transform(0, (0.5, 0.0, 0.0)))
    tree.add("base_link", "radar", yaw_transform(180, (3.0, 0.0, 0.5)))
    # cam origin: 0.5 m along the roof's x, which is the base's y -> (1, 0.5, 2).
    np.testing.assert_allclose(tree.lookup("base_link", "cam")[:3, 3], [1.0, 0.5, 2.0], atol=1e-12)
    # A point 1 m in front of the radar (which faces backwards) is 2 m ahead of the base, in the cam frame:
    p_cam = geometry.transform_points(tree.lookup("cam", "radar"), np.array([[1.0, 0.0, 0.0]]))
    p_base = geometry.transform_points(tree.lookup("base_link", "cam"), p_cam)
    np.testing.assert_allclose(p_base, [[2.0, 0.0, 0.5]], atol=1e-12)
    assert tree.lookup("base_link", "nowhere") is None
    np.testing.assert_array_equal(tree.lookup("cam", "cam"), np.eye(4))
    tree.add("base_link", "cam", np.eye(4))  # a re-sent transform replaces the old edge
    np.testing.assert_array_equal(tree.lookup("base_link", "cam"), np.eye(4))


def test_tree_rejects_cycles_and_bad_quaternions():
    tree = StaticTransformTree()
    tree.add("a", "b", np.eye(4))
    tree.add("b", "c", np.eye(4))
    with pytest.raises(ExtrinsicsError, match="cycle"):
        tree.add("c", "a", np.eye(4))
    bad = stamped("base_link", "cam", np.eye(4))
    bad.transform.rotation.w = 0.0  # zero quaternion
    with pytest.raises(ExtrinsicsError, match="norm 0.000000"):
        transform_stamped_to_matrix(bad)


def test_checked_in_calibration_equals_the_synthetic_rig():
    calibration = load_calibration_yaml(CALIBRATION)
    rig = synthetic_rig_transforms()
    assert calibration.base_frame == "base_link"
    assert sorted(calibration.transforms) == sorted(rig) and len(rig) == 12
    for frame, matrix in rig.items():
        np.testing.assert_allclose(calibration.transforms[frame], matrix, atol=1e-8, err_msg=frame)
    # Camera frames are optical: the front camera's z (viewing direction) is the ego's +x.
    np.testing.assert_allclose(rig["cam_front"][:3, 2], [1.0, 0.0, 0.0], atol=1e-12)


def test_calibration_yaml_round_trip_and_errors(tmp_path):
    transforms = {"cam": yaw_transform(33.0, (1.0, -2.0, 3.0)), "lidar": yaw_transform(-90.0, (0.9, 0.0, 1.8))}
    path = tmp_path / "calib.yaml"
    path.write_text(calibration_yaml_text("base_link", transforms, "test rig"))
    loaded = load_calibration_yaml(path)
    for frame, matrix in transforms.items():
        np.testing.assert_allclose(loaded.transforms[frame], matrix, atol=1e-8)
    path.write_text("base_frame: base_link\ntransforms:\n  cam: {translation_m: [0, 0], rotation_wxyz: [1, 0, 0, 0]}\n")
    with pytest.raises(ExtrinsicsError, match=r"transforms.cam: translation must be 3 finite numbers"):
        load_calibration_yaml(path)
    path.write_text("base_frame: base_link\ntransforms:\n  cam: {translation_m: [0, 0, 0], rotation: [1, 0, 0, 0]}\n")
    with pytest.raises(ExtrinsicsError, match="needs exactly translation_m and rotation_wxyz"):
        load_calibration_yaml(path)
    path.write_text("base_frame: base_link\ntransforms:\n  cam: {translation_m: [0, 0, 0], rotation_wxyz: [2, 0, 0, 0]}\n")
    with pytest.raises(ExtrinsicsError, match="norm 2.000000"):
        load_calibration_yaml(path)


def test_provider_prefers_tf_static_over_the_file(ros_context):
    node = rclpy.create_node("x3kd_test_extrinsics", context=ros_context)
    try:
        provider = ExtrinsicsProvider(node, "base_link", "auto", "calibration_synthetic.yaml")
        rig = synthetic_rig_transforms()
        np.testing.assert_allclose(provider.lookup("cam_front"), rig["cam_front"], atol=1e-8)
        moved = yaw_transform(0.0, (5.0, 0.0, 1.0)) @ rig["cam_front"]
        bad = stamped("base_link", "cam_back", np.eye(4))
        bad.transform.rotation.w = 3.0
        provider.on_tf_static(types.SimpleNamespace(transforms=[stamped("base_link", "cam_front", moved), bad]))
        np.testing.assert_allclose(provider.lookup("cam_front"), moved, atol=1e-9)  # /tf_static wins
        np.testing.assert_allclose(provider.lookup("cam_back"), rig["cam_back"], atol=1e-8)  # bad one ignored
        assert (provider.tf_messages, provider.tf_errors) == (1, 1)
        assert provider.lookup("cam_roof") is None

        with pytest.raises(ParameterError, match="'file' but calibration_file is empty"):
            ExtrinsicsProvider(node, "base_link", "file", "")
        with pytest.raises(ParameterError, match="gives transforms in 'base_link', the node's base_frame is 'ego'"):
            ExtrinsicsProvider(node, "ego", "file", "calibration_synthetic.yaml")
        only_tf = ExtrinsicsProvider(node, "base_link", "tf_static", "calibration_synthetic.yaml")
        assert only_tf.lookup("cam_front") is None  # the file is not read with source tf_static
    finally:
        node.destroy_node()
