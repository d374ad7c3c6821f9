"""Message <-> numpy / Boxes3D conversions: round trips, zero-copy, and one clear error per bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from x3kd_core import geometry
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D
from x3kd_ros.conversions import (
    CLASS_COLORS_RGB,
    ConversionError,
    ImageSizeError,
    MarkerStyle,
    boxes_to_detections,
    boxes_to_markers,
    camera_info_to_intrinsics,
    cloud_to_lidar_points,
    cloud_to_radar_points,
    cloud_to_structured,
    compressed_to_rgb,
    detections_to_boxes,
    image_to_rgb,
    intrinsics_to_camera_info,
    lidar_points_to_cloud,
    ns_to_stamp,
    radar_points_to_cloud,
    rgb_to_compressed,
    rgb_to_image,
    stamp_to_ns,
    structured_to_cloud,
)


def _rgb(h: int = 6, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _raw_image(pixels: np.ndarray, encoding: str, pad: int) -> Image:
    """An Image whose rows carry ``pad`` junk bytes after the pixels."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


# ------------------------------------------------------------------ Time


def test_stamp_ns_round_trip():
    ns = 1_533_151_603_512_404_000 + 7  # a nuScenes-era stamp, odd nanoseconds
    stamp = ns_to_stamp(ns)
    assert (stamp.sec, stamp.nanosec) == (1_533_151_603, 512_404_007) and stamp_to_ns(stamp) == ns
    with pytest.raises(ConversionError, match="must be >= 0 ns"):
        ns_to_stamp(-1)


# ------------------------------------------------------------------ Image


def test_rgb8_round_trip_is_zero_copy():
    rgb = _rgb(900, 1600)
    msg = rgb_to_image(rgb, Header(frame_id="CAM_FRONT"))
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("rgb8", 4800, 900, 1600)
    out = image_to_rgb(msg)
    assert np.array_equal(out, rgb) and out.flags.c_contiguous
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    # Also after a trip through the wire format.
    wire = deserialize_message(serialize_message(msg), Image)
    out = image_to_rgb(wire)
    assert np.array_equal(out, rgb) and np.shares_memory(out, np.frombuffer(wire.data, np.uint8))


def test_rgb8_with_row_padding_is_a_strided_view():
    rgb = _rgb()
    msg = _raw_image(rgb, "rgb8", pad=5)
    out = image_to_rgb(msg)
    assert np.array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8)) and out.strides == (7 * 3 + 5, 3, 1)


@pytest.mark.parametrize("pad", [0, 3])
def test_bgr8_is_converted_to_rgb(pad):
    rgb = _rgb()
    msg = rgb_to_image(rgb, encoding="bgr8")
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(6, 7, 3), rgb[..., ::-1])
    assert np.array_equal(image_to_rgb(msg), rgb)
    out = image_to_rgb(_raw_image(rgb[..., ::-1], "bgr8", pad))
    assert np.array_equal(out, rgb) and out.flags.c_contiguous


@pytest.mark.parametrize("pad", [0, 1])
def test_mono8_round_trip_with_padding(pad):
    gray = _rgb()[..., 0]
    msg = rgb_to_image(gray, encoding="mono8")
    assert (msg.step, len(msg.data)) == (7, 42)
    padded = _raw_image(gray[..., None], "mono8", pad)
    for m in (msg, padded):
        out = image_to_rgb(m)
        assert out.shape == (6, 7, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))


def test_rgba8_and_bgra8_drop_alpha():
    rgb = _rgb()
    alpha = np.full((6, 7, 1), 17, np.uint8)
    out = image_to_rgb(_raw_image(np.concatenate([rgb, alpha], axis=2), "rgba8", pad=2))
    assert np.array_equal(out, rgb)
    out = image_to_rgb(_raw_image(np.concatenate([rgb[..., ::-1], alpha], axis=2), "bgra8", pad=0))
    assert np.array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "bgra8"])
def test_empty_images(encoding):
    msg = Image(height=0, width=0, encoding=encoding, step=0)
    assert image_to_rgb(msg).shape == (0, 0, 3)


