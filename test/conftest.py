"""Session-wide test set-up.

The ROS network rule is applied at import time: pytest imports this file before it collects any
test module, so no test (or library it imports) can start rclpy with discovery reaching beyond
localhost. The domain id is derived from pytest's pid, so parallel pytest runs on one machine
do not see each other's topics; rcl logs go to the git-ignored build/ folder.
"""

from __future__ import annotations

import os

# Before anything imports torch: OpenMP threads that spin while waiting make a 2-core machine
# several times slower as soon as another process (a node under test, a second pytest) is busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from x3kd_core.paths import REPO_ROOT
from x3kd_ros.graph.environment import apply_network_rule, pid_domain_id


# Explicit pid-derived domain (not an inherited ROS_DOMAIN_ID): two test sessions must never share one.
ROS_NETWORK = apply_network_rule(
    domain_id=pid_domain_id(), log_dir=str(REPO_ROOT / "build" / "test_ros_log")
)


@pytest.fixture(scope="session")
def ros_network() -> dict:
    """The ROS environment variables this session runs under (name -> value)."""
    return dict(ROS_NETWORK)


# FIXTURES-BELOW (lead adds dataset fixtures here, e.g. the session-scoped `tiny_dataroot`)


def _data_conftest():
    """test/x3kd_core/data/conftest.py as a module (conftests are not importable by name under
    importlib mode); it owns the one recipe for the tiny synthetic dataset."""
    import importlib.util

    path = REPO_ROOT / "test" / "x3kd_core" / "data" / "conftest.py"
    spec = importlib.util.spec_from_file_location("x3kd_test_data_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(dataroot, version) of the tiny synthetic dataset, shared by every test folder (generated
    once per session into the same folder the data tests use)."""
    return _data_conftest().build_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny_dataset")


@pytest.fixture(scope="session")
def tiny_teachers(tiny_dataset, tmp_path_factory) -> dict:
    """Checkpoints of a LiDAR and an instance-segmentation teacher on the tiny dataset (one
    training step each: enough to be real checkpoints of the right kind and grid), by teacher name."""
    from x3kd_core.experiment import load_experiment, train_experiment

    dataroot, _ = tiny_dataset
    out = tmp_path_factory.mktemp("tiny_teachers")
    paths = {}
    for name, extra in (("lidar", []), ("instance_seg", ["train.batch_size=1"])):
        exp = load_experiment(REPO_ROOT / "config" / "train" / f"{name}_tiny.yaml",
                              [f"data.dataroot={dataroot}", "train.max_steps=1", "train.epochs=null", *extra])
        paths[name] = train_experiment(exp, out / name, device="cpu").checkpoint
    return paths
