"""Standard topic names and frame ids of x3kd: one source for bags, nodes and launch files.

Nothing here imports ROS; the names are plain strings so configs, tests and bag tools can use them
without an rclpy install.

Frames (REP-103 / REP-105)
    ``map`` (:data:`GLOBAL_FRAME`)
        The dataset's global frame. nuScenes' ``ego_pose`` is a localization result in the map
        frame (not drifting odometry), so the ego pose is published as ``map -> base_link``.
    ``base_link`` (:data:`BASE_FRAME`)
        The ego vehicle frame: x forward, y left, z up (nuScenes ego frame, the frame of
        :class:`x3kd_core.structures.Boxes3D`).
    ``<channel lower-case>`` (:func:`sensor_frame`)
        One frame per sensor, named after its nuScenes channel: ``cam_front``, ``lidar_top``,
        ``radar_front_left``, ... with ``base_link -> <sensor>`` from nuScenes'
        ``calibrated_sensor``. Camera frames are *optical* frames (x right, y down, z forward;
        nuScenes' camera convention, and what ROS expects for ``CameraInfo``), LiDAR and radar
        frames are x forward, y left, z up.

Topics
    ============================================  =====================================================
    ``/cameras/<cam>/image_raw``                  sensor_msgs/Image, rgb8, frame ``<cam>``
    ``/cameras/<cam>/image_raw/compressed``       sensor_msgs/CompressedImage (image_transport name)
    ``/cameras/<cam>/camera_info``                sensor_msgs/CameraInfo, same header as the image
    ``/lidar/top/points``                         sensor_msgs/PointCloud2 x y z intensity [ring], frame ``lidar_top``
    ``/radar/<radar>/points``                     sensor_msgs/PointCloud2 x y z rcs vx_comp vy_comp, frame ``<radar>``
    ``/tf``                                       tf2_msgs/TFMessage, ``map -> base_link``
    ``/tf_static``                                tf2_msgs/TFMessage, ``base_link -> <sensor>`` (transient local)
    ``/ground_truth/detections``                  vision_msgs/Detection3DArray in ``base_link``
    ``/ground_truth/sample_token``                std_msgs/String, nuScenes sample token of a keyframe
    ``/x3kd/detections``                          vision_msgs/Detection3DArray, the student's output
    ``/x3kd/detection_markers``                   visualization_msgs/MarkerArray for RViz
    ``/x3kd/teacher/<modality>/detections``       vision_msgs/Detection3DArray of a teacher
    ============================================  =====================================================

``<cam>`` and ``<radar>`` are the lower-case channel names (``cam_front``, ``radar_front``).
"""

from __future__ import annotations

__all__ = [
    "GLOBAL_FRAME",
    "BASE_FRAME",
    "LIDAR_CHANNEL",
    "sensor_frame",
    "camera_image_topic",
    "camera_info_topic",
    "LIDAR_TOPIC",
    "lidar_topic",
    "radar_topic",
    "TF_TOPIC",
    "TF_STATIC_TOPIC",
    "CLOCK_TOPIC",
    "GT_DETECTIONS_TOPIC",
    "GT_SAMPLE_TOKEN_TOPIC",
    "DETECTIONS_TOPIC",
    "DETECTION_MARKERS_TOPIC",
    "teacher_detections_topic",
]

#: Global frame of the ego poses (parent of ``base_link`` on ``/tf``).
GLOBAL_FRAME = "map"
#: Ego vehicle frame (x forward, y left, z up); frame of all detections.
BASE_FRAME = "base_link"
#: nuScenes channel of the LiDAR.
LIDAR_CHANNEL = "LIDAR_TOP"

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
#: ROS time source (rosgraph_msgs/Clock) that nodes with use_sim_time follow; the replayer's --clock.
CLOCK_TOPIC = "/clock"
GT_DETECTIONS_TOPIC = "/ground_truth/detections"
GT_SAMPLE_TOKEN_TOPIC = "/ground_truth/sample_token"
DETECTIONS_TOPIC = "/x3kd/detections"
DETECTION_MARKERS_TOPIC = "/x3kd/detection_markers"


def sensor_frame(channel: str) -> str:
    """Frame id of a sensor: its nuScenes channel in lower case (``CAM_FRONT`` -> ``cam_front``)."""
    return channel.lower()


def camera_image_topic(channel: str, compressed: bool = False) -> str:
    """``/cameras/<cam>/image_raw`` (or its image_transport ``/compressed`` sub-topic)."""
    base = f"/cameras/{sensor_frame(channel)}/image_raw"
    return f"{base}/compressed" if compressed else base


def camera_info_topic(channel: str) -> str:
    """``/cameras/<cam>/camera_info`` (image_transport's sibling of ``image_raw``)."""
    return f"/cameras/{sensor_frame(channel)}/camera_info"


def lidar_topic(channel: str = LIDAR_CHANNEL) -> str:
    """``/lidar/<name>/points`` with the channel's ``LIDAR_`` prefix dropped (``LIDAR_TOP`` -> ``/lidar/top/points``)."""
    name = sensor_frame(channel)
    return f"/lidar/{name.removeprefix('lidar_') or name}/points"


def radar_topic(channel: str) -> str:
    """``/radar/<radar>/points`` for a radar channel (``RADAR_FRONT`` -> ``/radar/radar_front/points``)."""
    return f"/radar/{sensor_frame(channel)}/points"


def teacher_detections_topic(modality: str) -> str:
    """``/x3kd/teacher/<modality>/detections`` (modality: ``lidar``, ``radar``, ...)."""
    return f"/x3kd/teacher/{modality}/detections"


#: The nuScenes LiDAR's point cloud topic.
LIDAR_TOPIC = lidar_topic(LIDAR_CHANNEL)


# ---- Added for the nodes (detector / teacher / comparison); additive only. ----------------------

#: Standard ROS 2 diagnostics topic (``diagnostic_msgs/DiagnosticArray``, as ``diagnostic_updater``
#: publishes it); every x3kd node reports there.
DIAGNOSTICS_TOPIC = "/diagnostics"


def comparison_topic(modality: str) -> str:
    """``/x3kd/comparison/<modality>``: ``std_msgs/String`` JSON, online agreement of the student with
    the ``modality`` teacher (format: :mod:`x3kd_ros.nodes.comparison_node`)."""
    return f"/x3kd/comparison/{modality}"


__all__ += ["DIAGNOSTICS_TOPIC", "comparison_topic"]
