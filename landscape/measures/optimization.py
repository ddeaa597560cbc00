"""Optimization-based measure: Jiang et al.'s "#steps", the number of SGD steps until the training loss first
falls below a threshold (0.1 cross-entropy in the paper), from the run's own history. The history holds one
running train loss per epoch (the mean over that epoch's mini-batches), so the count is at epoch resolution:
steps = e × ⌈N / batch⌉ for the first epoch e whose running loss is below the threshold (full batch: e steps);
null when no epoch got there."""

from __future__ import annotations

import math
from typing import Any


def steps_to_loss(history: dict[str, Any], n_train: int, batch_size: int | str, threshold: float = 0.1
                  ) -> dict[str, Any]:
    per_epoch = 1 if batch_size == "full" else math.ceil(n_train / int(batch_size))
    for h in history.get("history", []):
        loss = h.get("train_loss")
        if loss is not None and math.isfinite(loss) and loss < threshold:
            return {"steps": h["epoch"] * per_epoch, "epoch": h["epoch"], "steps_per_epoch": per_epoch,
                    "threshold": threshold}
    return {"steps": None, "epoch": None, "steps_per_epoch": per_epoch, "threshold": threshold}
