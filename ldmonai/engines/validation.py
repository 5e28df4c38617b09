"""Validation every ``interval`` epochs *and* after the last epoch.

MONAI's ``ValidationHandler`` fires on ``EPOCH_COMPLETED(every=interval)`` only, so a run of fewer
epochs than ``val_interval`` (a 3-epoch try with the default 10) never validates: no
``val_mean_dice``, no validation images and, since the best-model saver writes on validation, no
``models/model.pt``. This handler keeps MONAI's schedule and adds the last epoch when the
schedule misses it, and says so once at the start. Each validation logs its cost as a share of
the training time so far, so an expensive validation (sampling N times over whole volumes) is
visible in the log rather than silently halving the iterations a time budget buys.
"""

from __future__ import annotations

import logging
import time

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
        self._started = None
        self._spent = 0.0

    def __call__(self, engine: Engine) -> None:
        if self._started is None:
            self._started = time.perf_counter()
        t0 = time.perf_counter()
        super().__call__(engine)
        took = time.perf_counter() - t0
        self._spent += took
        total = time.perf_counter() - self._started
        training = max(total - self._spent, 1e-9)
        logging.getLogger("ldmonai").info(
            "validation took %.1f s; all validations so far %.0f %% of training time (%.1f s of %.1f s)",
            took, 100.0 * self._spent / training, self._spent, training)

    def _last_unscheduled(self, engine: Engine, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0

    def _announce(self, engine: Engine) -> None:
        self._started = time.perf_counter()
        self._spent = 0.0
        if engine.state.max_epochs % self.interval:
            logging.getLogger("ldmonai").warning(
                "validation every %d epochs, and once more after the last epoch (%d), which the interval misses",
                self.interval, engine.state.max_epochs)
