"""Pure conversions between ROS 2 messages and numpy arrays / x3kd types (no node, no rclpy graph).

Every function takes or returns message objects and plain data, so nodes stay thin and the
conversions are tested without a ROS graph. Bad input raises :class:`ConversionError` whose
message names the offending message field (``Image.step``, ``PointCloud2.fields[3] 'ring'``, ...).

Time stamps
    :func:`stamp_to_ns` / :func:`ns_to_stamp`: ``builtin_interfaces/Time`` <-> integer ns (the
    unit of :mod:`x3kd_ros.sync`).

Images
    :func:`image_to_rgb` reads ``sensor_msgs/Image`` in rgb8, bgr8, mono8, rgba8, bgra8, the
    8-bit Bayer patterns (bayer_rggb8 / bggr8 / gbrg8 / grbg8) and YUV 4:2:2 (uyvy = yuv422,
    yuyv = yuv422_yuy2), row padding in ``step`` skipped, into (H, W, 3) uint8 RGB. rgb8 and
    rgba8 come back as a view of ``msg.data`` (no copy; a padded rgb8 or any rgba8 view is
    strided, not C-contiguous), the other encodings go through OpenCV ``cvtColor`` (channel swap,
    demosaicing, YUV -> RGB, with vision_opencv cv_bridge's conversion codes) into a new array.
    With ``resize=`` (an ImageTransform) both resize to the network input in one ``cv2.resize`` call
    from the message buffer (no full-size copy for rgb8 / rgba8 / bgr8 / bgra8 / mono8).
    :func:`rgb_to_image` writes rgb8 / bgr8 (or mono8 for (H, W) input).
    :func:`compressed_to_rgb` / :func:`rgb_to_compressed` handle ``sensor_msgs/CompressedImage``
    (jpeg or png) through OpenCV; the format string follows image_transport
    (``"rgb8; jpeg compressed bgr8"``), and a bare ``"jpeg"`` / ``"png"`` is accepted too.

Camera calibration
    :func:`camera_info_to_intrinsics` / :func:`intrinsics_to_camera_info`: ``CameraInfo.k`` <->
    3x3 K plus (height, width). An all-zero K (ROS' "uncalibrated"), non-finite entries,
    fx or fy <= 0 or a last row other than (0, 0, 1) are rejected.

Point clouds (``sensor_msgs/PointCloud2``)
    :func:`cloud_to_structured` gives a structured array with one named field per PointField,
    zero-copy when rows are not padded (``point_step`` padding between points is fine).
    Big-endian clouds are rejected. :func:`cloud_to_lidar_points` / :func:`cloud_to_radar_points`
    give (P, C) float32 columns (x y z intensity [ring] [time]; x y z rcs vx_comp vy_comp [time])
    and the number of points with a non-finite x, y or z (dropped by default). A cloud with no
    points converts to an empty (0, C) array even if it declares no fields.

Detections
    :func:`boxes_to_detections` / :func:`detections_to_boxes`: ``Boxes3D`` <->
    ``vision_msgs/Detection3DArray``: one Detection3D per box; ``results[0].hypothesis`` carries
    the nuScenes class name and score, ``results[0].pose.pose`` repeats the box pose;
    ``bbox.center`` is the box centre with a yaw-only quaternion; ``bbox.size`` is (length, width,
    height) in the box frame (x along the heading); ``id`` carries ``Boxes3D.token``.
    Velocity has no field in the message: it is not sent, and comes back as nan.
    Yaw comes back in (-pi, pi]. The header is the caller's (frame and stamp of the boxes).
    :func:`boxes_to_markers` draws boxes for RViz as a ``visualization_msgs/MarkerArray``.

``vision_msgs`` is imported only inside the detection functions, so the rest of the module works
where that interface package is not installed.

One file on purpose (issue 14): it is one cohesive thing, the pure ROS message <-> array layer
that the nodes, the bag writer / reader and the tests share; each section is one message family
(time, images, camera info, point clouds, detections, markers) under the same error convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from x3kd_core import geometry
from x3kd_core.structures import DETECTION_CLASSES, Boxes3D

__all__ = [
    "ConversionError",
    "ImageSizeError",
    "stamp_to_ns",
    "ns_to_stamp",
    "image_to_rgb",
    "rgb_to_image",
    "compressed_to_rgb",
    "rgb_to_compressed",
    "CameraIntrinsics",
    "camera_info_to_intrinsics",
    "intrinsics_to_camera_info",
    "cloud_to_structured",
    "structured_to_cloud",
    "PointArray",
    "LIDAR_FIELDS",
    "RADAR_FIELDS",
    "cloud_to_lidar_points",
    "cloud_to_radar_points",
    "lidar_points_to_cloud",
    "radar_points_to_cloud",
    "boxes_to_detections",
    "detections_to_boxes",
    "MarkerStyle",
    "CLASS_COLORS_RGB",
    "boxes_to_markers",
]


class ConversionError(ValueError):
    """A message cannot be converted; the text names the message field at fault."""


def _header(header: Optional[Header]) -> Header:
    return header if header is not None else Header()


# ----------------------------------------------------------------------------------------------
# Time stamps (the synchronizer works on integer nanoseconds)


def stamp_to_ns(stamp: Time) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds (>= 0) -> ``builtin_interfaces/Time``."""
    if ns < 0:
        raise ConversionError(f"Time stamps must be >= 0 ns, got {ns}")
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


