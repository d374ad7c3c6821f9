"""Data parallelism: the sharded sampler, and a real 2-process Gloo DDP run via torchrun.

The DDP test launches ``torchrun --nproc_per_node 2`` on this very file (see ``__main__`` at the
bottom) with rendezvous on 127.0.0.1 and a free port, and compares the result with the same
training in one process. The model has no BatchNorm (per-rank statistics would differ; see
``x3kd_core.train.distributed``).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from x3kd_core.paths import REPO_ROOT
from x3kd_core.train.distributed import DistContext, ShardedBatchSampler, all_reduce_mean, init_distributed
from x3kd_core.train.engine import TrainConfig, run_training, seed_everything

STEPS = 6


# ----------------------------------------------------------------------------------------------
# sampler


def test_shards_of_each_global_batch_union_to_the_single_process_batch():
    single = ShardedBatchSampler(22, global_batch=6, seed=3)
    shards = [ShardedBatchSampler(22, global_batch=6, rank=r, world_size=3, seed=3) for r in range(3)]
    for epoch in (0, 1):
        for s in [single, *shards]:
            s.set_epoch(epoch)
        one = list(single)
        per_rank = [list(s) for s in shards]
        assert len(one) == 3 == len(single)  # 22 // 6, tail of 4 dropped
        for b, batch in enumerate(one):
            assert [i for r in range(3) for i in per_rank[r][b]] == batch
            assert all(len(per_rank[r][b]) == 2 for r in range(3))
        flat = [i for batch in one for i in batch]
        assert len(set(flat)) == 18 and set(flat) <= set(range(22))
    single.set_epoch(0)
    epoch0 = list(single)
    single.set_epoch(1)
    assert list(single) != epoch0  # reshuffled per epoch
    # the order is a pure function of (seed, epoch)
    expected = torch.randperm(22, generator=torch.Generator().manual_seed(3 + 1)).tolist()
    assert [i for batch in list(single) for i in batch] == expected[:18]


def test_sampler_resumes_mid_epoch():
    s = ShardedBatchSampler(20, global_batch=4, rank=1, world_size=2, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=3)
    assert list(s) == full[3:] and len(s) == 2
    with pytest.raises(ValueError, match="start_batch 6"):
        s.set_epoch(2, start_batch=6)


def test_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not divisible by world size 4"):
        ShardedBatchSampler(100, global_batch=6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(5, global_batch=8)


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert ctx.is_main and not ctx.is_distributed
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(values, ctx), values)


# ----------------------------------------------------------------------------------------------
# the model trained in both settings


class SmallConvNet(nn.Module):
    """Conv + MLP regressor, no BatchNorm, no dropout: DDP must match one process exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        feats = torch.tanh(self.conv(batch["image"])).flatten(1)
        pred = self.fc(feats)
        return {"mse": F.mse_loss(pred, batch["target"]), "l1_weighted": 0.5 * F.l1_loss(pred, batch["target"])}


class Synthetic(Dataset):
    def __init__(self, n: int = 40) -> None:
        gen = torch.Generator().manual_seed(5)
        self.images = torch.randn(n, 2, 4, 4, generator=gen)
        self.targets = self.images.mean(dim=(2, 3)) @ torch.randn(2, 3, generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "target": self.targets[i]}


def ddp_config(out_dir: Path) -> TrainConfig:
    return TrainConfig(out_dir=str(out_dir), max_steps=STEPS, batch_size=8, lr=2e-2, warmup_steps=2,
                       grad_clip_norm=0.5, log_every=1, ckpt_every_steps=2, tensorboard=False, seed=11)


def build_model(seed: int = 0) -> SmallConvNet:
    seed_everything(seed)
    return SmallConvNet()


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _worker_main(out_root: Path) -> None:
    """Runs in each torchrun process: a full run, and a stopped + resumed run, in one process group."""
    torch.set_num_threads(1)
    init_distributed("cpu")  # join once; run_training then reuses the group and leaves it to us
    rank = int(os.environ["RANK"])
    model = build_model()
    run_training(model, Synthetic(), None, ddp_config(out_root / "full"), device="cpu")
    torch.save(flat_params(model), out_root / f"full_rank{rank}.pt")
    run_training(build_model(), Synthetic(), None, ddp_config(out_root / "resumed"), device="cpu", stop_at_step=3)
    resumed = build_model(seed=99)  # other init: the checkpoint must provide the weights
    run_training(resumed, Synthetic(), None, ddp_config(out_root / "resumed"), device="cpu")
    torch.save(flat_params(resumed), out_root / f"resumed_rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(path: Path) -> list[tuple[float, float, float]]:
    with open(path, newline="") as fh:
        return [(float(r["mse"]), float(r["l1_weighted"]), float(r["lr"])) for r in csv.DictReader(fh)]


def test_two_process_ddp_matches_one_process(tmp_path, monkeypatch):
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    env = dict(os.environ)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    env.update(
        MASTER_ADDR="127.0.0.1",
        GLOO_SOCKET_IFNAME="lo",  # Gloo's data connections on loopback only
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--max_restarts", "0",
           "--monitor_interval", "0.2", __file__, str(ddp_dir)]
    # Own session: on a timeout the whole tree (agent + workers) is killed by its group id.
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 120 s:\n{output.decode()[-3000:]}")
    assert proc.returncode == 0, output.decode()[-3000:]

    # the same training in this process (world size 1, same global batch)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = build_model()
    run_training(model, Synthetic(), None, ddp_config(tmp_path / "single"), device="cpu")
    single = flat_params(model)

    full = [torch.load(ddp_dir / f"full_rank{r}.pt") for r in range(2)]
    resumed = [torch.load(ddp_dir / f"resumed_rank{r}.pt") for r in range(2)]
    assert torch.equal(full[0], full[1])  # DDP keeps the replicas identical
    assert torch.allclose(full[0], single, rtol=0, atol=1e-6), (full[0] - single).abs().max()
    assert (full[0] - flat_params(build_model())).abs().max() > 1e-3  # it did train
    assert torch.equal(resumed[0], full[0]) and torch.equal(resumed[1], full[1])

    # rank 0 alone wrote logs/checkpoints; logged losses are the all-reduced (global-batch) means
    ddp_rows, single_rows = _losses(ddp_dir / "full" / "train.csv"), _losses(tmp_path / "single" / "train.csv")
    assert len(ddp_rows) == len(single_rows) == STEPS
    for d, s in zip(ddp_rows, single_rows):
        assert d == pytest.approx(s, rel=1e-5, abs=1e-7)
    state = torch.load(ddp_dir / "full" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == STEPS
    assert sorted(p.name for p in (ddp_dir / "full").iterdir()) == ["last.prev.pt", "last.pt", "train.csv"]


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
