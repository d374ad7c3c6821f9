"""Metric sinks for training: CSV files always, TensorBoard when it is importable.

Files under ``out_dir``:

* ``train.csv``: one row per logged step - ``step, epoch, lr, <every loss term by name>, loss,
  sec_per_step`` (plus any extra-step values, also by name).
* ``val.csv``: one row per validation - ``step, epoch, <every metric by name>``.

``epoch`` is the 0-based index of the epoch the step belongs to (a validation after the first
epoch has ``epoch`` 0).
* ``tb/``: TensorBoard events (tags ``train/<name>``, ``val/<name>``) if ``tensorboard`` imports.

Rows are flushed as they are written, so a crash loses nothing already logged. When a run resumes
from a checkpoint at step S, rows (and TensorBoard events) after S - written by the crashed run
and about to be recomputed - are dropped, so the logs read like one uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any, Mapping

_LOG = logging.getLogger("x3kd.train")


class CsvLog:
    """Append-only CSV whose header grows when a row brings new column names."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        """Open ``path`` for appending; with ``keep_until_step``, first drop rows with a larger step."""
        self.path = path
        self.columns: list[str] = []
        self._rows: list[dict[str, str]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or [])
                self._rows = list(reader)
            if keep_until_step is not None:
                self._rows = [r for r in self._rows if int(r["step"]) <= keep_until_step]
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self._rows)
        tmp.replace(self.path)

    def write(self, row: Mapping[str, Any]) -> None:
        text = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in text if k not in self.columns]
        self._rows.append(text)
        if new or not self.path.is_file():
            self.columns.extend(new)
            self._rewrite()  # rare: first row, or a loss term that appears later in training
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(text)

    def rows(self) -> list[dict[str, str]]:
        return [dict(r) for r in self._rows]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


class MetricLogger:
    """Rank-0 metrics writer; every method is a no-op when ``enabled`` is False (other ranks).

    Args:
        out_dir: run directory.
        enabled: False on ranks other than 0.
        resume_step: the step the run starts from: rows/events after it are dropped (0 for a
            fresh run: an old run's logs in ``out_dir`` are cleared); None keeps everything.
        tensorboard: try TensorBoard; if it is not importable a warning says so and only CSV is written.
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._tb = None
        if not enabled:
            return
        self.train_csv = CsvLog(self.out_dir / "train.csv", keep_until_step=resume_step)
        self.val_csv = CsvLog(self.out_dir / "val.csv", keep_until_step=resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                _LOG.warning("TensorBoard is not importable (%s); logging metrics to CSV only (%s)",
                             err, self.train_csv.path)
            else:
                # purge_step hides events the crashed run wrote after the checkpoint.
                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=purge)

    @property
    def tensorboard_active(self) -> bool:
        return self._tb is not None

    def log_train(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """One row of train.csv: ``step, epoch`` then ``values`` in the given order."""
        if not self.enabled:
            return
        self.train_csv.write({"step": step, "epoch": epoch, **values})
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"train/{name}", value, step)

    def log_val(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.val_csv.write({"step": step, "epoch": epoch, **values})
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"val/{name}", value, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