# ----------------------------------------------------------------------------------------------
# Images

#: Image encodings :func:`image_to_rgb` reads, with their bytes per pixel (names as in
#: sensor_msgs/image_encodings.hpp; ``yuv422`` / ``yuv422_yuy2`` are the older names of uyvy / yuyv).
IMAGE_ENCODINGS: dict[str, int] = {
    "rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4,
    "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1,
    "uyvy": 2, "yuv422": 2, "yuyv": 2, "yuv422_yuy2": 2,
}
#: OpenCV conversion to RGB of the encodings that need one. OpenCV names a Bayer pattern by the
#: 2 x 2 block starting at pixel (1, 1), ROS by the one at (0, 0), hence RGGB -> BayerBG (the
#: mapping of vision_opencv's cv_bridge). YUV 4:2:2 uses BT.601 video range, as cv_bridge does.
_TO_RGB: dict[str, int] = {
    "bgr8": cv2.COLOR_BGR2RGB, "bgra8": cv2.COLOR_BGRA2RGB, "mono8": cv2.COLOR_GRAY2RGB,
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY, "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2, "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
}


def _image_pixels(msg: Image) -> tuple[np.ndarray, str, int]:
    """Checked (H, W, C) uint8 view of ``msg.data`` (row padding sliced off), its encoding, C."""
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            f"Image.encoding {encoding!r} is not supported (supported: {', '.join(IMAGE_ENCODINGS)})"
        )
    channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels
    if step < row_bytes:
        raise ConversionError(
            f"Image.step {step} is shorter than width * channels = {width} * {channels} = {row_bytes} "
            f"bytes for {encoding}"
        )
    if channels == 2 and width % 2:
        raise ConversionError(f"Image.width {width} is odd: {encoding} (YUV 4:2:2) packs pixels in pairs")
    if len(msg.data) != step * height:
        raise ConversionError(
            f"Image.data has {len(msg.data)} bytes, expected step * height = {step} * {height} = "
            f"{step * height}"
        )
    # Slicing off the row padding and splitting the row into (W, C) keeps this a view.
    pixels = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    return pixels.reshape(height, width, channels), encoding, channels


def _cvt(pixels: np.ndarray, code: int, what: str) -> np.ndarray:
    try:
        return cv2.cvtColor(pixels, code)
    except cv2.error as err:
        raise ConversionError(f"{what}: OpenCV cannot convert a {pixels.shape[0]} x {pixels.shape[1]} image: "
                              f"{str(err).strip().splitlines()[-1]}") from None


#: Encodings whose conversion to RGB works pixel by pixel, so resizing first (on the message's own
#: channels) and converting the small image gives the same bytes as converting first.
_PER_PIXEL = {"rgb8", "rgba8", "bgr8", "bgra8", "mono8"}
#: Per-pixel conversions of the resized image (rgba8 drops alpha).
_SMALL_TO_RGB = {"rgba8": cv2.COLOR_RGBA2RGB, "bgr8": cv2.COLOR_BGR2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
                 "mono8": cv2.COLOR_GRAY2RGB}