def test_bad_images_raise_naming_the_field():
    rgb = _rgb()
    msg = _raw_image(rgb, "16UC1", pad=0)
    with pytest.raises(ConversionError, match=r"Image.encoding '16UC1' is not supported"):
        image_to_rgb(msg)
    msg = _raw_image(rgb, "rgb8", pad=0)
    msg.step = 20  # < 7 * 3
    with pytest.raises(ConversionError, match=r"Image.step 20 is shorter than width \* channels = 7 \* 3 = 21"):
        image_to_rgb(msg)
    msg = _raw_image(rgb, "rgb8", pad=0)
    msg.height = 5
    with pytest.raises(ConversionError, match=r"Image.data has 126 bytes, expected step \* height = 21 \* 5 = 105"):
        image_to_rgb(msg)
    with pytest.raises(ConversionError, match="must be uint8"):
        rgb_to_image(rgb.astype(np.float32))
    with pytest.raises(ConversionError, match=r"needs an \(H, W, 3\)"):
        rgb_to_image(rgb[..., :2])


# ------------------------------------------------------------------ cv_bridge as the reference; Bayer; YUV 4:2:2
# cv_bridge (PyPI cv-bridge 1.13.0.post0, a pure-Python port with vision_opencv's API and conversion
# codes) is the reference where it is right: unpadded rows. It reads ``data`` as if step == width * bpp,
# so a padded step gives it wrong pixels without an error (shown below): it never sees one here; the
# padded message's expected pixels are cv_bridge's answer for the same pixels without padding. It
# has no type for yuv422 (KeyError) and no bayer_grbg8 -> rgb8 entry; those are checked against
# the mosaic / BT.601 definitions instead.

_BAYER = {  # ROS pattern -> which RGB channel each position of the 2 x 2 block samples
    "bayer_rggb8": ((0, 1), (1, 2)), "bayer_bggr8": ((2, 1), (1, 0)),
    "bayer_gbrg8": ((1, 2), (0, 1)), "bayer_grbg8": ((1, 0), (2, 1)),
}


def _cv_bridge_rgb(msg: Image) -> np.ndarray:
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv-bridge (PyPI, tools/requirements.txt) is not installed")
    from x3kd_ros.conversions import IMAGE_ENCODINGS

    assert msg.step == msg.width * IMAGE_ENCODINGS[msg.encoding], "cv_bridge reads padded rows wrongly"
    return np.asarray(cv_bridge.CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8"))


def _mosaic(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """The (H, W) raw frame a Bayer sensor with ``encoding``'s pattern records of ``rgb``."""
    raw = np.empty(rgb.shape[:2], np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            raw[dy::2, dx::2] = rgb[dy::2, dx::2, _BAYER[encoding][dy][dx]]
    return raw


def _packed(pixels: np.ndarray, encoding: str, pad: int) -> Image:
    """An Image of ``encoding`` whose rows are ``pixels`` ((H, W) or (H, W, C) uint8) plus ``pad`` bytes."""
    return _raw_image(pixels if pixels.ndim == 3 else pixels[..., None], encoding, pad)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8",
                                      "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8"])
@pytest.mark.parametrize("pad", [0, 6])
def test_image_to_rgb_matches_cv_bridge(encoding, pad):
    rng = np.random.default_rng(3)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(encoding, 1)
    pixels = rng.integers(0, 256, (12, 16, channels) if channels > 1 else (12, 16), dtype=np.uint8)
    expected = _cv_bridge_rgb(_packed(pixels, encoding, 0))
    assert expected.shape == (12, 16, 3)
    msg = _packed(pixels, encoding, pad)
    wire = deserialize_message(serialize_message(msg), Image)  # data as rclpy hands it to a callback
    for m in (msg, wire):
        assert np.array_equal(image_to_rgb(m), expected)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "bayer_rggb8", "uyvy"])
