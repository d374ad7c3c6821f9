import numpy as np
import pytest

from x3kd_core import geometry
from x3kd_core.structures import Boxes3D, CameraRig


def _boxes():
    return Boxes3D(
        center=[[10.0, 0.0, 1.0], [0.0, -5.0, 0.5]],
        size_lwh=[[4.0, 2.0, 1.5], [0.5, 0.5, 1.8]],
        yaw=[0.0, 1.0],
        velocity=[[5.0, 0.0], [np.nan, np.nan]],
        label=[0, 8],
        score=[1.0, 0.5],
    )


def test_boxes_indexing_and_names():
    boxes = _boxes()
    assert len(boxes) == 2
    assert boxes.class_names == ["car", "pedestrian"]
    sub = boxes[np.array([False, True])]
    assert len(sub) == 1 and sub.label[0] == 8
    assert len(Boxes3D.concatenate([boxes, sub])) == 3
    assert len(Boxes3D.empty()) == 0


def test_boxes_reject_bad_label():
    with pytest.raises(ValueError, match="label out of range"):
        Boxes3D(center=[[0, 0, 0]], size_lwh=[[1, 1, 1]], yaw=[0], velocity=[[0, 0]], label=[10], score=[1])


def test_boxes_transformed_by_yaw_only_frame():
    boxes = _boxes()
    t = geometry.make_transform(geometry.yaw_to_quaternion(np.pi / 2), [1.0, 0.0, 0.0])
    moved = boxes.transformed(t)
    np.testing.assert_allclose(moved.center[0], [1.0, 10.0, 1.0], atol=1e-12)
    assert moved.yaw[0] == pytest.approx(np.pi / 2)
    np.testing.assert_allclose(moved.velocity[0], [0.0, 5.0], atol=1e-12)


def test_camera_rig_projects_a_point_ahead_of_the_front_camera():
    # camera at 1.5 m height looking along +x: camera z = ego x, camera x = -ego y, camera y = -ego z
    cam_to_ego = np.eye(4)
    cam_to_ego[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    cam_to_ego[:3, 3] = [1.0, 0.0, 1.5]
    k = np.array([[200.0, 0, 100.0], [0, 200.0, 50.0], [0, 0, 1]])
    rig = CameraRig(names=["CAM_FRONT"], intrinsics=k[None], cam_to_ego=cam_to_ego[None], image_hw=(100, 200))
    uv, depth = rig.ego_to_image(np.array([[11.0, 1.0, 1.5]]), 0)
    # 10 m ahead, 1 m to the left -> u = 100 - 200 * 1 / 10 = 80, v = principal row
    np.testing.assert_allclose(uv[0], [80.0, 50.0])
    assert depth[0] == pytest.approx(10.0)