def image_to_rgb(msg: Image, resize=None) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB, or resized by ``resize`` straight from the buffer.

    Without ``resize``: rgb8 / rgba8 return a view of ``msg.data`` (writing to it writes the
    message); the other encodings of :data:`IMAGE_ENCODINGS` (bgr8, bgra8, mono8, the 8-bit Bayer
    patterns demosaiced bilinearly, YUV 4:2:2 as uyvy / yuyv) go through OpenCV and return a new
    C-contiguous array. Row padding (``step`` > a row) is skipped in every case.

    ``resize``: an :class:`~x3kd_core.data.nuscenes.ImageTransform` fitted to this image's size (the
    Predictor's ``input_transform``); returns its (out_H, out_W, 3) result. For rgb8, rgba8, bgr8,
    bgra8 and mono8 the one ``cv2.resize`` reads the message buffer in place and the colour
    conversion runs on the small image: no full-size copy, and the same bytes as converting first
    and resizing after (per-channel interpolation commutes with a channel permutation). Bayer and
    YUV images are converted at full size first (demosaicing needs the full grid).

    Raises:
        ConversionError: unsupported ``encoding``, ``step`` shorter than a row, ``data`` whose
            length is not ``step * height``, an odd width for YUV 4:2:2 (two pixels share U and V).
    """
    pixels, encoding, channels = _image_pixels(msg)
    height, width = pixels.shape[:2]
    what = f"Image.encoding {encoding!r}"
    if resize is not None and pixels.size and encoding in _PER_PIXEL:
        small = resize.apply(pixels[..., 0] if channels == 1 else pixels, cv2.INTER_LINEAR)
        return small if encoding == "rgb8" else _cvt(small, _SMALL_TO_RGB[encoding], what)
    if encoding == "rgb8":
        rgb = pixels
    elif encoding == "rgba8":
        rgb = pixels[..., :3]
    elif pixels.size == 0:
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
    else:
        # A reversed-stride view would be rejected by torch.from_numpy, and numpy's strided copy of
        # one is ~10x slower than OpenCV's (18 ms vs 2 ms for 1600x900): convert with cvtColor, which
        # also reads the padded rows in place.
        rgb = _cvt(pixels[..., 0] if channels == 1 else pixels, _TO_RGB[encoding], what)
    return rgb if resize is None else resize.apply(rgb, cv2.INTER_LINEAR)


def rgb_to_image(
    rgb: np.ndarray, header: Optional[Header] = None, encoding: Literal["rgb8", "bgr8", "mono8"] = "rgb8"
) -> Image:
    """(H, W, 3) uint8 RGB -> Image in ``encoding`` rgb8 or bgr8; (H, W) uint8 -> mono8.

    The message owns a copy of the pixels (``step = width * channels``, no padding).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ConversionError(f"image array must be uint8, got {rgb.dtype}")
    if encoding == "mono8":
        if rgb.ndim != 2:
            raise ConversionError(f"mono8 needs an (H, W) array, got shape {rgb.shape}")
        pixels = rgb
    elif encoding in ("rgb8", "bgr8"):
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ConversionError(f"{encoding} needs an (H, W, 3) RGB array, got shape {rgb.shape}")
        pixels = rgb if encoding == "rgb8" or rgb.size == 0 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    else:
        raise ConversionError(f"Image.encoding {encoding!r} cannot be written (use rgb8, bgr8 or mono8)")
    channels = 1 if pixels.ndim == 2 else 3
    msg = Image()
    msg.header = _header(header)
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    # Assigning bytes is a single memcpy into the message's array (a memoryview is ~30x slower);
    # tobytes() also packs a strided input in C order.
    msg.data = pixels.tobytes()
    return msg


def _compressed_kind(fmt: str) -> str:
    # image_transport writes "<encoding>; jpeg compressed bgr8"; older publishers write "jpeg".
    lowered = fmt.lower()
    if "jpeg" in lowered or "jpg" in lowered:
        return "jpeg"
    if "png" in lowered:
        return "png"
    raise ConversionError(f"CompressedImage.format {fmt!r} is neither jpeg nor png")


class ImageSizeError(ConversionError):
    """A decoded image whose size is not the expected one; ``actual_hw`` is its (H, W)."""

    def __init__(self, text: str, actual_hw: tuple[int, int]) -> None:
        super().__init__(text)
        self.actual_hw = actual_hw