@pytest.mark.parametrize("pad", [0, 6])
def test_resize_from_the_buffer_equals_convert_then_resize(encoding, pad):
    """What the detector node does at receive time: the network input in one resize from the
    message buffer, byte-equal to the full-size conversion followed by the Predictor's resize."""
    from x3kd_core.data.nuscenes import ImageTransform

    rng = np.random.default_rng(5)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "uyvy": 2}.get(encoding, 1)
    pixels = rng.integers(0, 256, (90, 160, channels) if channels > 1 else (90, 160), dtype=np.uint8)
    msg = _packed(pixels, encoding, pad) if channels != 2 else _raw_image(pixels, encoding, pad)
    tf = ImageTransform.fit((90, 160), (32, 48), None, 0.0)
    small = image_to_rgb(msg, resize=tf)
    assert small.shape == (32, 48, 3) and small.dtype == np.uint8
    assert np.array_equal(small, tf.apply(image_to_rgb(msg), cv2.INTER_LINEAR))


def test_resize_from_the_buffer_makes_no_full_size_copy():
    """A 1600 x 900 rgb8 / bgr8 image resized to 176 x 99: the largest new array is the resized
    image (52 kB), never a full-size RGB copy (4.3 MB). numpy and OpenCV's Python bindings
    allocate output arrays through numpy, which tracemalloc sees."""
    import tracemalloc

    from x3kd_core.data.nuscenes import ImageTransform

    rgb = _rgb(900, 1600)
    tf = ImageTransform.fit((900, 1600), (64, 176), None, 0.0)
    for encoding in ("rgb8", "bgr8"):
        msg = rgb_to_image(rgb, encoding=encoding)
        image_to_rgb(msg, resize=tf)  # warm-up (OpenCV's own buffers)
        tracemalloc.start()
        try:
            small = image_to_rgb(msg, resize=tf)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert small.shape == (64, 176, 3)
        assert peak < 0.5e6, (encoding, peak)
    tracemalloc.start()
    try:
        tf.apply(image_to_rgb(rgb_to_image(rgb, encoding="bgr8")), cv2.INTER_LINEAR)
        _, peak_full = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_full > 4e6  # the check above can see a full-size copy


def test_compressed_resize_and_size_check():
    from x3kd_core.data.nuscenes import ImageTransform

    msg = rgb_to_compressed(_rgb(90, 160), fmt="png")
    tf = ImageTransform.fit((90, 160), (32, 48), None, 0.0)
    assert np.array_equal(compressed_to_rgb(msg, resize=tf, expected_hw=(90, 160)),
                          tf.apply(compressed_to_rgb(msg), cv2.INTER_LINEAR))
    with pytest.raises(ImageSizeError, match="decodes to 90 x 160, expected 45 x 80") as err:
        compressed_to_rgb(msg, resize=tf, expected_hw=(45, 80))
    assert err.value.actual_hw == (90, 160)


def test_cv_bridge_reads_a_padded_step_wrongly_so_it_never_gets_one():
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv-bridge (PyPI, tools/requirements.txt) is not installed")
    rgb = _rgb()
    padded = _raw_image(rgb, "rgb8", pad=5)
    bridged = cv_bridge.CvBridge().imgmsg_to_cv2(padded, "rgb8")  # no error ...
    assert bridged.shape == rgb.shape and not np.array_equal(bridged, rgb)  # ... but rows 1.. are shifted
    assert np.array_equal(bridged[0], rgb[0])
    assert np.array_equal(image_to_rgb(padded), rgb)


@pytest.mark.parametrize("encoding", list(_BAYER))
@pytest.mark.parametrize("pad", [0, 3])
def test_bayer_patterns_demosaic_to_the_scene(encoding, pad):
    """Each ROS pattern name means its own layout (OpenCV names them one pixel diagonally on): a smooth
    scene recorded through the mosaic comes back within a few levels away from the border."""
    y, x = np.mgrid[0:24, 0:32]
    scene = np.stack([x * 8, y * 10, 255 - x * 4 - y * 3], axis=2).astype(np.uint8)
    out = image_to_rgb(_packed(_mosaic(scene, encoding), encoding, pad))
    assert out.shape == scene.shape and out.flags.c_contiguous
    error = np.abs(out[2:-2, 2:-2].astype(int) - scene[2:-2, 2:-2])
    assert error.max() <= 6, (encoding, error.max())
    for other in set(_BAYER) - {encoding}:  # a wrong pattern name gives visibly wrong colours
        wrong = image_to_rgb(_packed(_mosaic(scene, encoding), other, pad))
        assert np.abs(wrong[2:-2, 2:-2].astype(int) - scene[2:-2, 2:-2]).max() > 40


