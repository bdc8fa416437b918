"""``logger=tensorboard``: TensorBoard event files in ``<results dir>/tensorboard/``.

Written with torch's ``SummaryWriter`` (it needs the ``tensorboard`` package, not
TensorFlow). Scalars are written as double-precision tensors (``new_style``), so what
TensorBoard reads back is exactly ``metrics.jsonl``'s value: a float32 ``simple_value``
would round ε to 7 digits and byte counts past 16 million. The config goes in as
hyperparameters (the HParams tab) and as YAML text (the Text tab). ``tensorboard
--logdir outputs`` (or a sweep's directory) shows every run below it.

A resumed run writes a new event file in the same directory with ``purge_step`` at its
first round, so TensorBoard hides what the interrupted run logged after its checkpoint;
a new run does the same from step 1 over anything left there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import yaml

from fedpriv.trackers.base import LOGGERS, LoggerSpec, TrackedRun, Tracker

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

#: The event files' directory, in the results directory.
TENSORBOARD_DIR = "tensorboard"
#: Metrics the HParams tab lists beside each run's hyperparameters.
HPARAMS_METRICS = ("accuracy", "loss", "epsilon")


@LOGGERS.register("tensorboard")
@dataclasses.dataclass(frozen=True)
class TensorBoardLogger(LoggerSpec):
    """TensorBoard event files in ``<results dir>/tensorboard/`` (``fedpriv[trackers]``)."""

    modules = ("tensorboard", "torch.utils.tensorboard")

    def open(self, run: TrackedRun) -> Tracker:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        writer = SummaryWriter(
            log_dir=str(run.directory / TENSORBOARD_DIR), purge_step=run.first_round
        )
        events = writer.file_writer  # made by the constructor; add_hparams writes so too
        assert events is not None
        for summary in hparams(run.params(), dict.fromkeys(HPARAMS_METRICS, 0.0)):
            events.add_summary(summary)
        config = yaml.safe_dump(dict(run.config), sort_keys=False)
        tags = "\n".join(f"- {key}: `{value}`" for key, value in run.tags.items())
        writer.add_text("config", f"{tags}\n\n```yaml\n{config}```", global_step=0)
        writer.flush()
        return TensorBoardTracker(writer)


class TensorBoardTracker(Tracker):
    """One ``SummaryWriter``, flushed every round (nothing waits in its queue)."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step, new_style=True, double_precision=True)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()
