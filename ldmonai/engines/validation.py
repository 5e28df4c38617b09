"""Validation every ``interval`` epochs *and* after the last epoch.

MONAI's ``ValidationHandler`` fires on ``EPOCH_COMPLETED(every=interval)`` only, so a run of fewer
epochs than ``val_interval`` (a 3-epoch try with the default 10) never validates: no
``val_mean_dice``, no validation images and, since the best-model saver writes on validation, no
``models/model.pt``. This handler keeps MONAI's schedule and adds the last epoch when the
schedule misses it, and says so once at the start.
"""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["FinalValidationHandler"]


class FinalValidationHandler(ValidationHandler):
    """``ValidationHandler`` (epoch level) that also validates after the trainer's last epoch.

    Args:
        interval: validate every ``interval`` epochs, as in MONAI's handler.
        validator: the evaluator to run.
        exec_at_start: also validate before training (MONAI's option).
    """

    def __init__(self, interval: int, validator=None, exec_at_start: bool = False) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._last_unscheduled), self)
        engine.add_event_handler(Events.STARTED, self._announce)

    def _last_unscheduled(self, engine: Engine, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0

    def _announce(self, engine: Engine) -> None:
        if engine.state.max_epochs % self.interval:
            logging.getLogger("ldmonai").warning(
                "validation every %d epochs, and once more after the last epoch (%d), which the interval misses",
                self.interval, engine.state.max_epochs)