def _bt601_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 video range YUV -> RGB (the conversion cv_bridge / OpenCV use for yuv422)."""
    c, d, e = y.astype(float) - 16, u.astype(float) - 128, v.astype(float) - 128
    rgb = np.stack([1.164 * c + 1.596 * e, 1.164 * c - 0.392 * d - 0.813 * e, 1.164 * c + 2.017 * d], axis=-1)
    return np.clip(np.round(rgb), 0, 255)


@pytest.mark.parametrize("encoding, order", [("uyvy", "UYVY"), ("yuv422", "UYVY"),
                                             ("yuyv", "YUYV"), ("yuv422_yuy2", "YUYV")])
@pytest.mark.parametrize("pad", [0, 4])
def test_yuv422_to_rgb(encoding, order, pad):
    rng = np.random.default_rng(4)
    h, w = 6, 10
    y = rng.integers(16, 236, (h, w), dtype=np.uint8)
    u = rng.integers(16, 241, (h, w // 2), dtype=np.uint8)  # one U and one V per pixel pair
    v = rng.integers(16, 241, (h, w // 2), dtype=np.uint8)
    packed = np.empty((h, w // 2, 4), np.uint8)
    for i, name in enumerate(order):
        packed[..., i] = {"Y": None, "U": u, "V": v}[name] if name != "Y" else 0
    ys = [i for i, name in enumerate(order) if name == "Y"]
    packed[..., ys[0]], packed[..., ys[1]] = y[:, 0::2], y[:, 1::2]
    msg = _packed(packed.reshape(h, w, 2), encoding, pad)
    out = image_to_rgb(msg)
    expected = _bt601_rgb(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    assert out.shape == (h, w, 3) and np.abs(out.astype(int) - expected).max() <= 1
    odd = _packed(packed.reshape(h, w, 2)[:, :9], encoding, 0)
    with pytest.raises(ConversionError, match=r"Image.width 9 is odd"):
        image_to_rgb(odd)


# ------------------------------------------------------------------ CompressedImage


def _smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    # JPEG is lossy on noise; a smooth image bounds its error tightly.
    y, x = np.mgrid[0:h, 0:w]
    red = x * 255 // (w - 1)
    return np.stack([red, y * 255 // (h - 1), 255 - red], axis=2).astype(np.uint8)


def test_compressed_jpeg_round_trip_within_tolerance():
    rgb = _smooth_rgb()
    msg = rgb_to_compressed(rgb, Header(frame_id="cam"), fmt="jpeg", jpeg_quality=95)
    assert msg.format == "rgb8; jpeg compressed bgr8" and bytes(msg.data[:2]) == b"\xff\xd8"
    out = compressed_to_rgb(msg)
    err = np.abs(out.astype(int) - rgb.astype(int))
    assert out.shape == rgb.shape and err.mean() < 1.5 and err.max() <= 12
    # Channels are not swapped: red and blue mirror each other, a swap would cost a mean error of ~43.
    assert np.abs(out.astype(int) - rgb[..., ::-1].astype(int)).mean() > 30


def test_compressed_png_is_lossless_and_legacy_format_names_decode():
    rgb = _rgb(20, 30)
    msg = rgb_to_compressed(rgb, fmt="png")
    assert np.array_equal(compressed_to_rgb(msg), rgb)
    msg.format = "png"
    assert np.array_equal(compressed_to_rgb(msg), rgb)


def test_bad_compressed_images_raise():
    msg = rgb_to_compressed(_smooth_rgb())
    msg.format = "theora"
    with pytest.raises(ConversionError, match="CompressedImage.format 'theora' is neither jpeg nor png"):
        compressed_to_rgb(msg)
    bad = CompressedImage(format="jpeg")
    with pytest.raises(ConversionError, match="CompressedImage.data is empty"):
        compressed_to_rgb(bad)
    bad.data = b"not a jpeg at all"
    with pytest.raises(ConversionError, match=r"CompressedImage.data \(17 bytes\) could not be decoded"):
        compressed_to_rgb(bad)


# ------------------------------------------------------------------ CameraInfo


def test_camera_info_round_trip():
    k = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    msg = intrinsics_to_camera_info(k, (900, 1600), Header(frame_id="CAM_FRONT"))
    assert msg.p[0] == 1266.4 and msg.p[3] == 0.0 and msg.distortion_model == "plumb_bob"
    wire = deserialize_message(serialize_message(msg), CameraInfo)
    intr = camera_info_to_intrinsics(wire)
    assert np.array_equal(intr.k, k) and intr.image_hw == (900, 1600)
    assert intr.distortion.tolist() == [0.0] * 5


@pytest.mark.parametrize(
    "k, match",
    [
        (np.zeros(9), r"CameraInfo.k is all zeros"),
        (np.array([500, 0, 320, 0, np.nan, 240, 0, 0, 1.0]), r"CameraInfo.k has non-finite entries"),
        (np.array([-500, 0, 320, 0, 500, 240, 0, 0, 1.0]), r"CameraInfo.k needs fx > 0 and fy > 0"),
        (np.array([500, 0, 320, 0, 500, 240, 0, 0, 0.0]), r"CameraInfo.k last row must be \(0, 0, 1\)"),
    ],
)
def test_bad_camera_info_raises(k, match):
    msg = CameraInfo(height=480, width=640)
    msg.k = k
    with pytest.raises(ConversionError, match=match):
        camera_info_to_intrinsics(msg)


def test_camera_info_without_size_raises():
    msg = intrinsics_to_camera_info(np.diag([500.0, 500.0, 1.0]), (480, 640))
    msg.width = 0
    with pytest.raises(ConversionError, match="CameraInfo.height/width must be > 0"):
        camera_info_to_intrinsics(msg)


# ------------------------------------------------------------------ PointCloud2


def _lidar_points(n: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-50, 50, (n, 3))
    return np.concatenate(
        [xyz, rng.uniform(0, 255, (n, 1)), rng.integers(0, 32, (n, 1)), rng.uniform(0, 0.05, (n, 1))], axis=1
    ).astype(np.float32)


# A Velodyne-like layout: 4 bytes padding after z, ring as uint16, 6 bytes padding at the end.
_PADDED_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "ring", "time"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
        "offsets": [0, 4, 8, 16, 20, 24],
        "itemsize": 34,
    }
)


def test_lidar_cloud_round_trip_with_ring_and_time():
    pts = _lidar_points()
    fields = ("x", "y", "z", "intensity", "ring", "time")
    msg = lidar_points_to_cloud(pts, Header(frame_id="LIDAR_TOP"), fields=fields)
    assert msg.point_step == 22 and [f.datatype for f in msg.fields] == [7, 7, 7, 7, 4, 7]
    wire = deserialize_message(serialize_message(msg), PointCloud2)
    out = cloud_to_lidar_points(wire)
    assert out.fields == fields and out.num_nan == 0
    assert np.array_equal(out.points, pts)
    assert out.column("ring").tolist() == pts[:, 4].tolist()


def test_padded_point_step_reads_without_copy():
    pts = _lidar_points(50, seed=1)
    structured = np.zeros(50, dtype=_PADDED_DTYPE)
    for i, name in enumerate(_PADDED_DTYPE.names):
        structured[name] = pts[:, i]
    msg = structured_to_cloud(structured)
    assert (msg.point_step, [f.offset for f in msg.fields]) == (34, [0, 4, 8, 16, 20, 24])
    view = cloud_to_structured(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    out = cloud_to_lidar_points(msg)
    assert out.fields == ("x", "y", "z", "intensity", "ring", "time") and np.array_equal(out.points, pts)


def test_organized_cloud_with_row_padding():
    pts = _lidar_points(12, seed=2)[:, :4]
    flat = lidar_points_to_cloud(pts)
    rows = np.frombuffer(flat.data, np.uint8).reshape(3, 4 * 16)
    msg = PointCloud2(height=3, width=4, fields=flat.fields, point_step=16, row_step=4 * 16 + 8)
    msg.data = np.concatenate([rows, np.full((3, 8), 0xFF, np.uint8)], axis=1).tobytes()
    out = cloud_to_lidar_points(msg)
    assert np.array_equal(out.points, pts)


def test_nan_points_are_counted_and_dropped_or_kept():
    pts = _lidar_points(10, seed=3)[:, :4]
    pts[[2, 7], 0] = np.nan
    pts[5, 2] = np.inf
    pts[4, 3] = np.nan  # a nan intensity alone does not make the point invalid
    msg = lidar_points_to_cloud(pts)
    dropped = cloud_to_lidar_points(msg)
    assert dropped.num_nan == 3 and dropped.points.shape == (7, 4)
    assert np.array_equal(dropped.points[:, :3], np.delete(pts, [2, 5, 7], axis=0)[:, :3])
    kept = cloud_to_lidar_points(msg, drop_nan=False)
    assert kept.num_nan == 3 and kept.points.shape == (10, 4)
    assert np.array_equal(kept.points, pts, equal_nan=True)


def test_radar_cloud_round_trip():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(25, 6)).astype(np.float32)
    out = cloud_to_radar_points(radar_points_to_cloud(pts, Header(frame_id="RADAR_FRONT")))
    assert out.fields == ("x", "y", "z", "rcs", "vx_comp", "vy_comp") and np.array_equal(out.points, pts)
    with pytest.raises(ConversionError, match=r"PointCloud2.fields lacks \['rcs', 'vx_comp', 'vy_comp'\]"):
        cloud_to_radar_points(lidar_points_to_cloud(_lidar_points(5)[:, :4]))


def test_empty_clouds():
    out = cloud_to_lidar_points(lidar_points_to_cloud(np.zeros((0, 4), np.float32)))
    assert out.points.shape == (0, 4) and out.num_nan == 0
    out = cloud_to_lidar_points(PointCloud2())  # a default message: no fields, no points
    assert out.points.shape == (0, 4) and out.fields == ("x", "y", "z", "intensity")
    out = cloud_to_radar_points(PointCloud2())
    assert out.points.shape == (0, 6)


def test_bad_clouds_raise_naming_the_field():
    msg = lidar_points_to_cloud(_lidar_points(5)[:, :4])
    msg.is_bigendian = True
    with pytest.raises(ConversionError, match="PointCloud2.is_bigendian is true"):
        cloud_to_lidar_points(msg)
    msg = lidar_points_to_cloud(_lidar_points(5)[:, :3], fields=("x", "y", "z"))
    with pytest.raises(ConversionError, match=r"PointCloud2.fields lacks \['intensity'\]"):
        cloud_to_lidar_points(msg)
    msg = lidar_points_to_cloud(_lidar_points(5)[:, :4])
    msg.fields[3].offset = 14  # 14 + 4 > point_step 16
    with pytest.raises(ConversionError, match=r"PointCloud2.fields\[3\] 'intensity' .* runs past PointCloud2.point_step 16"):
        cloud_to_lidar_points(msg)
    msg = lidar_points_to_cloud(_lidar_points(5)[:, :4])
    msg.width = 6
    with pytest.raises(ConversionError, match=r"PointCloud2.row_step 80 is shorter than width \* point_step = 96"):
        cloud_to_lidar_points(msg)
    msg.row_step = 96
    with pytest.raises(ConversionError, match=r"PointCloud2.data has 80 bytes, expected row_step \* height = 96"):
        cloud_to_lidar_points(msg)
    msg = lidar_points_to_cloud(_lidar_points(5)[:, :4])
    msg.fields[1].datatype = 42
    with pytest.raises(ConversionError, match=r"PointCloud2.fields\[1\] 'y' has unknown datatype 42"):
        cloud_to_lidar_points(msg)
    msg = lidar_points_to_cloud(_lidar_points(5)[:, :4])
    msg.fields[3] = PointField(name="intensity", offset=12, datatype=PointField.UINT8, count=4)
    with pytest.raises(ConversionError, match=r"PointCloud2.fields\[3\] 'intensity' must have count 1"):
        cloud_to_lidar_points(msg)


# ------------------------------------------------------------------ Detection3DArray


def _boxes(n: int = 40, seed: int = 0) -> Boxes3D:
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-np.pi, np.pi, n)
    yaw[: min(n, 3)] = (np.pi, -np.pi, 0.0)[: min(n, 3)]  # both ends of the range
    return Boxes3D(
        center=rng.uniform(-50, 50, (n, 3)),
        size_lwh=rng.uniform(0.3, 12.0, (n, 3)),
        yaw=yaw,
        velocity=rng.normal(size=(n, 2)),
        label=rng.integers(0, len(DETECTION_CLASSES), n),
        score=rng.uniform(0, 1, n),
        token=[f"tok{i}" for i in range(n)],
    )


def test_boxes_detections_round_trip():
    from vision_msgs.msg import Detection3DArray

    boxes = _boxes()
    header = Header(frame_id="base_link")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = boxes_to_detections(boxes, header)
    assert len(msg.detections) == 40 and msg.header.frame_id == "base_link"
    wire = deserialize_message(serialize_message(msg), Detection3DArray)
    back = detections_to_boxes(wire)
    np.testing.assert_allclose(back.center, boxes.center, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.size_lwh, boxes.size_lwh, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.score, boxes.score, rtol=0, atol=1e-7)
    assert back.label.tolist() == boxes.label.tolist() and back.token == boxes.token
    # Yaw: same angle, and always in (-pi, pi].
    assert np.all(back.yaw > -np.pi) and np.all(back.yaw <= np.pi)
    assert np.abs(geometry.wrap_angle(back.yaw - boxes.yaw)).max() < 1e-6
    np.testing.assert_allclose(back.yaw[3:], boxes.yaw[3:], rtol=0, atol=1e-6)
    assert back.yaw[0] == pytest.approx(np.pi, abs=1e-12) and back.yaw[1] == pytest.approx(np.pi, abs=1e-12)
    assert np.isnan(back.velocity).all()
    d = wire.detections[0]
    assert (d.header.stamp.sec, d.header.stamp.nanosec, d.header.frame_id) == (12, 345, "base_link")
    assert d.results[0].pose.pose == d.bbox.center


def test_detection_fields_follow_the_box_frame_convention():
    boxes = Boxes3D(
        center=[[10.0, -2.0, 0.9]], size_lwh=[[4.5, 1.9, 1.6]], yaw=[np.pi / 2], velocity=[[1.0, 2.0]],
        label=[DETECTION_CLASSES.index("truck")], score=[0.75],
    )
    det = boxes_to_detections(boxes, Header()).detections[0]
    assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == (4.5, 1.9, 1.6)  # length along heading
    q = det.bbox.center.orientation
    assert (q.x, q.y) == (0.0, 0.0) and q.w == pytest.approx(np.sqrt(0.5)) and q.z == pytest.approx(np.sqrt(0.5))
    assert (det.results[0].hypothesis.class_id, det.results[0].hypothesis.score) == ("truck", 0.75)
    assert len(det.results) == 1 and det.id == ""
    assert len(detections_to_boxes(boxes_to_detections(Boxes3D.empty(), Header()))) == 0


def _one_detection_msg():
    boxes = _boxes(3, seed=1)
    return boxes_to_detections(boxes, Header())


def test_bad_detections_raise_naming_the_field():
    msg = _one_detection_msg()
    msg.detections[1].results = []
    with pytest.raises(ConversionError, match=r"detections\[1\].results is empty"):
        detections_to_boxes(msg)
    msg = _one_detection_msg()
    msg.detections[2].results[0].hypothesis.class_id = "dog"
    with pytest.raises(ConversionError, match=r"detections\[2\].results\[0\].hypothesis.class_id 'dog'"):
        detections_to_boxes(msg)
    msg = _one_detection_msg()
    q = msg.detections[0].bbox.center.orientation
    q.w = q.x = q.y = q.z = 0.0
    with pytest.raises(ConversionError, match=r"detections\[0\].bbox.center.orientation is zero"):
        detections_to_boxes(msg)
    msg = _one_detection_msg()
    q = msg.detections[0].bbox.center.orientation  # 90 deg about y: a camera-frame "yaw"
    q.w, q.x, q.y, q.z = np.sqrt(0.5), 0.0, np.sqrt(0.5), 0.0
    with pytest.raises(ConversionError, match=r"detections\[0\].bbox.center.orientation tilts the box z axis by 1.5708"):
        detections_to_boxes(msg)
    msg = _one_detection_msg()
    msg.detections[1].bbox.size.y = -1.0
    with pytest.raises(ConversionError, match=r"detections\[1\].bbox.size must be finite and >= 0"):
        detections_to_boxes(msg)
    msg = _one_detection_msg()
    msg.detections[0].bbox.center.position.x = float("nan")
    with pytest.raises(ConversionError, match=r"detections\[0\].bbox.center.position is not finite"):
        detections_to_boxes(msg)


# ------------------------------------------------------------------ MarkerArray


def test_markers_lines_with_text():
    boxes = _boxes(3, seed=2)
    header = Header(frame_id="base_link")
    markers = boxes_to_markers(boxes, header, MarkerStyle(kind="lines", lifetime_s=0.25)).markers
    assert len(markers) == 1 + 3 * 2
    assert markers[0].action == Marker.DELETEALL
    box_markers = [m for m in markers[1:] if m.type == Marker.LINE_LIST]
    text_markers = [m for m in markers[1:] if m.type == Marker.TEXT_VIEW_FACING]
    assert [m.id for m in box_markers] == [0, 1, 2] and [m.id for m in text_markers] == [0, 1, 2]
    corners = boxes.corners()
    for i, m in enumerate(box_markers):
        pts = np.array([[p.x, p.y, p.z] for p in m.points])
        assert pts.shape == (26, 3)  # 12 edges + heading tick
        np.testing.assert_allclose(pts[0], corners[i, 0])  # first edge starts at corner 0
        np.testing.assert_allclose(pts[23], corners[i, 7])  # last vertical edge ends at corner 7
        # The heading tick ends on the front face centre.
        front = boxes.center[i] + 0.5 * boxes.size_lwh[i, 0] * np.array([np.cos(boxes.yaw[i]), np.sin(boxes.yaw[i]), 0])
        np.testing.assert_allclose(pts[25], front)
        r, g, b = CLASS_COLORS_RGB[boxes.label[i]]
        assert (m.color.r, m.color.g, m.color.b) == pytest.approx((r, g, b))
        assert (m.lifetime.sec, m.lifetime.nanosec) == (0, 250_000_000) and m.header.frame_id == "base_link"
    assert text_markers[0].text == f"{DETECTION_CLASSES[boxes.label[0]]} {boxes.score[0]:.2f}"


def test_markers_cube_without_text():
    boxes = _boxes(2, seed=3)
    markers = boxes_to_markers(boxes, Header(), MarkerStyle(kind="cube", show_text=False, lifetime_s=1.5)).markers
    assert [m.type for m in markers[1:]] == [Marker.CUBE, Marker.CUBE]
    m = markers[2]
    assert (m.scale.x, m.scale.y, m.scale.z) == tuple(boxes.size_lwh[1])
    assert geometry.quaternion_to_yaw(
        [m.pose.orientation.w, m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z]
    ) == pytest.approx(float(geometry.wrap_angle(boxes.yaw[1])), abs=1e-9)
    assert (m.lifetime.sec, m.lifetime.nanosec) == (1, 500_000_000)
    assert len(boxes_to_markers(Boxes3D.empty(), Header()).markers) == 1