def compressed_to_rgb(msg: CompressedImage, resize=None, expected_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg or png) -> (H, W, 3) uint8 RGB (new array).

    ``resize`` (an ImageTransform, as for :func:`image_to_rgb`) resizes the decoded BGR image and
    swaps channels on the small one. ``expected_hw``: raise :class:`ImageSizeError` when the decoded
    image has another (H, W) (a transform fitted to one size must not be applied to another).
    """
    _compressed_kind(msg.format)
    if len(msg.data) == 0:
        raise ConversionError("CompressedImage.data is empty")
    bgr = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConversionError(
            f"CompressedImage.data ({len(msg.data)} bytes) could not be decoded as {msg.format!r}"
        )
    if expected_hw is not None and bgr.shape[:2] != tuple(expected_hw):
        raise ImageSizeError(f"CompressedImage decodes to {bgr.shape[0]} x {bgr.shape[1]}, expected "
                             f"{expected_hw[0]} x {expected_hw[1]}", bgr.shape[:2])
    if resize is not None:
        bgr = resize.apply(bgr, cv2.INTER_LINEAR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_compressed(
    rgb: np.ndarray,
    header: Optional[Header] = None,
    fmt: Literal["jpeg", "png"] = "jpeg",
    jpeg_quality: int = 90,
) -> CompressedImage:
    """(H, W, 3) uint8 RGB -> CompressedImage (jpeg with ``jpeg_quality`` in [0, 100], or png)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConversionError(f"compression needs an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ConversionError(f"CompressedImage.format {fmt!r} cannot be written (use jpeg or png)")
    if not ok:
        raise ConversionError(f"OpenCV failed to encode a {rgb.shape} image as {fmt}")
    msg = CompressedImage()
    msg.header = _header(header)
    msg.format = f"rgb8; {fmt} compressed bgr8"
    msg.data = buf.tobytes()
    return msg


# ----------------------------------------------------------------------------------------------
# Camera calibration


@dataclass
class CameraIntrinsics:
    """Pinhole calibration of one camera as read from ``CameraInfo``.

    Fields:
        k: (3, 3) camera matrix K (pixels), for images of size ``image_hw``.
        image_hw: (height, width) in pixels.
        distortion_model: ``CameraInfo.distortion_model`` (x3kd itself assumes rectified images).
        distortion: (D,) distortion coefficients as sent.
    """

    k: np.ndarray
    image_hw: tuple[int, int]
    distortion_model: str = ""
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _check_k(k: np.ndarray, where: str) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.size != 9:
        raise ConversionError(f"{where} must have 9 entries, got {k.size}")
    k = k.reshape(3, 3)
    if not np.all(np.isfinite(k)):
        raise ConversionError(f"{where} has non-finite entries: {k.reshape(-1).tolist()}")
    if not np.any(k):
        raise ConversionError(f"{where} is all zeros (camera not calibrated)")
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise ConversionError(f"{where} needs fx > 0 and fy > 0, got fx={k[0, 0]}, fy={k[1, 1]}")
    if not np.allclose(k[2], (0.0, 0.0, 1.0)):
        raise ConversionError(f"{where} last row must be (0, 0, 1), got {k[2].tolist()}")
    return k


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraIntrinsics:
    """``sensor_msgs/CameraInfo`` -> K (3, 3) and (height, width); rejects a zero/NaN K."""
    k = _check_k(msg.k, "CameraInfo.k")
    if msg.height <= 0 or msg.width <= 0:
        raise ConversionError(f"CameraInfo.height/width must be > 0, got {msg.height} x {msg.width}")
    return CameraIntrinsics(
        k=k,
        image_hw=(int(msg.height), int(msg.width)),
        distortion_model=msg.distortion_model,
        distortion=np.array(msg.d, dtype=np.float64),
    )


def intrinsics_to_camera_info(k: np.ndarray, image_hw: tuple[int, int], header: Optional[Header] = None) -> CameraInfo:
    """K (3, 3) and (height, width) -> CameraInfo of a rectified pinhole camera.

    ``p = [K | 0]``, ``r = I``, ``plumb_bob`` with zero distortion.
    """
    k = _check_k(k, "K")
    height, width = (int(v) for v in image_hw)
    if height <= 0 or width <= 0:
        raise ConversionError(f"image_hw must be > 0, got {image_hw}")
    msg = CameraInfo()
    msg.header = _header(header)
    msg.height, msg.width = height, width
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = k.reshape(9)
    msg.r = np.eye(3).reshape(9)
    msg.p = np.concatenate([k, np.zeros((3, 1))], axis=1).reshape(12)
    return msg


# ----------------------------------------------------------------------------------------------
# Point clouds

_POINTFIELD_DTYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype("i1"),
    PointField.UINT8: np.dtype("u1"),
    PointField.INT16: np.dtype("<i2"),
    PointField.UINT16: np.dtype("<u2"),
    PointField.INT32: np.dtype("<i4"),
    PointField.UINT32: np.dtype("<u4"),
    PointField.FLOAT32: np.dtype("<f4"),
    PointField.FLOAT64: np.dtype("<f8"),
}


