"""Pictures: a bird's-eye view plot and the surround cameras with projected boxes.

Both functions take plain x3kd structures and write a PNG; they never change their inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or robots
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from x3kd_core.structures import DETECTION_CLASSES, Boxes3D, CameraRig  # noqa: E402

#: One RGB colour (0-255) per detection class, used by every picture and the ROS markers.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0),
    "truck": (255, 99, 71),
    "construction_vehicle": (233, 150, 70),
    "bus": (255, 69, 0),
    "trailer": (255, 140, 0),
    "barrier": (112, 128, 144),
    "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60),
    "pedestrian": (0, 0, 230),
    "traffic_cone": (47, 79, 79),
}

# Box edges as pairs of corner indices (see geometry.box_corners for the corner order).
_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
# Front face: corners 0, 3 (bottom) and 4, 7 (top) sit at +l/2.
_FRONT = [(0, 7), (3, 4)]


def plot_bev(
    out_path: str | Path,
    lidar_points: Optional[np.ndarray],
    gt: Optional[Boxes3D] = None,
    pred: Optional[Boxes3D] = None,
    range_m: float = 55.0,
    title: str = "",
    radar_points: Optional[np.ndarray] = None,
) -> Path:
    """Top view of the ego frame (x up the page, y to the left, as a driver sees the map).

    Args:
        lidar_points: (P, >=3) ego-frame points (m), drawn grey; may be None.
        gt: ground-truth boxes, solid class-coloured outlines.
        pred: predicted boxes, dashed black outlines with the score.
        radar_points: (Q, >=6) x, y, z, rcs, vx, vy; drawn as red dots with velocity arrows.
    """
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    if lidar_points is not None and len(lidar_points):
        pts = lidar_points[np.abs(lidar_points[:, 0]) < range_m]
        ax.scatter(-pts[:, 1], pts[:, 0], s=0.3, c="0.55", linewidths=0)
    if radar_points is not None and len(radar_points):
        ax.scatter(-radar_points[:, 1], radar_points[:, 0], s=6, c="red", linewidths=0)
        ax.quiver(-radar_points[:, 1], radar_points[:, 0], -radar_points[:, 5], radar_points[:, 4],
                  color="red", angles="xy", scale_units="xy", scale=1.0, width=0.002)
    for boxes, style in ((gt, "-"), (pred, "--")):
        if boxes is None:
            continue
        corners = boxes.corners()[:, :4, :2]
        for i in range(len(boxes)):
            name = DETECTION_CLASSES[boxes.label[i]]
            color = np.array(CLASS_COLORS[name]) / 255.0 if style == "-" else "black"
            poly = np.vstack([corners[i], corners[i][:1]])
            ax.plot(-poly[:, 1], poly[:, 0], style, color=color, linewidth=1.2)
            front = corners[i][[0, 3]].mean(axis=0)
            ax.plot([-boxes.center[i, 1], -front[1]], [boxes.center[i, 0], front[0]], style, color=color, linewidth=1.0)
            if style == "--":
                ax.text(-boxes.center[i, 1], boxes.center[i, 0], f"{boxes.score[i]:.2f}", fontsize=6)
    ax.plot([0], [0], marker="^", color="green", markersize=10)
    ax.set_xlim(-range_m, range_m)
    ax.set_ylim(-range_m, range_m)
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m, right)")
    ax.set_ylabel("x (m, forward)")
    ax.set_title(title or "BEV: grey LiDAR, solid GT, dashed predictions")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
    return out_path


def draw_boxes_on_image(
    image_hwc: np.ndarray, rig: CameraRig, cam: int, boxes: Boxes3D, color=None, thickness: int = 1
) -> np.ndarray:
    """Project boxes into camera ``cam`` and draw their edges on a copy of ``image_hwc`` (H, W, 3) uint8 RGB.

    Edges are clipped at 0.1 m in front of the camera so boxes that cross the image plane still draw.
    """
    img = np.ascontiguousarray(image_hwc.copy())
    if len(boxes) == 0:
        return img
    from x3kd_core import geometry

    ego_to_cam = geometry.invert_transform(rig.cam_to_ego[cam])
    k = rig.intrinsics[cam]
    corners = boxes.corners()
    for i in range(len(boxes)):
        pts = geometry.transform_points(ego_to_cam, corners[i])
        if np.all(pts[:, 2] < 0.1):
            continue
        c = color or CLASS_COLORS[DETECTION_CLASSES[boxes.label[i]]]
        for a, b in _EDGES + _FRONT:
            pa, pb = pts[a].copy(), pts[b].copy()
            if pa[2] < 0.1 and pb[2] < 0.1:
                continue
            if pa[2] < 0.1 or pb[2] < 0.1:  # clip the segment at the near plane
                t = (0.1 - pa[2]) / (pb[2] - pa[2])
                clipped = pa + t * (pb - pa)
                if pa[2] < 0.1:
                    pa = clipped
                else:
                    pb = clipped
            uva = k @ pa
            uvb = k @ pb
            p1 = (int(round(uva[0] / uva[2])), int(round(uva[1] / uva[2])))
            p2 = (int(round(uvb[0] / uvb[2])), int(round(uvb[1] / uvb[2])))
            ok, p1, p2 = cv2.clipLine((0, 0, img.shape[1], img.shape[0]), p1, p2)
            if ok:
                cv2.line(img, p1, p2, tuple(int(v) for v in c), thickness, cv2.LINE_AA)
    return img


def plot_cameras(
    out_path: str | Path,
    images: np.ndarray,
    rig: CameraRig,
    gt: Optional[Boxes3D] = None,
    pred: Optional[Boxes3D] = None,
) -> Path:
    """Tile the surround cameras (2 rows x 3) with projected GT (class colours) and predictions (white).

    Args:
        images: (N_cam, 3, H, W) uint8 RGB, in ``rig.names`` order.
    """
    tiles = []
    for cam in range(len(rig)):
        img = np.transpose(images[cam], (1, 2, 0))
        if gt is not None:
            img = draw_boxes_on_image(img, rig, cam, gt)
        if pred is not None:
            img = draw_boxes_on_image(img, rig, cam, pred, color=(255, 255, 255))
        img = np.ascontiguousarray(img)
        cv2.putText(img, rig.names[cam], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(img)
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + 3], axis=1) for i in range(0, len(tiles), 3)]
    mosaic = np.concatenate(rows, axis=0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_path), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
    return out_path
