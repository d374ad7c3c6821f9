"""Checkpoint files: weights_only round trip, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from x3kd_core import checkpoint as ckpt
from x3kd_core.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)


class Head(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls = nn.Conv2d(channels, num_classes, 1)


def make_state(model: nn.Module, step: int, config: dict | None = None) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "Head",
        "config": config if config is not None else {"head": {"num_classes": 10, "channels": 8}, "loss_weight": 1.0},
        "model": model.state_dict(),
        "step": step,
        "rng": [{"torch": torch.get_rng_state(), "python": torch.arange(5), "python_gauss": None}],
    }


def test_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = Head()
    path = save_checkpoint(tmp_path / "run" / "last.pt", make_state(model, step=5))
    state = load_checkpoint(path, "Head", {"head": {"num_classes": 10, "channels": 8}, "loss_weight": 1.0})
    assert state["step"] == 5
    assert torch.equal(state["model"]["cls.weight"], model.cls.weight.detach())
    assert torch.equal(state["rng"][0]["torch"], torch.get_rng_state())
    # a plain torch.load with weights_only works too (nothing pickled but plain data)
    assert torch.load(path, weights_only=True)["kind"] == "Head"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]  # no temp files left


def test_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Head()
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_state(model, step=1))
    good = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(100)  # half-written file, then the "crash"
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with torch.no_grad():
        model.cls.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, make_state(model, step=2))
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path, "Head")["step"] == 1
    assert not previous_path(path).exists()  # the old file was never moved aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_previous_checkpoint_is_kept_and_used_as_fallback(tmp_path):
    model = Head()
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_state(model, step=1))
    save_checkpoint(path, make_state(model, step=2))
    assert load_checkpoint(previous_path(path), "Head")["step"] == 1
    assert latest_checkpoint(path) == path
    # newest corrupt (e.g. disk-level damage): fall back to the previous one
    path.write_bytes(path.read_bytes()[:200])
    assert latest_checkpoint(path) == previous_path(path)
    # crash between the two renames: only the .prev file exists
    path.unlink()
    assert latest_checkpoint(path) == previous_path(path)
    previous_path(path).unlink()
    assert latest_checkpoint(path) is None


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt", "Head")


@pytest.mark.parametrize("cut", [0, 10, 500, -20])
def test_truncated_file(tmp_path, cut):
    path = save_checkpoint(tmp_path / "last.pt", make_state(Head(), step=1))
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, "Head")


def test_garbage_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage, "Head")
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)  # e.g. a bare torchvision-style file
    with pytest.raises(CheckpointError, match="not an x3kd checkpoint"):
        load_checkpoint(foreign, "Head")


def test_pickled_objects_are_refused_at_save_time(tmp_path):
    state = make_state(Head(), step=1)
    state["rng"][0]["numpy"] = np.zeros(3)
    with pytest.raises(TypeError, match=r"rng\[0\]\.numpy: numpy\.ndarray"):
        save_checkpoint(tmp_path / "last.pt", state)
    assert not any(tmp_path.iterdir())


def test_pickled_objects_are_refused_at_load_time(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "Head", "model": {}, "x": np.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path, "Head")


def test_wrong_kind(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", make_state(Head(), step=1))
    with pytest.raises(CheckpointError, match="holds a 'Head' model, expected 'LidarTeacher'"):
        load_checkpoint(path, "LidarTeacher")


def test_shape_mismatch_names_parameter_shapes_and_config_key(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", make_state(Head(num_classes=10), step=1))
    expected = {"head": {"num_classes": 3, "channels": 8}, "loss_weight": 1.0}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "Head", expected, model=Head(num_classes=3))
    msg = str(err.value)
    assert "parameter 'cls.weight' has shape (10, 8, 1, 1) in the checkpoint but (3, 8, 1, 1) in the model" in msg
    assert "head.num_classes: checkpoint 10 vs expected 3" in msg


def test_config_mismatch_without_model_is_an_error(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", make_state(Head(), step=1))
    with pytest.raises(CheckpointError, match="config mismatch at head.channels: checkpoint 8 vs expected 16"):
        load_checkpoint(path, "Head", {"head": {"num_classes": 10, "channels": 16}, "loss_weight": 1.0})


def test_shape_neutral_config_change_is_allowed_with_model(tmp_path, caplog):
    path = save_checkpoint(tmp_path / "last.pt", make_state(Head(), step=1))
    changed = {"head": {"num_classes": 10, "channels": 8}, "loss_weight": 2.0}
    state = load_checkpoint(path, "Head", changed, model=Head())
    assert state["step"] == 1
    assert "loss_weight: checkpoint 1.0 vs expected 2.0" in caplog.text


def test_missing_parameter_is_named(tmp_path):
    state = make_state(Head(), step=1)
    del state["model"]["conv.bias"]
    path = save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: \['conv.bias'\]"):
        load_checkpoint(path, "Head", model=Head())
