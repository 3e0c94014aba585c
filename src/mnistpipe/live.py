"""Live training curves: one row per epoch, appended to logs/train_live.csv as training goes.

The stage's DVC outputs (plots/train.csv and the rest) are written as one set at the end,
so that a failed run keeps the last good ones; rewriting them per epoch would break that.
The live file sits outside DVC's outputs and git (logs/ is ignored), starts empty with each
run of the stage, and is flushed after every row, so `tail -f` or
`dvc plots show logs/train_live.csv` shows progress while the final outputs stay
byte for byte what they are without it.

Inside `dvc exp run` (when `.dvc/tmp/exps/run` exists) each row also rewrites that
directory's DVCLIVE_STEP_COMPLETED as JSON `{"pid": ..., "step": ...}`, the signal on which
the VS Code DVC extension refreshes its plots, as dvclive does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LIVE_CSV = Path("logs/train_live.csv")
COLUMNS = ("seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
SIGNAL_NAME = "DVCLIVE_STEP_COMPLETED"


def signal_dir() -> Path:
    """`dvc exp run`'s run directory; DVC_ROOT (set by DVC for runs in a temporary copy)
    names the repository whose extension is watching, as dvclive reads it."""
    return Path(os.environ.get("DVC_ROOT", ".")) / ".dvc" / "tmp" / "exps" / "run"


class LiveLog:
    """Rows of `COLUMNS`, one per trained epoch of every seed, in the order they finish."""

    def __init__(self, path: Path = LIVE_CSV) -> None:
        self.path = Path(path)
        self.step = 0  # rows written so far; the signal's step is the row's index, from 0

    def start(self) -> LiveLog:
        """Begin the run's file: the header alone (an earlier run's rows go)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(",".join(COLUMNS) + "\n")
        return self

    def row(self, seed: int, epoch: int, values: tuple[float, ...], seconds: float) -> None:
        """Append one epoch's row (`values`: train loss, train accuracy, val loss, val accuracy)
        in one write, then signal the step."""
        fields = [str(seed), str(epoch), *(repr(float(v)) for v in values), f"{seconds:.3f}"]
        with self.path.open("a") as f:
            f.write(",".join(fields) + "\n")
        signal_step(self.step)
        self.step += 1

    def for_seed(self, seed: int):
        """An epoch hook for training (mnistpipe.train.EpochHook) that writes `seed`'s rows."""
        def hook(record, seconds: float) -> None:
            self.row(seed, record.epoch, (record.train_loss, record.train_acc, record.val_loss, record.val_acc),
                     seconds)
        return hook


def signal_step(step: int) -> None:
    """Tell the VS Code DVC extension a step completed; only inside `dvc exp run`."""
    run_dir = signal_dir()
    if run_dir.is_dir():
        (run_dir / SIGNAL_NAME).write_text(json.dumps({"pid": os.getpid(), "step": step}))
