"""Installs x3kd_core and x3kd_ros as one ament_python package (``x3kd_ros``).

Works both with colcon in a ROS 2 workspace and with plain ``pip install -e .`` in a venv
(tools/setup.sh). Launch files and configs land in ``share/x3kd_ros/`` either way, where
``ament_index_python.get_package_share_directory('x3kd_ros')`` finds them.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_NAME = "x3kd_ros"
HERE = Path(__file__).resolve().parent


def _tree(folder: str, pattern: str) -> list[tuple[str, list[str]]]:
    """data_files entries mirroring ``folder``'s sub-folders under share/<pkg>/<folder>."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob(pattern)):
        if path.is_file():
            rel = path.relative_to(HERE)
            entries.setdefault(str(Path("share", PACKAGE_NAME, rel.parent)), []).append(str(rel))
    return sorted(entries.items())


setup(
    name=PACKAGE_NAME,
    version="0.1.0",
    description="X3KD multi-camera 3D detection with cross-modal knowledge distillation, "
    "PyTorch core and ROS 2 nodes",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["x3kd_core", "x3kd_core.*", "x3kd_ros", "x3kd_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (f"share/{PACKAGE_NAME}", ["package.xml"]),
        *_tree("launch", "*.py"),
        *_tree("config", "*.yaml"),
        *_tree("config", "*.xml"),  # config/dds: the Fast DDS transport profile the launch file applies
    ],
    # Runtime dependencies are listed in tools/requirements.txt (pip) and package.xml (rosdep);
    # ROS packages are not pip-resolvable under their ROS names, so none are repeated here.
    install_requires=[],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "x3kd = x3kd_core.cli:main",
            "x3kd_detector = x3kd_ros.nodes.detector_node:main",
            "x3kd_lidar_teacher = x3kd_ros.nodes.teacher_nodes:lidar_main",
            "x3kd_radar_teacher = x3kd_ros.nodes.teacher_nodes:radar_main",
            "x3kd_comparison = x3kd_ros.nodes.comparison_node:main",
            "x3kd_run_graph = x3kd_ros.graph.runner:main",
        ],
        # The ROS-side `x3kd` sub-commands: x3kd_core's CLI finds them here, never by importing x3kd_ros.
        "x3kd.commands": ["bag = x3kd_ros.commands:register"],
    },
)
