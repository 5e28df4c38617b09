"""A warning when a loss term has not fallen: training that runs but does not learn.

LDSeg's first real-data trial logged ``train_noise`` at 1.0 from the first iteration to the
last (a denoiser that predicts zero noise scores exactly the noise variance) while its
decoded Dice looked healthy, and sampled masks were at chance. Nothing said so. This handler
compares the term's mean over its first ``window`` iterations with its mean over the last
``window`` once ``after_iterations`` have run, and warns once, naming the term and both values.
"""

from __future__ import annotations

import logging
from collections import deque

import torch
from ignite.engine import Engine, Events

logger = logging.getLogger("ldmonai")


class LossNotFallingWarning:
    """Warn once when ``output[term]`` has not fallen below its starting level.

    Args:
        term: the engine output key (``noise`` for LDSeg's noise MSE).
        after_iterations: when to compare (iterations of this run, resumed runs included).
        window: iterations averaged at the start and at the check.
        margin: the term must end below ``(1 - margin)`` times its start.

    After the check, ``engine.state.not_learning`` is ``{term: (start, now)}`` when it fired,
    so scripts and tests can read the verdict without parsing logs.
    """

    def __init__(self, term: str = "noise", after_iterations: int = 200, window: int = 20, margin: float = 0.05) -> None:
        if window < 1 or after_iterations < 2 * window:
            raise ValueError(f"need after_iterations >= 2 * window, got {after_iterations} and {window}")
        self.term = term
        self.after = after_iterations
        self.window = window
        self.margin = margin
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)
        self.seen = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list):
            output = output[0]
        value = output.get(self.term) if isinstance(output, dict) else None
        if value is None:
            return
        value = float(value.detach().mean()) if isinstance(value, torch.Tensor) else float(value)
        self.seen += 1
        if len(self.first) < self.window:
            self.first.append(value)
        self.recent.append(value)
        if self.seen != self.after:
            return
        start = sum(self.first) / len(self.first)
        now = sum(self.recent) / len(self.recent)
        if now >= (1.0 - self.margin) * start:
            engine.state.not_learning = {self.term: (start, now)}
            logger.warning(
                "train_%s has not fallen after %d iterations (%.3f at the start, %.3f now): the model is not "
                "learning this term; check the learning rate and the data before training longer",
                self.term, self.after, start, now)
