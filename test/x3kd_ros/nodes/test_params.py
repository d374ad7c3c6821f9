"""Node parameter helpers: device strings."""

from __future__ import annotations

import pytest
import torch

from x3kd_ros.nodes.params import ParameterError, resolve_device


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ParameterError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda:0")
    else:
        with pytest.raises(ParameterError, match="CUDA is not available"):
            resolve_device("cuda")
