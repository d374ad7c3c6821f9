"""Training loop: exact resume, logged values, LR schedule, config validation, error paths."""

from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from x3kd_core.config import ConfigError, from_dict
from x3kd_core.train import engine
from x3kd_core.checkpoint import CheckpointError, load_checkpoint
from x3kd_core.train.engine import TrainConfig, Trainer, batch_seed, lr_factor, move_to_device, seed_everything


class TinyNet(nn.Module):
    """MLP with dropout, so that the global torch RNG state matters for every step."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(16, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(x))

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        pred = self.fc2(self.drop(self.features(batch["x"])))
        return {
            "mse": F.mse_loss(pred, batch["y"]),
            "l1_weighted": 0.1 * (pred - batch["y"]).abs().mean(),
        }


class NoisyRegression(Dataset):
    """x -> x @ W; __getitem__ adds noise from the global torch RNG (main process, num_workers=0)."""

    def __init__(self, n: int = 18, noise: float = 0.05) -> None:
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = self.x @ torch.randn(4, 2, generator=gen)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i] + self.noise * torch.randn(4), "y": self.y[i]}


class Critic:
    """Stand-in for an X-AT discriminator step: own module + optimiser, checkpointed state."""

    name = "critic"

    def __init__(self, model: TinyNet) -> None:
        self.model = model
        torch.manual_seed(99)
        self.net = nn.Linear(16, 1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)

    def __call__(self, batch: dict, step: int) -> dict[str, float]:
        with torch.no_grad():
            feats = self.model.features(batch["x"])
        self.opt.zero_grad(set_to_none=True)
        loss = (self.net(feats) - 1.0).pow(2).mean()
        loss.backward()
        self.opt.step()
        return {"critic_loss": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])


def make_config(out_dir: Path, **overrides) -> TrainConfig:
    base = dict(out_dir=str(out_dir), max_steps=14, batch_size=4, lr=5e-2, warmup_steps=3, scheduler="cosine",
                grad_clip_norm=1.0, log_every=1, tensorboard=False, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def make_trainer(out_dir: Path, init_seed: int = 0, loss_fn=None, **overrides) -> tuple[Trainer, TinyNet, Critic]:
    seed_everything(init_seed)
    model = TinyNet()
    critic = Critic(model)
    trainer = Trainer(model, NoisyRegression(), None, make_config(out_dir, **overrides), loss_fn=loss_fn,
                      extra_steps=[critic])
    return trainer, model, critic


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def rows_without_timing(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in read_rows(path)]


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), f"{name} differs by {(pa - pb).abs().max().item():.3g}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """14 uninterrupted steps (18 samples, batch 4: 4 batches/epoch, so 3.5 epochs)."""
    out = tmp_path_factory.mktemp("reference")
    trainer, model, critic = make_trainer(out)
    result = trainer.fit()
    return result, model, critic, out


def test_reference_run_trains_and_logs(reference):
    result, model, _, out = reference
    assert (result.step, result.epoch, result.finished) == (14, 3, True)
    rows = read_rows(out / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 15))
    assert list(rows[0])[:7] == ["step", "epoch", "lr", "mse", "l1_weighted", "loss", "grad_norm"]
    assert "critic_loss" in rows[0] and "sec_per_step" in rows[0]
    # total = sum of the named terms, per row
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["mse"]) + float(r["l1_weighted"]), rel=1e-6)
    # the logged LR is the scheduled LR of that step
    cfg = make_config(out)
    for r in rows:
        k = int(r["step"]) - 1
        assert float(r["lr"]) == pytest.approx(cfg.lr * lr_factor(cfg, k, 14), rel=1e-12)
    assert [int(r["epoch"]) for r in rows] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 2
    # it learned: noise-free, dropout-free MSE on the whole set drops from 2.43 to ~0.5
    data = NoisyRegression()
    seed_everything(0)
    untrained = TinyNet()
    with torch.no_grad():
        before = F.mse_loss(untrained.fc2(untrained.features(data.x)), data.y).item()
        after = F.mse_loss(model.fc2(model.features(data.x)), data.y).item()
    assert before == pytest.approx(2.4346, abs=1e-3)
    assert after < 0.3 * before, (before, after)


def test_first_logged_loss_matches_hand_computation(reference, tmp_path):
    """Rebuild step 1 by hand (same seeds, same sampler order, same RNG use) and compare."""
    _, _, _, out = reference
    logged = read_rows(out / "train.csv")[0]
    seed_everything(0)
    model = TinyNet()
    data = NoisyRegression()
    order = torch.randperm(18, generator=torch.Generator().manual_seed(7 + 0)).tolist()[:4]
    seed_everything(batch_seed(7, rank=0, epoch=0, batch=0))  # data noise: seeded by position
    items = [data[i] for i in order]
    batch = {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items])}
    seed_everything(7)  # dropout: fit() seeds with config.seed + rank, untouched by data loading
    model.train()
    losses = model.training_losses(batch)
    assert float(logged["mse"]) == pytest.approx(losses["mse"].item(), rel=1e-6)
    assert float(logged["l1_weighted"]) == pytest.approx(losses["l1_weighted"].item(), rel=1e-6)


def test_stop_and_resume_is_bit_identical(reference, tmp_path):
    _, ref_model, ref_critic, ref_out = reference
    trainer, _, _ = make_trainer(tmp_path)
    first = trainer.fit(stop_at_step=7)  # mid-epoch: epoch 1, batch 3 of 4
    assert (first.step, first.finished, first.start_step) == (7, False, 0)
    assert first.total_wall_s == first.wall_s > 0
    saved_wall_s = load_checkpoint(tmp_path / "last.pt", "TinyNet")["train_wall_s"]
    assert 0 < saved_wall_s <= first.wall_s  # the time up to the checkpoint, written at step 7
    torch.rand(100)  # disturb every RNG the resumed run must restore
    torch.randn(3)
    trainer2, model2, critic2 = make_trainer(tmp_path, init_seed=555)  # different init: weights must load
    second = trainer2.fit()
    assert (second.step, second.finished, second.start_step) == (14, True, 7)
    # The run's wall time counts both processes: the checkpoint's earlier time plus this one's.
    assert second.total_wall_s == pytest.approx(saved_wall_s + second.wall_s, rel=1e-9)
    assert_same_params(model2, ref_model)
    assert_same_params(critic2.net, ref_critic.net)
    assert rows_without_timing(tmp_path / "train.csv") == rows_without_timing(ref_out / "train.csv")


def test_crash_after_checkpoint_then_resume_is_bit_identical(reference, tmp_path):
    _, ref_model, _, ref_out = reference
    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("simulated crash in step 9")
        return model.training_losses(batch)

    trainer, _, _ = make_trainer(tmp_path, loss_fn=crashing_loss, ckpt_every_steps=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt", "TinyNet")["step"] == 6
    assert load_checkpoint(tmp_path / "last.prev.pt", "TinyNet")["step"] == 3
    # The crashed run logged steps 7 and 8; the resumed run must drop and recompute them.
    assert [int(r["step"]) for r in read_rows(tmp_path / "train.csv")][-1] == 8
    trainer2, model2, _ = make_trainer(tmp_path, init_seed=1, ckpt_every_steps=3)
    trainer2.fit()
    assert_same_params(model2, ref_model)
    assert rows_without_timing(tmp_path / "train.csv") == rows_without_timing(ref_out / "train.csv")


def test_dataloader_workers_change_nothing_even_across_a_mid_epoch_resume(reference, tmp_path):
    """Augmentation noise is seeded per batch position, so 2 workers + resume == the reference."""
    _, ref_model, _, ref_out = reference
    trainer, _, _ = make_trainer(tmp_path, num_workers=2)
    trainer.fit(stop_at_step=6)  # epoch 1, batch 2 of 4
    trainer2, model2, _ = make_trainer(tmp_path, init_seed=1, num_workers=2)
    trainer2.fit()
    assert_same_params(model2, ref_model)
    assert rows_without_timing(tmp_path / "train.csv") == rows_without_timing(ref_out / "train.csv")


def test_resume_without_rng_restore_would_differ(reference, tmp_path, monkeypatch):
    """Sanity check of the test above: dropout/noise make the RNG state matter."""
    _, ref_model, _, _ = reference
    trainer, _, _ = make_trainer(tmp_path)
    trainer.fit(stop_at_step=7)
    monkeypatch.setattr(engine, "set_rng_state", lambda state, device: None)
    torch.manual_seed(12345)
    trainer2, model2, _ = make_trainer(tmp_path, init_seed=1)
    trainer2.fit()
    diff = max((a - b).abs().max().item() for a, b in zip(model2.parameters(), ref_model.parameters()))
    assert diff > 1e-4


def test_same_seed_same_result_other_seed_differs(tmp_path):
    finals = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        trainer, model, _ = make_trainer(tmp_path / name, max_steps=5, seed=seed)
        trainer.fit()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(finals[0], finals[1])
    assert (finals[0] - finals[2]).abs().max() > 1e-4


def test_finished_run_is_not_trained_again(reference):
    _, ref_model, _, out = reference
    trainer, model, _ = make_trainer(out, init_seed=3)
    result = trainer.fit()
    assert (result.step, result.finished) == (14, True)
    assert_same_params(model, ref_model)  # loaded, not retrained


def test_resume_with_other_batch_size_is_refused(tmp_path):
    trainer, _, _ = make_trainer(tmp_path)
    trainer.fit(stop_at_step=2)
    trainer2, _, _ = make_trainer(tmp_path, batch_size=2)
    with pytest.raises(CheckpointError, match="batch_size 4, resuming with 2"):
        trainer2.fit()


def test_deterministic_flag_is_restored_after_fit(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    trainer, _, _ = make_trainer(tmp_path, max_steps=1)
    trainer.fit()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_lr_schedules_golden_values():
    cos = TrainConfig(max_steps=10, lr=1.0, warmup_steps=4, scheduler="cosine", min_lr_ratio=0.1)
    got = [lr_factor(cos, k, 10) for k in range(10)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # after warmup: 0.1 + 0.9 * 0.5 * (1 + cos(pi * (k - 4) / 6))
    assert got[4] == pytest.approx(1.0)
    assert got[7] == pytest.approx(0.55)
    assert got[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    one = TrainConfig(max_steps=10, lr=1.0, warmup_steps=4, scheduler="onecycle")
    assert lr_factor(one, 0, 10) == pytest.approx(0.04)
    assert lr_factor(one, 2, 10) == pytest.approx(0.52)
    assert lr_factor(one, 4, 10) == pytest.approx(1.0)
    assert lr_factor(one, 9, 10) == pytest.approx(0.04 / 1e4)
    const = TrainConfig(max_steps=10, warmup_steps=2, scheduler="constant")
    assert [lr_factor(const, k, 10) for k in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_config_validation_and_length():
    cfg = from_dict(TrainConfig, {"epochs": 3, "max_steps": 100, "batch_size": 4, "betas": [0.8, 0.9]})
    assert cfg.betas == (0.8, 0.9)
    assert cfg.total_steps(batches_per_epoch=20) == 60
    assert cfg.total_steps(batches_per_epoch=50) == 100
    with pytest.raises(ConfigError, match="unknown key lr_rate"):
        from_dict(TrainConfig, {"epochs": 1, "lr_rate": 0.1})
    with pytest.raises(ConfigError, match="set epochs or max_steps"):
        from_dict(TrainConfig, {"batch_size": 4})
    with pytest.raises(ConfigError, match="scheduler"):
        from_dict(TrainConfig, {"epochs": 1, "scheduler": "step"})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        from_dict(TrainConfig, {"epochs": 1, "batch_size": 0})


def test_non_finite_loss_names_the_term(tmp_path):
    def bad_loss(model, batch):
        losses = dict(model.training_losses(batch))
        losses["depth"] = torch.tensor(float("nan"))
        return losses

    trainer, _, _ = make_trainer(tmp_path, loss_fn=bad_loss)
    with pytest.raises(FloatingPointError, match=r"step 1: terms \['depth'\]"):
        trainer.fit()


def test_model_without_protocol_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="training_losses"):
        Trainer(nn.Linear(2, 2), NoisyRegression(), None, make_config(tmp_path))


def test_validation_schedule_and_log(tmp_path):
    seen = []

    def val_fn(model, epochs_done):
        assert not model.training
        seen.append(epochs_done)
        return {"val_mse": 0.5 * epochs_done}

    seed_everything(0)
    model = TinyNet()
    cfg = make_config(tmp_path, max_steps=None, epochs=3, eval_every_epochs=2)
    Trainer(model, NoisyRegression(), None, cfg, val_fn=val_fn).fit()
    assert model.training
    assert seen == [2, 3]  # every 2nd epoch, and at the end
    rows = read_rows(tmp_path / "val.csv")
    assert [(r["step"], r["val_mse"]) for r in rows] == [("8", "1.0"), ("12", "1.5")]


def test_validation_every_n_steps_gives_a_learning_curve(tmp_path):
    seen = []

    def val_fn(model, epochs_done):
        seen.append(epochs_done)
        return {"val_mse": float(len(seen))}

    seed_everything(0)
    cfg = make_config(tmp_path, max_steps=10, epochs=None, eval_every_epochs=0, eval_every_steps=3)
    Trainer(TinyNet(), NoisyRegression(), None, cfg, val_fn=val_fn).fit()
    rows = read_rows(tmp_path / "val.csv")
    assert [r["step"] for r in rows] == ["3", "6", "9", "10"]  # every 3rd step, and at the end


def test_progress_line_names_step_loss_lr_rate_and_eta(tmp_path, caplog, monkeypatch):
    from x3kd_core.train import engine

    line = engine.progress_line(150, 600, {"loss": 3.21, "lr": 1e-3, "sec_per_step": 0.5}, batch_size=2)
    assert line == "step 150/600 (25%) loss 3.21 lr 0.001 4.00 samples/s ETA 3m45s"
    # Not a TTY (pytest captures stderr): progress goes to the log, at the end at least.
    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    trainer, _, _ = make_trainer(tmp_path, max_steps=4, log_every=2)
    with caplog.at_level(logging.INFO, logger="x3kd.train"):
        trainer.fit()
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [m.split(" (")[0] for m in progress] == ["step 2/4", "step 4/4"] and "ETA 0m00s" in progress[-1]


def test_csv_only_when_tensorboard_missing(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    trainer, _, _ = make_trainer(tmp_path, max_steps=2, tensorboard=True)
    with caplog.at_level(logging.WARNING, logger="x3kd.train"):
        trainer.fit()
    assert any("CSV only" in r.getMessage() for r in caplog.records)
    assert len(read_rows(tmp_path / "train.csv")) == 2
    assert not (tmp_path / "tb").exists()


def test_tensorboard_events_match_csv_and_resume_purges_them(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls = {"n": 0}

    def crash_in_step_6(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("crash")
        return model.training_losses(batch)

    trainer, _, _ = make_trainer(tmp_path, loss_fn=crash_in_step_6, max_steps=6, tensorboard=True, ckpt_every_steps=2)
    with pytest.raises(RuntimeError):
        trainer.fit()  # logged steps 1-5, checkpoint at 4: step 5 is redone
    trainer, _, _ = make_trainer(tmp_path, max_steps=6, tensorboard=True, ckpt_every_steps=2)
    trainer.fit()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("train/mse")
    rows = read_rows(tmp_path / "train.csv")
    assert [e.step for e in events] == [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events] == pytest.approx([float(r["mse"]) for r in rows], rel=1e-6)
    assert "train/critic_loss" in acc.Tags()["scalars"]


def test_failed_checkpoint_write_raises_and_keeps_previous(tmp_path, monkeypatch):
    trainer, _, _ = make_trainer(tmp_path, max_steps=4, ckpt_every_steps=2)

    def no_space(path, state, keep_previous=True):
        if state["step"] == 4:
            raise OSError("No space left on device")
        return real_save(path, state, keep_previous)

    real_save = engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", no_space)
    with pytest.raises(OSError, match="No space"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt", "TinyNet")["step"] == 2


def test_amp_on_cpu_is_reported_and_ignored(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="x3kd.train"):
        trainer, model, _ = make_trainer(tmp_path / "amp", max_steps=3, amp=True, amp_dtype="float16")
    assert not trainer.amp_enabled and not trainer.scaler.is_enabled()
    assert any("amp requested" in r.getMessage() for r in caplog.records)
    trainer.fit()
    plain, plain_model, _ = make_trainer(tmp_path / "plain", max_steps=3)
    plain.fit()
    assert_same_params(model, plain_model)


def test_move_to_device_walks_containers():
    class HasTo:
        def to(self, device):
            return ("moved", str(device))

    batch = {"a": torch.zeros(2), "b": [torch.ones(1), "name"], "c": (3, HasTo())}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["b"][1] == "name" and moved["c"][0] == 3
    assert moved["c"][1] == ("moved", "cpu")
    assert torch.equal(moved["a"], torch.zeros(2))
