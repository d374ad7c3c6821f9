"""Dataset fixture for the data and eval tests: the tiny synthetic nuScenes-format dataset.

Generated once per test session into pytest's session temp dir. ``build_tiny_dataset`` is
idempotent (it reuses a finished copy), so other test folders can call it with the same folder
and share the files (test/x3kd_core/eval does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from x3kd_core.paths import REPO_ROOT

TINY_CONFIG = REPO_ROOT / "config" / "data" / "synthetic_tiny.yaml"


def build_tiny_dataset(dataroot: Path) -> tuple[Path, str]:
    """Generate the tiny synthetic dataset into ``dataroot`` unless a finished copy is there.

    Returns:
        (dataroot, version) for :class:`x3kd_core.data.nuscenes.NuScenesSource` / ``NuScenes``.
    """
    from x3kd_core.config import load_yaml
    from x3kd_core.data.synthetic import SynthConfig, generate_dataset

    config = load_yaml(SynthConfig, TINY_CONFIG)
    done = dataroot / ".complete"
    if not done.is_file():
        dataroot.mkdir(parents=True, exist_ok=True)
        generate_dataset(config, dataroot)
        done.write_text(config.version)
    return dataroot, config.version


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> tuple[Path, str]:
    """(dataroot, version) of the tiny synthetic dataset (splits "synth_train" / "synth_val")."""
    return build_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny_dataset")