def _cloud_dtype(msg: PointCloud2) -> np.dtype:
    names, formats, offsets = [], [], []
    for i, f in enumerate(msg.fields):
        where = f"PointCloud2.fields[{i}] {f.name!r}"
        if f.datatype not in _POINTFIELD_DTYPES:
            raise ConversionError(f"{where} has unknown datatype {f.datatype}")
        if f.name in names:
            raise ConversionError(f"{where} repeats a field name")
        base = _POINTFIELD_DTYPES[f.datatype]
        count = max(int(f.count), 1)
        if f.offset + base.itemsize * count > msg.point_step:
            raise ConversionError(
                f"{where} (offset {f.offset}, {count} x {base.itemsize} bytes) runs past "
                f"PointCloud2.point_step {msg.point_step}"
            )
        names.append(f.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})


def cloud_to_structured(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured array (height * width,) with one named field per PointField.

    Zero-copy when ``row_step == width * point_step``; an organized cloud (height > 1) is
    flattened row by row.

    Raises:
        ConversionError: big-endian data, a field past ``point_step``, unknown datatypes, or
            ``data`` whose length is not ``row_step * height``.
    """
    if msg.is_bigendian:
        raise ConversionError("PointCloud2.is_bigendian is true; only little-endian clouds are supported")
    height, width = int(msg.height), int(msg.width)
    if height * width > 0 and msg.point_step == 0:
        raise ConversionError("PointCloud2.point_step is 0 for a non-empty cloud")
    dtype = _cloud_dtype(msg) if msg.point_step > 0 else np.dtype([])
    row_bytes = width * int(msg.point_step)
    if msg.row_step < row_bytes:
        raise ConversionError(
            f"PointCloud2.row_step {msg.row_step} is shorter than width * point_step = {row_bytes}"
        )
    if len(msg.data) != msg.row_step * height:
        raise ConversionError(
            f"PointCloud2.data has {len(msg.data)} bytes, expected row_step * height = "
            f"{msg.row_step} * {height} = {msg.row_step * height}"
        )
    if height * width == 0:
        return np.zeros(0, dtype=dtype)
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if msg.row_step != row_bytes:
        # Padded rows: gather the points into one contiguous block first (one copy).
        raw = np.ascontiguousarray(raw.reshape(height, msg.row_step)[:, :row_bytes]).reshape(-1)
    return raw.view(dtype)


def structured_to_cloud(points: np.ndarray, header: Optional[Header] = None) -> PointCloud2:
    """Structured array (P,) -> unorganized little-endian PointCloud2 (height 1).

    Field offsets and the item size (``point_step``, padding included) are taken from the
    array's dtype, so a padded layout is written as is.
    """
    points = np.asarray(points)
    if points.dtype.names is None or points.ndim != 1:
        raise ConversionError(f"expected a 1-D structured array, got {points.dtype} {points.shape}")
    dtype_to_datatype = {dt.newbyteorder("<"): code for code, dt in _POINTFIELD_DTYPES.items()}
    fields = []
    for name in points.dtype.names:
        field_dtype, offset = points.dtype.fields[name][:2]
        base, shape = field_dtype.base, field_dtype.shape
        if base.byteorder == ">":
            raise ConversionError(f"field {name!r} is big-endian; write little-endian data")
        code = dtype_to_datatype.get(base.newbyteorder("<"))
        if code is None:
            raise ConversionError(f"field {name!r} has dtype {base}, which PointField cannot express")
        fields.append(PointField(name=name, offset=int(offset), datatype=code, count=int(np.prod(shape, dtype=int))))
    msg = PointCloud2()
    msg.header = _header(header)
    msg.height, msg.width = 1, int(points.shape[0])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(points.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = True
    msg.data = np.ascontiguousarray(points).tobytes()
    return msg


@dataclass
class PointArray:
    """Points read from a PointCloud2.

    Fields:
        points: (P, C) float32, one column per name in ``fields`` (x, y, z in m).
        fields: the column names.
        num_nan: points whose x, y or z was not finite (removed from ``points`` when dropped).
    """

    points: np.ndarray
    fields: tuple[str, ...]
    num_nan: int

    def column(self, name: str) -> np.ndarray:
        return self.points[:, self.fields.index(name)]


#: Required and optional fields of a LiDAR cloud, in column order.
LIDAR_FIELDS: tuple[str, ...] = ("x", "y", "z", "intensity")
LIDAR_OPTIONAL_FIELDS: tuple[str, ...] = ("ring", "time")
#: Required fields of a radar cloud (rcs in dBsm, velocities ego-motion compensated, m/s).
RADAR_FIELDS: tuple[str, ...] = ("x", "y", "z", "rcs", "vx_comp", "vy_comp")
RADAR_OPTIONAL_FIELDS: tuple[str, ...] = ("time",)

# Datatypes written for each known column (ring is an integer laser index in every driver).
_WRITE_DTYPES = {"ring": np.dtype("<u2")}


def _cloud_columns(
    msg: PointCloud2, required: Sequence[str], optional: Sequence[str], drop_nan: bool
) -> PointArray:
    n_points = int(msg.height) * int(msg.width)
    declared = [f.name for f in msg.fields]
    if n_points == 0 and len(msg.data) == 0:
        names = tuple(required) + tuple(n for n in optional if n in declared)
        return PointArray(np.zeros((0, len(names)), np.float32), names, 0)
    missing = [n for n in required if n not in declared]
    if missing:
        raise ConversionError(
            f"PointCloud2.fields lacks {missing} (has: {declared}; needs {list(required)})"
        )
    structured = cloud_to_structured(msg)
    names = tuple(required) + tuple(n for n in optional if n in declared)
    for name in names:
        if structured.dtype.fields[name][0].shape != ():
            raise ConversionError(f"PointCloud2.fields[{declared.index(name)}] {name!r} must have count 1")
    points = np.empty((len(structured), len(names)), dtype=np.float32)
    for col, name in enumerate(names):
        points[:, col] = structured[name]
    finite = np.isfinite(points[:, :3]).all(axis=1)
    num_nan = int(len(finite) - np.count_nonzero(finite))
    if drop_nan and num_nan:
        points = points[finite]
    return PointArray(points, names, num_nan)


def cloud_to_lidar_points(msg: PointCloud2, drop_nan: bool = True) -> PointArray:
    """LiDAR PointCloud2 -> (P, 4..6) float32 x, y, z (m), intensity [, ring] [, time (s)].

    Points with a non-finite x/y/z are counted in ``num_nan`` and removed unless ``drop_nan`` is
    False. Field datatypes other than float32 are cast (e.g. uint16 ring, uint8 intensity).
    """
    return _cloud_columns(msg, LIDAR_FIELDS, LIDAR_OPTIONAL_FIELDS, drop_nan)


def cloud_to_radar_points(msg: PointCloud2, drop_nan: bool = True) -> PointArray:
    """Radar PointCloud2 -> (Q, 6..7) float32 x, y, z (m), rcs (dBsm), vx_comp, vy_comp (m/s) [, time]."""
    return _cloud_columns(msg, RADAR_FIELDS, RADAR_OPTIONAL_FIELDS, drop_nan)


def _columns_to_cloud(
    points: np.ndarray, fields: Sequence[str], allowed: Sequence[str], header: Optional[Header]
) -> PointCloud2:
    points = np.asarray(points)
    fields = tuple(fields)
    if points.ndim != 2 or points.shape[1] != len(fields):
        raise ConversionError(f"points must be (P, {len(fields)}) for fields {fields}, got shape {points.shape}")
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise ConversionError(f"fields {unknown} are not among {list(allowed)}")
    dtype = np.dtype([(name, _WRITE_DTYPES.get(name, np.dtype("<f4"))) for name in fields])
    structured = np.empty(points.shape[0], dtype=dtype)
    for col, name in enumerate(fields):
        column = points[:, col]
        structured[name] = np.rint(column) if dtype[name].kind == "u" else column
    return structured_to_cloud(structured, header)


def lidar_points_to_cloud(
    points: np.ndarray, header: Optional[Header] = None, fields: Sequence[str] = LIDAR_FIELDS
) -> PointCloud2:
    """(P, C) LiDAR points -> PointCloud2 with float32 columns named by ``fields`` (ring: uint16)."""
    return _columns_to_cloud(points, fields, LIDAR_FIELDS + LIDAR_OPTIONAL_FIELDS, header)


def radar_points_to_cloud(
    points: np.ndarray, header: Optional[Header] = None, fields: Sequence[str] = RADAR_FIELDS
) -> PointCloud2:
    """(Q, C) radar points -> PointCloud2 with float32 columns named by ``fields``."""
    return _columns_to_cloud(points, fields, RADAR_FIELDS + RADAR_OPTIONAL_FIELDS, header)


# ----------------------------------------------------------------------------------------------
# Detections

# Boxes3D is yaw-only; a box tilted by more than this (rad) is almost surely in the wrong frame
# (e.g. a camera frame, where "yaw" is a rotation about y).
_MAX_TILT_RAD = 1e-3


def _pose(center: np.ndarray, yaw: float) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in center)
    w, _, _, z = geometry.yaw_to_quaternion(float(yaw))
    pose.orientation.w, pose.orientation.z = float(w), float(z)
    pose.orientation.x = pose.orientation.y = 0.0
    return pose


def boxes_to_detections(boxes: Boxes3D, header: Header):
    """Boxes3D -> ``vision_msgs/Detection3DArray`` (one Detection3D per box, header on each).

    Velocity is not part of the message and is not sent.
    """
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray()
    out.header = header
    detections = []
    for i in range(len(boxes)):
        det = Detection3D()
        det.header = header
        det.id = boxes.token[i]
        pose = _pose(boxes.center[i], boxes.yaw[i])
        det.bbox.center = pose
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = (float(v) for v in boxes.size_lwh[i])
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = DETECTION_CLASSES[int(boxes.label[i])]
        hyp.hypothesis.score = float(boxes.score[i])
        hyp.pose.pose = pose
        det.results = [hyp]
        detections.append(det)
    out.detections = detections
    return out


def detections_to_boxes(msg) -> Boxes3D:
    """``vision_msgs/Detection3DArray`` -> Boxes3D in the message's frame.

    Uses ``results[0]`` of each detection. Velocity comes back as nan (not in the message); yaw
    in (-pi, pi]; ``Detection3D.id`` becomes ``Boxes3D.token``.

    Raises:
        ConversionError: a detection without results, a class_id outside DETECTION_CLASSES, a
            zero / non-finite orientation, a rotation that is not about z, or a bad size/position.
    """
    n = len(msg.detections)
    center = np.zeros((n, 3))
    size = np.zeros((n, 3))
    yaw = np.zeros(n)
    label = np.zeros(n, dtype=np.int64)
    score = np.zeros(n)
    tokens = []
    for i, det in enumerate(msg.detections):
        where = f"Detection3DArray.detections[{i}]"
        if len(det.results) == 0:
            raise ConversionError(f"{where}.results is empty (no class / score)")
        class_id = det.results[0].hypothesis.class_id
        if class_id not in DETECTION_CLASSES:
            raise ConversionError(
                f"{where}.results[0].hypothesis.class_id {class_id!r} is not a detection class "
                f"({', '.join(DETECTION_CLASSES)})"
            )
        p, q, s = det.bbox.center.position, det.bbox.center.orientation, det.bbox.size
        center[i] = (p.x, p.y, p.z)
        if not np.all(np.isfinite(center[i])):
            raise ConversionError(f"{where}.bbox.center.position is not finite: {center[i].tolist()}")
        q_wxyz = np.array([q.w, q.x, q.y, q.z])
        norm = float(np.linalg.norm(q_wxyz))
        if not (np.isfinite(norm) and norm > 1e-9):
            raise ConversionError(f"{where}.bbox.center.orientation is zero or not finite: {q_wxyz.tolist()}")
        rotation = geometry.quaternion_to_matrix(q_wxyz)
        tilt = float(np.arccos(np.clip(rotation[2, 2], -1.0, 1.0)))
        if tilt > _MAX_TILT_RAD:
            raise ConversionError(
                f"{where}.bbox.center.orientation tilts the box z axis by {tilt:.4f} rad; boxes must "
                f"rotate about z only (is the detection in a camera frame?)"
            )
        yaw[i] = float(np.arctan2(rotation[1, 0], rotation[0, 0]))
        if yaw[i] <= -np.pi:
            # atan2 returns -pi for a yaw of -pi (cos(-pi/2) rounds to +6e-17); keep (-pi, pi].
            yaw[i] += 2.0 * np.pi
        size[i] = (s.x, s.y, s.z)
        if not (np.all(np.isfinite(size[i])) and np.all(size[i] >= 0)):
            raise ConversionError(f"{where}.bbox.size must be finite and >= 0, got {size[i].tolist()}")
        label[i] = DETECTION_CLASSES.index(class_id)
        score[i] = det.results[0].hypothesis.score
        tokens.append(det.id)
    return Boxes3D(
        center=center,
        size_lwh=size,
        yaw=yaw,
        velocity=np.full((n, 2), np.nan),
        label=label,
        score=score,
        token=tokens,
    )


# ----------------------------------------------------------------------------------------------
# RViz markers

#: One colour per detection class (RGB in [0, 1]), index-aligned with DETECTION_CLASSES.
CLASS_COLORS_RGB: tuple[tuple[float, float, float], ...] = (
    (1.00, 0.62, 0.00),  # car: orange
    (0.00, 0.55, 1.00),  # truck: blue
    (0.55, 0.35, 0.15),  # construction_vehicle: brown
    (0.85, 0.10, 0.10),  # bus: red
    (0.50, 0.00, 0.75),  # trailer: purple
    (0.60, 0.60, 0.60),  # barrier: grey
    (1.00, 0.00, 0.80),  # motorcycle: magenta
    (0.00, 0.85, 0.85),  # bicycle: cyan
    (0.10, 0.90, 0.10),  # pedestrian: green
    (1.00, 0.95, 0.00),  # traffic_cone: yellow
)

# Corner index pairs of the 12 box edges (corner order of geometry.box_corners).
_BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
_EDGE_CORNERS = np.array(_BOX_EDGES).reshape(-1)  # (24,) corner index of each LINE_LIST point


@dataclass(frozen=True)
class MarkerStyle:
    """How :func:`boxes_to_markers` draws boxes.

    Fields:
        kind: "lines" (12 edges plus a heading tick from the centre to the front face, LINE_LIST)
            or "cube" (a solid CUBE).
        lifetime_s: how long RViz keeps a marker without an update (0 = forever).
        alpha: opacity in [0, 1].
        line_width_m: LINE_LIST line width (m).
        show_text: add a TEXT_VIEW_FACING label "<class> <score>" above each box.
        text_height_m: label letter height (m).
        namespace: marker namespace prefix ("<ns>/boxes", "<ns>/labels").
    """

    kind: Literal["lines", "cube"] = "lines"
    lifetime_s: float = 0.5
    alpha: float = 0.9
    line_width_m: float = 0.08
    show_text: bool = True
    text_height_m: float = 0.8
    namespace: str = "x3kd"

    def __post_init__(self) -> None:
        if self.kind not in ("lines", "cube"):
            raise ValueError(f"kind must be 'lines' or 'cube', got {self.kind!r}")
        if self.lifetime_s < 0:
            raise ValueError(f"lifetime_s must be >= 0, got {self.lifetime_s}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def _duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(sec=whole, nanosec=int(round((seconds - whole) * 1e9)))


def boxes_to_markers(boxes: Boxes3D, header: Header, style: MarkerStyle = MarkerStyle()) -> MarkerArray:
    """Boxes3D -> MarkerArray: a DELETEALL first (clears the last frame's boxes), then per box one
    CUBE or LINE_LIST (id = box index, ns ``<namespace>/boxes``) and optionally one text label
    (ns ``<namespace>/labels``), coloured by class (:data:`CLASS_COLORS_RGB`)."""
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    markers = [clear]
    lifetime = _duration(style.lifetime_s)
    corners = boxes.corners()  # (N, 8, 3)
    for i in range(len(boxes)):
        r, g, b = CLASS_COLORS_RGB[int(boxes.label[i])]
        color = ColorRGBA(r=r, g=g, b=b, a=float(style.alpha))
        box = Marker()
        box.header = header
        box.ns = f"{style.namespace}/boxes"
        box.id = i
        box.action = Marker.ADD
        box.lifetime = lifetime
        box.color = color
        if style.kind == "cube":
            box.type = Marker.CUBE
            box.pose = _pose(boxes.center[i], boxes.yaw[i])
            box.scale.x, box.scale.y, box.scale.z = (float(v) for v in boxes.size_lwh[i])
        else:
            box.type = Marker.LINE_LIST
            box.pose.orientation.w = 1.0
            box.scale.x = float(style.line_width_m)
            heading = np.array([np.cos(boxes.yaw[i]), np.sin(boxes.yaw[i]), 0.0])
            front = boxes.center[i] + 0.5 * boxes.size_lwh[i, 0] * heading
            segments = np.concatenate([corners[i, _EDGE_CORNERS], boxes.center[i : i + 1], front[None]])
            box.points = [Point(x=x, y=y, z=z) for x, y, z in segments.tolist()]
        markers.append(box)
        if style.show_text:
            text = Marker()
            text.header = header
            text.ns = f"{style.namespace}/labels"
            text.id = i
            text.type = Marker.TEXT_VIEW_FACING
            text.action = Marker.ADD
            text.lifetime = lifetime
            text.color = color
            text.scale.z = float(style.text_height_m)
            text.pose.position.x, text.pose.position.y = float(boxes.center[i, 0]), float(boxes.center[i, 1])
            text.pose.position.z = float(boxes.center[i, 2] + 0.5 * boxes.size_lwh[i, 2] + style.text_height_m)
            text.pose.orientation.w = 1.0
            text.text = f"{DETECTION_CLASSES[int(boxes.label[i])]} {boxes.score[i]:.2f}"
            markers.append(text)
    return MarkerArray(markers=markers)
