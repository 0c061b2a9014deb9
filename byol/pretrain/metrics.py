"""Training metrics: metrics.jsonl (always) and TensorBoard scalars, written by rank 0."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from byol.base.atomic import atomic_write_text

log = logging.getLogger("byol")


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard scalars (when the package is installed); rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resumed_step: int = 0):
        self.enabled, self.path, self.tb = enabled, run_dir / "metrics.jsonl", None
        if enabled and self.path.exists():
            self._keep_up_to(resumed_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed; metrics go to metrics.jsonl only")

    def _keep_up_to(self, step: int) -> None:
        """A run killed after its last checkpoint logged steps that the resumed run does again (and
        maybe half a line): keep only rows up to the checkpoint's step, so every step appears once."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
