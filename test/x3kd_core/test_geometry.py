"""Hand-computed checks of the frame conventions in x3kd_core.geometry."""

import numpy as np
import pytest
from pyquaternion import Quaternion

from x3kd_core import geometry


def test_box_corners_of_a_known_box():
    # A 4 m x 2 m x 1.5 m box at (10, 5, 1) rotated by +90 deg: its length now runs along +y.
    corners = geometry.box_corners(np.array([[10.0, 5.0, 1.0]]), np.array([[4.0, 2.0, 1.5]]), np.array([np.pi / 2]))
    assert corners.shape == (1, 8, 3)
    # corner 0 is local (+l/2, +w/2, -h/2) = (2, 1, -0.75) -> rotated (-1, 2, -0.75) -> + centre
    np.testing.assert_allclose(corners[0, 0], [9.0, 7.0, 0.25], atol=1e-12)
    # corner 6 is local (-l/2, -w/2, +h/2) = (-2, -1, 0.75) -> rotated (1, -2, 0.75)
    np.testing.assert_allclose(corners[0, 6], [11.0, 3.0, 1.75], atol=1e-12)
    np.testing.assert_allclose(corners[0].mean(axis=0), [10.0, 5.0, 1.0], atol=1e-12)


def test_quaternion_roundtrip_and_yaw():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        r = geometry.quaternion_to_matrix(q)
        np.testing.assert_allclose(r, Quaternion(q).rotation_matrix, atol=1e-12)
        np.testing.assert_allclose(geometry.matrix_to_quaternion(r), q, atol=1e-9)
    assert geometry.quaternion_to_yaw(geometry.yaw_to_quaternion(2.5)) == pytest.approx(2.5)
    assert geometry.quaternion_to_yaw(geometry.yaw_to_quaternion(-3.0)) == pytest.approx(-3.0)


def test_nuscenes_box_conversion_roundtrip_matches_devkit():
    from nuscenes.utils.data_classes import Box

    nb = geometry.box_to_nuscenes([1.0, 2.0, 0.5], [4.5, 1.9, 1.6], 0.7)
    assert nb.wlh == (1.9, 4.5, 1.6)  # nuScenes stores width first
    devkit_box = Box(list(nb.center), list(nb.wlh), Quaternion(nb.rotation_wxyz))
    # the devkit's own corner order differs; compare as sets of points
    ours = geometry.box_corners(np.array([nb.center]), np.array([[4.5, 1.9, 1.6]]), np.array([0.7]))[0]
    theirs = devkit_box.corners().T
    dists = np.linalg.norm(ours[:, None, :] - theirs[None, :, :], axis=-1)
    assert np.all(dists.min(axis=1) < 1e-9)
    center, size, yaw = geometry.box_from_nuscenes(nb.center, nb.wlh, nb.rotation_wxyz)
    np.testing.assert_allclose(size, [4.5, 1.9, 1.6])
    assert yaw == pytest.approx(0.7)


def test_projection_of_a_known_point():
    k = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    uv, depth = geometry.project_points(np.array([[1.0, -0.5, 10.0], [0.0, 0.0, -1.0]]), k)
    np.testing.assert_allclose(uv[0], [60.0, 35.0])
    assert depth[0] == 10.0
    assert np.all(np.isnan(uv[1]))


def test_transforms_invert():
    t = geometry.make_transform(geometry.yaw_to_quaternion(0.3), [1.0, 2.0, 3.0])
    pts = np.array([[1.0, 0.0, 0.0, 7.0]])
    moved = geometry.transform_points(t, pts)
    np.testing.assert_allclose(moved[0, :3], [1 + np.cos(0.3), 2 + np.sin(0.3), 3.0])
    assert moved[0, 3] == 7.0  # extra columns untouched
    back = geometry.transform_points(geometry.invert_transform(t), moved)
    np.testing.assert_allclose(back, pts, atol=1e-12)
    assert geometry.wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
